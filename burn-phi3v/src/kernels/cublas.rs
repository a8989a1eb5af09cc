//! [`Kernels::blas_matmul`](super::Kernels::blas_matmul) on the CUDA backend: the product by
//! cuBLAS (`cublasGemmEx`, f32 accumulation), loaded at run time through cudarc.
//!
//! CubeCL runs its kernels on its own (non-blocking) streams from a device thread and does not
//! expose them. By default ([`BlasOrdering::Host`]) the product is ordered by the host: the
//! inputs' pointers are taken, the calling thread's CubeCL stream is synchronised, cuBLAS runs
//! on a stream of its own in the same (primary) context, and that stream is synchronised before
//! the output is handed back. Each product thus drains the device queue once: worth it for the
//! large products (prefill, the vision tower), not for a decode step's.
//!
//! With the workspace's cubecl-cuda patch a resource names its stream, and
//! [`BlasOrdering::Stream`] enqueues cuBLAS on that stream instead, with one cuBLAS handle per
//! stream: taking the resources is a round trip to CubeCL's device thread, so every kernel
//! queued before has been launched on the stream, and every kernel queued after is launched
//! after the product. The three tensors must live on the one stream (else: host ordering), so
//! that a later reuse of their memory is ordered after the product too.
//!
//! [`BlasOrdering::Queued`] (opt-in, with the `queued-blas` feature, which needs the
//! workspace's cubecl-runtime patch) skips those round trips: the resource look-ups and the
//! cuBLAS call are queued for CubeCL's device thread like a kernel launch
//! (`ComputeClient::submit_with_server`), so the calling thread goes on queueing kernels. A
//! product is queued only where a product of the same shape, dtype and layouts, with tensors
//! created on the same CubeCL streams, has already run on one CUDA stream through the round trip
//! (the device thread cannot fall back to Burn's matmul if cuBLAS refused).

use std::any::Any;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use burn::tensor::DType;
use burn_cubecl::{CubeRuntime, kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor};
use cubecl::cuda::CudaRuntime;
use cudarc::cublas::{
    CudaBlas,
    result::{gemm_ex, gemm_strided_batched_ex},
    sys,
};
use cudarc::driver::{CudaContext, CudaStream};

use super::BlasOrdering;

/// `lhs · rhs` by cuBLAS when `R` is CUDA's runtime; `None` on other runtimes, and where cuBLAS
/// refuses (the reason recorded for [`super::blas_matmul_refusals`]).
pub(crate) fn matmul<R: CubeRuntime>(lhs: CubeTensor<R>, rhs: CubeTensor<R>) -> Option<CubeTensor<R>> {
    let lhs = (Box::new(lhs) as Box<dyn Any>).downcast::<CubeTensor<CudaRuntime>>().ok()?;
    let rhs = (Box::new(rhs) as Box<dyn Any>).downcast::<CubeTensor<CudaRuntime>>().ok()?;
    match cuda_matmul(*lhs, *rhs) {
        Ok((out, ordering)) => {
            super::count_blas_matmul(ordering);
            (Box::new(out) as Box<dyn Any>).downcast::<CubeTensor<R>>().ok().map(|out| *out)
        }
        Err(reason) => {
            super::refuse_blas_matmul(reason);
            None
        }
    }
}

/// One device's cuBLAS handle and the stream it runs on.
struct Blas {
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
}

/// The handles by device ordinal (`Err`: why cuBLAS cannot run there, kept so that a missing
/// library is looked for once).
type Handles = Mutex<HashMap<usize, Result<Arc<Mutex<Blas>>, String>>>;

fn handle(ordinal: usize) -> Result<Arc<Mutex<Blas>>, String> {
    static HANDLES: OnceLock<Handles> = OnceLock::new();
    let mut handles = HANDLES.get_or_init(Default::default).lock().map_err(|_| "cuBLAS handles poisoned".to_string())?;
    handles
        .entry(ordinal)
        .or_insert_with(|| {
            // cudarc panics when libcublas cannot be loaded: a typed refusal here.
            crate::backends::cuda::quietly(|| {
                load_from_toolkit();
                let context = CudaContext::new(ordinal).map_err(|e| format!("CUDA context {ordinal}: {e}"))?;
                let stream = context.new_stream().map_err(|e| format!("CUDA stream: {e}"))?;
                let blas = CudaBlas::new(stream.clone()).map_err(|e| format!("cuBLAS handle: {e}"))?;
                Ok(Arc::new(Mutex::new(Blas { context, stream, blas })))
            })
            .unwrap_or_else(|| Err("libcublas could not be loaded (is the CUDA toolkit's lib directory on LD_LIBRARY_PATH?)".into()))
        })
        .clone()
}

/// A cuBLAS handle bound to one of CubeCL's streams (never destroyed: CubeCL's streams live as
/// long as the process).
struct StreamHandle(sys::cublasHandle_t);

// SAFETY: a cuBLAS handle may be used from any thread as long as one thread uses it at a time;
// each is used under its own lock (`stream_handle`).
unsafe impl Send for StreamHandle {}

/// The handle for CubeCL's stream `stream` on device `ordinal`, created and bound to the stream
/// on first use. The device's primary context must be current (it is on CubeCL's device thread).
/// Its lock is held only while a product is enqueued, never across a wait: the calling thread
/// and the device thread both use it.
fn stream_handle(ordinal: usize, stream: usize) -> Result<Arc<Mutex<StreamHandle>>, String> {
    type ByStream = HashMap<(usize, usize), Arc<Mutex<StreamHandle>>>;
    static HANDLES: OnceLock<Mutex<ByStream>> = OnceLock::new();
    let mut handles = HANDLES.get_or_init(Default::default).lock().map_err(|_| "cuBLAS stream handles poisoned".to_string())?;
    if let Some(h) = handles.get(&(ordinal, stream)) {
        return Ok(h.clone());
    }
    let h = cudarc::cublas::result::create_handle().map_err(|e| format!("cuBLAS handle: {e:?}"))?;
    // SAFETY: `h` was just created; `stream` is a live CUstream of this device's primary context.
    unsafe { cudarc::cublas::result::set_stream(h, stream as sys::cudaStream_t) }.map_err(|e| format!("cuBLAS stream: {e:?}"))?;
    let h = Arc::new(Mutex::new(StreamHandle(h)));
    handles.insert((ordinal, stream), h.clone());
    Ok(h)
}

/// Enqueues `gemm` on `stream`'s handle.
fn run_on_stream(ordinal: usize, stream: usize, gemm: &Gemm) -> Result<(), String> {
    let h = stream_handle(ordinal, stream)?;
    let h = h.lock().map_err(|_| "cuBLAS stream handle poisoned".to_string())?;
    // SAFETY: the caller's: the pointers are live allocations of the shapes and layouts checked
    // in `cuda_matmul`, kept alive until the product is enqueued; reuse of their memory is
    // ordered after it on the same stream.
    unsafe { gemm.run(h.0) }.map_err(|e| gemm.failed(e))
}

/// The products (all but their addresses) that cuBLAS has run on CubeCL's stream through the
/// round trip, with the CubeCL streams their tensors were created on (which the round trip found
/// to be one CUDA stream): these may be [`BlasOrdering::Queued`] from then on.
type Proven = std::collections::HashSet<(GemmShape, [cubecl::stream_id::StreamId; 3])>;

/// Most entries of [`proven`] (a server sees a new row count per prompt length: the set stays
/// bounded, and products past it keep the round trip).
const PROVEN_MAX: usize = 4096;

fn proven() -> &'static Mutex<Proven> {
    static PROVEN: OnceLock<Mutex<Proven>> = OnceLock::new();
    PROVEN.get_or_init(Default::default)
}

/// Why a queued product failed on the device thread (its output is undefined), kept so that
/// every later product refuses and takes Burn's matmul. Set once; read without a lock on every
/// product.
static QUEUED_FAILURE: OnceLock<String> = OnceLock::new();

/// On CubeCL's device thread: the operands' addresses from `server`, then the product on their
/// stream. A failure is recorded ([`QUEUED_FAILURE`], the refusals).
#[cfg(feature = "queued-blas")]
fn queued(server: &mut <CudaRuntime as cubecl::Runtime>::Server, stream_id: cubecl::stream_id::StreamId, ordinal: usize, bindings: [cubecl::server::Binding; 3], shape: GemmShape) {
    use cubecl::server::ComputeServer;
    let run = || -> Result<(), String> {
        let [lhs, rhs, out] = bindings;
        let resource = |server: &mut <CudaRuntime as cubecl::Runtime>::Server, b| server.get_resource(b, stream_id).map_err(|e| format!("resource: {e:?}"));
        let held = [resource(server, lhs)?, resource(server, rhs)?, resource(server, out)?];
        let [(lhs_ptr, a), (rhs_ptr, b), (out_ptr, c)] = [located(held[0].resource())?, located(held[1].resource())?, located(held[2].resource())?];
        let Some(stream) = a.filter(|&s| b == Some(s) && c == Some(s)) else {
            return Err(format!("queued operands on streams {a:?}, {b:?}, {c:?}"));
        };
        run_on_stream(ordinal, stream, &Gemm { shape, lhs_ptr, rhs_ptr, out_ptr })
    };
    if let Err(e) = run() {
        let reason = format!("a queued cuBLAS product failed on CubeCL's device thread (its output is undefined; later products take Burn's matmul): {e}");
        // The first failure is the one kept.
        let _ = QUEUED_FAILURE.set(reason.clone());
        super::refuse_blas_matmul(reason);
    }
}

/// The CUDA toolkit's library folders: `$CUDA_HOME`, `$CUDA_PATH`, `$CUDA_ROOT`, then
/// `/usr/local/cuda`, each with `lib64`.
fn toolkit_lib_dirs() -> Vec<PathBuf> {
    ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .chain([PathBuf::from("/usr/local/cuda")])
        .map(|root| root.join("lib64"))
        .collect()
}

/// Where the loader's search path (`LD_LIBRARY_PATH`, the system's folders) has none of the
/// libcublas names cudarc asks for, loads the first of them found in [`toolkit_lib_dirs`] and
/// keeps it loaded: cudarc's load by name then finds it, as the loader matches a loaded library
/// by its name. Nothing found: cudarc's own load fails and the products take Burn's matmul.
fn load_from_toolkit() {
    let names = cudarc::get_lib_name_candidates("cublas");
    // SAFETY: loading libcublas runs its initialisers, as cudarc's own load does.
    if names.iter().any(|name| unsafe { libloading::Library::new(name) }.is_ok()) {
        return;
    }
    for path in toolkit_lib_dirs().iter().flat_map(|dir| names.iter().map(move |name| dir.join(name))).filter(|path| path.is_file()) {
        // SAFETY: as above.
        if let Ok(library) = unsafe { libloading::Library::new(&path) } {
            std::mem::forget(library);
            return;
        }
    }
}

/// Where a CUDA tensor's resource lives: the device address of its first element, and the CUDA
/// stream it names (`None` without the workspace's cubecl-cuda patch). CubeCL keeps its CUDA
/// resource type private; its `Debug` form (`GpuResource { ptr: …, …, stream: 0x… }`) names
/// both (the address with its offset), read from one formatting.
fn located(resource: &impl std::fmt::Debug) -> Result<(u64, Option<usize>), String> {
    let text = format!("{resource:?}");
    let address = text
        .split_once("ptr: ")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .filter(|&ptr| ptr != 0)
        .ok_or_else(|| format!("no device address in CubeCL's resource `{text}`"))?;
    let stream = text.split_once("stream: 0x").and_then(|(_, rest)| {
        let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
        usize::from_str_radix(&hex, 16).ok().filter(|&s| s != 0)
    });
    Ok((address, stream))
}

/// A `[..., rows, cols]` operand as cuBLAS sees it: its matrices' count, the elements between
/// two of them (0 for one), whether each is transposed (columns contiguous) and its leading
/// dimension (elements between rows, or columns when transposed; ≥ the row length for a
/// pitched buffer). `None` when the batch dimensions do not step by one stride.
fn layout(t: &CubeTensor<CudaRuntime>) -> Option<Operand> {
    operand(t.meta.shape().as_slice(), t.meta.strides())
}

/// [`layout`] of a shape and its strides (in elements).
fn operand(shape: &[usize], strides: &[usize]) -> Option<Operand> {
    let r = shape.len();
    if r < 2 || strides.len() != r {
        return None;
    }
    let [rows, cols] = [shape[r - 2], shape[r - 1]];
    let (transposed, ld) = if strides[r - 1] == 1 && strides[r - 2] >= cols.max(1) {
        (false, strides[r - 2])
    } else if strides[r - 2] == 1 && strides[r - 1] >= rows.max(1) {
        (true, strides[r - 1])
    } else {
        return None;
    };
    // Batch dimensions of more than one element, outermost first: each must step by the next
    // one's stride times its extent (so that one stride walks them all).
    let batch: Vec<(usize, usize)> = (0..r - 2).filter(|&i| shape[i] > 1).map(|i| (shape[i], strides[i])).collect();
    let count = batch.iter().map(|(n, _)| n).product::<usize>();
    if batch.windows(2).any(|w| w[0].1 != w[1].1 * w[1].0) {
        return None;
    }
    let stride = batch.last().map_or(0, |&(_, s)| s);
    Some(Operand { count, stride, transposed, ld })
}

/// See [`layout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Operand {
    count: usize,
    stride: usize,
    transposed: bool,
    ld: usize,
}

fn cuda_matmul(lhs: CubeTensor<CudaRuntime>, rhs: CubeTensor<CudaRuntime>) -> Result<(CubeTensor<CudaRuntime>, BlasOrdering), String> {
    use sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
    let dtype = lhs.dtype;
    let data_type = match dtype {
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        other => return Err(format!("dtype {other:?}")),
    };
    let (ls, rs) = (lhs.meta.shape().clone(), rhs.meta.shape().clone());
    let r = ls.num_dims();
    if r < 2 || rs.num_dims() != r || ls[r - 1] != rs[r - 2] || ls.as_slice()[..r - 2] != rs.as_slice()[..r - 2] || rhs.dtype != dtype {
        return Err(format!("shapes {:?} · {:?} ({dtype:?} · {:?})", ls.as_slice(), rs.as_slice(), rhs.dtype));
    }
    // First, so that a missing library costs no copy and no drain (its refusal is kept).
    let blas = handle(lhs.device.index)?;
    if let Some(failure) = QUEUED_FAILURE.get() {
        return Err(failure.clone());
    }
    let [m, k, n] = [ls[r - 2], ls[r - 1], rs[r - 1]];
    let batch = ls.as_slice()[..r - 2].iter().product::<usize>();
    let fits = |v: usize| i32::try_from(v).is_ok();
    if ![m, k, n, batch, m * k, k * n, m * n].into_iter().all(fits) || m == 0 || k == 0 || n == 0 || batch == 0 {
        return Err(format!("batch, m, k, n = {batch}, {m}, {k}, {n}"));
    }
    // `lhs`'s rows must be contiguous (cuBLAS takes a row pitch, not a column stride).
    let lhs = match layout(&lhs) {
        Some(Operand { transposed: false, .. }) => lhs,
        _ => into_contiguous(lhs),
    };
    let rhs = if layout(&rhs).is_some() { rhs } else { into_contiguous(rhs) };
    let (Some(a), Some(b)) = (layout(&lhs), layout(&rhs)) else {
        return Err(format!("strides {:?} · {:?}", lhs.meta.strides(), rhs.meta.strides()));
    };
    let mut out_shape = ls.clone();
    out_shape[r - 1] = n;
    let out = empty_device_contiguous_dtype(lhs.client.clone(), lhs.device.clone(), out_shape, dtype);
    let c = layout(&out).ok_or_else(|| format!("output strides {:?}", out.meta.strides()))?;
    if a.transposed || c.transposed || a.count != batch || b.count != batch || c.count != batch {
        return Err(format!("layouts {a:?} · {b:?} → {c:?} over {batch} products"));
    }

    let shape = GemmShape { data_type, op_rhs: if b.transposed { CUBLAS_OP_T } else { CUBLAS_OP_N }, batch, m, k, n, a, b, c };
    let ordering = super::blas_ordering();
    // The CubeCL streams the three tensors were created on (each thread has its own).
    let created = [lhs.handle.stream, rhs.handle.stream, out.handle.stream];
    #[cfg(feature = "queued-blas")]
    if ordering == BlasOrdering::Queued && proven().lock().is_ok_and(|p| p.contains(&(shape, created))) {
        let bindings = [lhs.handle.clone().binding(), rhs.handle.clone().binding(), out.handle.clone().binding()];
        let ordinal = lhs.device.index;
        // The bindings keep the three allocations alive until the task has run, as a kernel
        // launch's do.
        out.client.submit_with_server(move |server, stream_id| queued(server, stream_id, ordinal, bindings, shape));
        return Ok((out, BlasOrdering::Queued));
    }

    let client = lhs.client.clone();
    let resource = |t: &CubeTensor<CudaRuntime>| client.get_resource(t.handle.clone()).map_err(|e| format!("resource: {e:?}"));
    // Held until the product is enqueued (stream ordering) or done (host ordering): they keep the
    // three allocations alive until then.
    let (held_lhs, held_rhs, held_out) = (resource(&lhs)?, resource(&rhs)?, resource(&out)?);
    let [(lhs_ptr, lhs_stream), (rhs_ptr, rhs_stream), (out_ptr, out_stream)] = [located(held_lhs.resource())?, located(held_rhs.resource())?, located(held_out.resource())?];
    let gemm = Gemm { shape, lhs_ptr, rhs_ptr, out_ptr };
    let streams = [lhs_stream, rhs_stream, out_stream];
    let ordered = if ordering != BlasOrdering::Host
        && let [Some(s), ..] = streams
        && streams.iter().all(|&t| t == Some(s))
    {
        run_on_stream(lhs.device.index, s, &gemm)?;
        BlasOrdering::Stream
    } else {
        let blas = blas.lock().map_err(|_| "cuBLAS handle poisoned".to_string())?;
        blas.context.bind_to_thread().map_err(|e| format!("bind context: {e}"))?;
        // Everything queued before (the inputs' producers) is done.
        cubecl::future::block_on(client.sync()).map_err(|e| format!("sync: {e:?}"))?;
        // SAFETY: the pointers are live allocations of the shapes and layouts checked above; the
        // inputs' producers are done and nothing else uses the output yet.
        unsafe { gemm.run(*blas.blas.handle()) }.map_err(|e| gemm.failed(e))?;
        blas.stream.synchronize().map_err(|e| format!("cuBLAS stream: {e}"))?;
        BlasOrdering::Host
    };
    drop((held_lhs, held_rhs, held_out));
    // Only what a later `Queued` product looks up (none without the feature).
    if cfg!(feature = "queued-blas")
        && ordering == BlasOrdering::Queued
        && ordered == BlasOrdering::Stream
        && let Ok(mut proven) = proven().lock()
        && proven.len() < PROVEN_MAX
    {
        proven.insert((shape, created));
    }
    Ok((out, ordered))
}

/// A product as cuBLAS takes it but for the addresses; with the streams that created its
/// tensors, what [`BlasOrdering::Queued`] recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct GemmShape {
    data_type: sys::cudaDataType,
    op_rhs: sys::cublasOperation_t,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    a: Operand,
    b: Operand,
    c: Operand,
}

/// One product as cuBLAS takes it (see [`cuda_matmul`]).
#[derive(Clone, Copy)]
struct Gemm {
    shape: GemmShape,
    lhs_ptr: u64,
    rhs_ptr: u64,
    out_ptr: u64,
}

impl Gemm {
    /// The refusal for a failed enqueue.
    fn failed(&self, e: cudarc::cublas::result::CublasError) -> String {
        let GemmShape { batch, m, k, n, data_type, .. } = self.shape;
        format!("cuBLAS product batch, m, k, n = {batch}, {m}, {k}, {n} ({data_type:?}): {e:?}")
    }

    /// Enqueues the product on `handle`'s stream.
    ///
    /// # Safety
    /// The pointers must be live device allocations of the operands' layouts, in the context
    /// current on this thread, which `handle` belongs to.
    unsafe fn run(&self, handle: sys::cublasHandle_t) -> Result<(), cudarc::cublas::result::CublasError> {
        use sys::cublasOperation_t::CUBLAS_OP_N;
        let GemmShape { data_type, op_rhs, batch, m, k, n, a, b, c } = self.shape;
        // Row-major `out[m, n] = lhs[m, k] · rhs[k, n]` is column-major `outᵀ = rhsᵀ · lhsᵀ`:
        // cuBLAS's (m, n, k) are (n, m, k), its A is `rhs` (transposed when its columns are
        // contiguous, as the model's weights: a view of the checkpoint's `[n, k]` rows) and its B
        // is `lhs`.
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (alpha, beta) = ((&alpha as *const f32).cast(), (&beta as *const f32).cast());
        let (rhs_ptr, lhs_ptr, out_ptr) = (self.rhs_ptr as *const std::ffi::c_void, self.lhs_ptr as *const std::ffi::c_void, self.out_ptr as *mut std::ffi::c_void);
        let (compute, algo) = (sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT);
        let (n_, m_, k_) = (n as i32, m as i32, k as i32);
        // SAFETY: the caller's.
        unsafe {
            if batch == 1 {
                gemm_ex(handle, op_rhs, CUBLAS_OP_N, n_, m_, k_, alpha, rhs_ptr, data_type, b.ld as i32, lhs_ptr, data_type, a.ld as i32, beta, out_ptr, data_type, c.ld as i32, compute, algo)
            } else {
                #[rustfmt::skip]
                let status = gemm_strided_batched_ex(
                    handle, op_rhs, CUBLAS_OP_N, n_, m_, k_, alpha,
                    rhs_ptr, data_type, b.ld as i32, b.stride as i64,
                    lhs_ptr, data_type, a.ld as i32, a.stride as i64, beta,
                    out_ptr, data_type, c.ld as i32, c.stride as i64,
                    batch as i32, compute, algo,
                );
                status
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Operand, located, operand, toolkit_lib_dirs};

    /// The fields of CubeCL's CUDA resource (`GpuResource`, private to cubecl-cuda) with the
    /// workspace's patch (`patches/cubecl-cuda`: `stream`), for its `Debug` form.
    #[derive(Debug, Clone, Copy)]
    #[allow(dead_code)]
    struct GpuResource {
        ptr: u64,
        binding: *mut std::ffi::c_void,
        size: u64,
        stream: *mut std::ffi::c_void,
    }

    /// The stream is read from the `Debug` form of the patched resource, and is absent from
    /// upstream's.
    #[test]
    fn stream_is_read_from_the_patched_resource_debug_form() {
        let r = GpuResource { ptr: 1 << 20, binding: std::ptr::null_mut(), size: 64, stream: 0x5a3c_e000_f0a8usize as *mut _ };
        assert_eq!(located(&r), Ok((1 << 20, Some(0x5a3c_e000_f0a8))));
        assert_eq!(located(&GpuResource { stream: std::ptr::null_mut(), ..r }), Ok((1 << 20, None)), "a null stream");
        assert_eq!(located(&"GpuResource { ptr: 1048576, binding: 0x0, size: 64 }"), Ok((1 << 20, None)), "upstream's form");
    }

    /// The CUDA toolkit's default install is always among the folders searched, last (the
    /// environment's folders come first).
    #[test]
    fn toolkit_folders_end_with_the_default_install() {
        assert_eq!(toolkit_lib_dirs().last(), Some(&std::path::PathBuf::from("/usr/local/cuda/lib64")));
    }

    /// The address is read from CubeCL's `Debug` form of its CUDA resource.
    #[test]
    fn address_is_read_from_the_resource_debug_form() {
        let r = GpuResource { ptr: 139_872_000_512, binding: std::ptr::null_mut(), size: 64, stream: std::ptr::null_mut() };
        assert_eq!(located(&r).map(|(address, _)| address), Ok(139_872_000_512));
        assert!(located(&"GpuResource { binding: 0x0 }").is_err());
        assert!(located(&GpuResource { ptr: 0, ..r }).is_err());
    }

    /// The operand layouts cuBLAS is handed: the model's weights (a transposed view of the
    /// checkpoint's rows), row-major and pitched activations, the `scores` attention's views
    /// (keys narrowed then transposed, values narrowed, over batch × heads), and the layouts it
    /// must refuse (no contiguous rows or columns, batch dimensions no one stride walks).
    #[test]
    fn operand_layouts() {
        let op = |count, stride, transposed, ld| Some(Operand { count, stride, transposed, ld });
        assert_eq!(operand(&[200, 72], &[72, 1]), op(1, 0, false, 72));
        assert_eq!(operand(&[200, 72], &[80, 1]), op(1, 0, false, 80), "pitched rows");
        assert_eq!(operand(&[3072, 9216], &[1, 3072]), op(1, 0, true, 3072), "checkpoint rows, transposed");
        // k: [b=2, h=3, keys=50, d=64] narrowed to 20 keys, then swap_dims(2, 3) → [2, 3, 64, 20].
        assert_eq!(operand(&[2, 3, 64, 20], &[3 * 50 * 64, 50 * 64, 1, 64]), op(6, 50 * 64, true, 64));
        // v narrowed: [2, 3, 20, 64] with the strides of 50 keys.
        assert_eq!(operand(&[2, 3, 20, 64], &[3 * 50 * 64, 50 * 64, 64, 1]), op(6, 50 * 64, false, 64));
        // A batch dimension of one element does not count, whatever its stride.
        assert_eq!(operand(&[1, 4, 8, 16], &[7, 128, 16, 1]), op(4, 128, false, 16));
        // An expanded (broadcast) batch: stride 0.
        assert_eq!(operand(&[4, 8, 16], &[0, 16, 1]), op(4, 0, false, 16));
        assert_eq!(operand(&[8, 16], &[32, 2]), None, "neither rows nor columns contiguous");
        assert_eq!(operand(&[2, 3, 8, 16], &[1000, 128, 16, 1]), None, "batch dimensions need two strides");
        assert_eq!(operand(&[16], &[1]), None, "not a matrix");
    }
}
