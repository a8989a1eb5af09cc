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
//!
//! [`linear`] (for [`Kernels::blas_linear`](super::Kernels::blas_linear)) adds a bias and a
//! residual to a product in its epilogue, by cuBLASLt (`cublasLtMatmul`: the bias as
//! `CUBLASLT_EPILOGUE_BIAS`, the residual as C with β = 1, D a new tensor): the product's output
//! is written once instead of being read and written again by an add per term. It is ordered as
//! the plain products are (host, stream, or queued once a product of its shape and terms has
//! run through the round trip), with a 32 MiB workspace per CUDA stream and the heuristic's
//! algorithm kept per shape, layout and alignment.

use std::any::Any;
use std::collections::HashMap;
use std::ffi::c_void;
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
use cudarc::cublaslt::{result as lt_result, sys as lt};
use cudarc::driver::{CudaContext, CudaStream};

use super::BlasOrdering;

/// `lhs · rhs` by cuBLAS when `R` is CUDA's runtime; `None` on other runtimes, and where cuBLAS
/// refuses (the reason recorded for [`super::blas_matmul_refusals`]).
pub(crate) fn matmul<R: CubeRuntime>(lhs: CubeTensor<R>, rhs: CubeTensor<R>) -> Option<CubeTensor<R>> {
    let lhs = (Box::new(lhs) as Box<dyn Any>).downcast::<CubeTensor<CudaRuntime>>().ok()?;
    let rhs = (Box::new(rhs) as Box<dyn Any>).downcast::<CubeTensor<CudaRuntime>>().ok()?;
    match cuda_matmul(*lhs, *rhs, None) {
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

/// `x · weight (+ bias) (+ residual)` by cuBLASLt, the additions in the product's epilogue, when
/// `R` is CUDA's runtime; `None` on other runtimes and where cuBLASLt refuses (the reason
/// recorded for [`super::blas_matmul_refusals`]).
///
/// # Shapes
/// `x`: `[m, k]`; `weight`: `[k, n]`; `bias`: `[n]`; `residual`: `[m, n]` → `[m, n]`
pub(crate) fn linear<R: CubeRuntime>(x: CubeTensor<R>, weight: CubeTensor<R>, bias: Option<CubeTensor<R>>, residual: Option<CubeTensor<R>>) -> Option<CubeTensor<R>> {
    fn cuda<R: CubeRuntime>(t: CubeTensor<R>) -> Option<CubeTensor<CudaRuntime>> {
        (Box::new(t) as Box<dyn Any>).downcast::<CubeTensor<CudaRuntime>>().ok().map(|t| *t)
    }
    let (x, weight) = (cuda(x)?, cuda(weight)?);
    let bias = match bias {
        Some(b) => Some(cuda(b)?),
        None => None,
    };
    let residual = match residual {
        Some(r) => Some(cuda(r)?),
        None => None,
    };
    match cuda_matmul(x, weight, Some(Terms { bias, residual })) {
        Ok((out, ordering)) => {
            super::count_blas_matmul(ordering);
            super::count_blas_epilogue(ordering);
            (Box::new(out) as Box<dyn Any>).downcast::<CubeTensor<R>>().ok().map(|out| *out)
        }
        Err(reason) => {
            super::refuse_blas_matmul(format!("cuBLASLt epilogue: {reason}"));
            None
        }
    }
}

/// What [`linear`] adds to its product.
struct Terms {
    bias: Option<CubeTensor<CudaRuntime>>,
    residual: Option<CubeTensor<CudaRuntime>>,
}

/// One device's cuBLAS handle and the stream it runs on.
struct Blas {
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
}

/// Handles by device ordinal (`Err`: why the library cannot run there, kept so that a missing
/// library is looked for once).
type PerDevice<T> = OnceLock<Mutex<HashMap<usize, Result<Arc<Mutex<T>>, String>>>>;

/// Device `ordinal`'s entry of `handles`, made by `create` after library `lib` is looked for
/// ([`load_from_toolkit`]) on first use.
fn per_device<T>(handles: &'static PerDevice<T>, ordinal: usize, lib: &str, create: impl FnOnce() -> Result<T, String> + std::panic::UnwindSafe) -> Result<Arc<Mutex<T>>, String> {
    let mut handles = handles.get_or_init(Default::default).lock().map_err(|_| format!("{lib} handles poisoned"))?;
    handles
        .entry(ordinal)
        .or_insert_with(|| {
            // cudarc panics when the library cannot be loaded: a typed refusal here.
            crate::backends::cuda::quietly(|| {
                load_from_toolkit(lib);
                create().map(|t| Arc::new(Mutex::new(t)))
            })
            .unwrap_or_else(|| Err(format!("lib{lib} could not be loaded (is the CUDA toolkit's lib directory on LD_LIBRARY_PATH?)")))
        })
        .clone()
}

fn handle(ordinal: usize) -> Result<Arc<Mutex<Blas>>, String> {
    static HANDLES: PerDevice<Blas> = OnceLock::new();
    per_device(&HANDLES, ordinal, "cublas", || {
        let context = CudaContext::new(ordinal).map_err(|e| format!("CUDA context {ordinal}: {e}"))?;
        let stream = context.new_stream().map_err(|e| format!("CUDA stream: {e}"))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| format!("cuBLAS handle: {e}"))?;
        Ok(Blas { context, stream, blas })
    })
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

/// The products (all but their addresses) that cuBLAS or cuBLASLt has run on CubeCL's stream
/// through the round trip: each one's shape, whether it added a bias and a residual, and the
/// CubeCL streams its tensors were created on (the operands, the output, then the bias and the
/// residual where there are; the round trip found them on one CUDA stream). These may be
/// [`BlasOrdering::Queued`] from then on.
type Proven = std::collections::HashSet<(GemmShape, [bool; 2], Vec<cubecl::stream_id::StreamId>)>;

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

/// A queued product but for its addresses: a cuBLAS product, or a cuBLASLt one with its terms
/// (whether it adds a bias, a residual), the device's cuBLASLt handle and its context.
#[cfg(feature = "queued-blas")]
enum QueuedProduct {
    Gemm(GemmShape),
    Lt { shape: GemmShape, bias: bool, residual: bool, lt: Arc<Mutex<Lt>>, context: Arc<CudaContext> },
}

/// On CubeCL's device thread: the addresses of `bindings` (the operands, the output, then the
/// bias and the residual where `product` has them) from `server`, then the product on their
/// stream. A failure is recorded ([`QUEUED_FAILURE`], the refusals).
#[cfg(feature = "queued-blas")]
fn queued(server: &mut <CudaRuntime as cubecl::Runtime>::Server, stream_id: cubecl::stream_id::StreamId, ordinal: usize, bindings: Vec<cubecl::server::Binding>, product: QueuedProduct) {
    use cubecl::server::ComputeServer;
    let run = || -> Result<(), String> {
        let held = bindings.into_iter().map(|b| server.get_resource(b, stream_id).map_err(|e| format!("resource: {e:?}"))).collect::<Result<Vec<_>, _>>()?;
        let located = held.iter().map(|h| located(h.resource())).collect::<Result<Vec<_>, _>>()?;
        let streams: Vec<Option<usize>> = located.iter().map(|&(_, s)| s).collect();
        let Some(stream) = streams[0].filter(|&s| streams.iter().all(|&t| t == Some(s))) else {
            return Err(format!("queued operands on streams {streams:?}"));
        };
        let ptrs: Vec<u64> = located.iter().map(|&(ptr, _)| ptr).collect();
        match product {
            QueuedProduct::Gemm(shape) => run_on_stream(ordinal, stream, &Gemm { shape, lhs_ptr: ptrs[0], rhs_ptr: ptrs[1], out_ptr: ptrs[2] }),
            QueuedProduct::Lt { shape, bias, residual, lt, context } => {
                let gemm = Gemm { shape, lhs_ptr: ptrs[0], rhs_ptr: ptrs[1], out_ptr: ptrs[2] };
                let mut terms = ptrs[3..].iter().copied();
                let (bias_ptr, residual_ptr) = (bias.then(|| terms.next()).flatten(), residual.then(|| terms.next()).flatten());
                run_lt(&context, stream, &LtGemm { gemm, bias_ptr, residual_ptr, lt })
            }
        }
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
/// names cudarc asks for library `lib` (`cublas`, `cublasLt`) by, loads the first of them found
/// in [`toolkit_lib_dirs`] and keeps it loaded: cudarc's load by name then finds it, as the
/// loader matches a loaded library by its name. Nothing found: cudarc's own load fails and the
/// products take Burn's matmul.
fn load_from_toolkit(lib: &str) {
    let names = cudarc::get_lib_name_candidates(lib);
    // SAFETY: loading the library runs its initialisers, as cudarc's own load does.
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

/// `lhs · rhs` by cuBLAS, or by cuBLASLt with `terms` added in its epilogue (2-d operands only).
fn cuda_matmul(lhs: CubeTensor<CudaRuntime>, rhs: CubeTensor<CudaRuntime>, terms: Option<Terms>) -> Result<(CubeTensor<CudaRuntime>, BlasOrdering), String> {
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
    let terms = match terms {
        Some(terms) => Some((terms, lt_handle(lhs.device.index)?)),
        None => None,
    };
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
    let terms = match terms {
        Some((terms, lt)) => Some((epilogue_terms(terms, &out, c)?, lt)),
        None => None,
    };
    // The tensors, in the order the product takes their addresses: the operands, the output,
    // then the epilogue's bias and residual where there are; and the CubeCL streams they were
    // created on (each thread has its own).
    let tensors: Vec<&CubeTensor<CudaRuntime>> = [&lhs, &rhs, &out].into_iter().chain(terms.iter().flat_map(|(t, _)| t.bias.iter().chain(t.residual.iter()))).collect();
    let has_terms = terms.as_ref().map_or([false; 2], |(t, _)| [t.bias.is_some(), t.residual.is_some()]);
    let proven_key = (shape, has_terms, tensors.iter().map(|t| t.handle.stream).collect::<Vec<_>>());
    #[cfg(feature = "queued-blas")]
    if ordering == BlasOrdering::Queued && proven().lock().is_ok_and(|p| p.contains(&proven_key)) {
        let bindings = tensors.iter().map(|t| t.handle.clone().binding()).collect::<Vec<_>>();
        let ordinal = lhs.device.index;
        let product = match &terms {
            None => QueuedProduct::Gemm(shape),
            Some((_, lt)) => {
                let context = blas.lock().map_err(|_| "cuBLAS handle poisoned".to_string())?.context.clone();
                QueuedProduct::Lt { shape, bias: has_terms[0], residual: has_terms[1], lt: lt.clone(), context }
            }
        };
        // The bindings keep the allocations alive until the task has run, as a kernel launch's do.
        out.client.submit_with_server(move |server, stream_id| queued(server, stream_id, ordinal, bindings, product));
        return Ok((out, BlasOrdering::Queued));
    }

    let client = lhs.client.clone();
    let resource = |t: &CubeTensor<CudaRuntime>| client.get_resource(t.handle.clone()).map_err(|e| format!("resource: {e:?}"));
    // Held until the product is enqueued (stream ordering) or done (host ordering): they keep the
    // allocations alive until then.
    let held = tensors.iter().map(|t| resource(t)).collect::<Result<Vec<_>, _>>()?;
    let located = held.iter().map(|h| located(h.resource())).collect::<Result<Vec<_>, _>>()?;
    let gemm = Gemm { shape, lhs_ptr: located[0].0, rhs_ptr: located[1].0, out_ptr: located[2].0 };
    let product = match &terms {
        None => Product::Gemm(gemm),
        Some((t, lt)) => {
            let mut more = located[3..].iter().map(|&(ptr, _)| ptr);
            let (bias_ptr, residual_ptr) = (t.bias.as_ref().and_then(|_| more.next()), t.residual.as_ref().and_then(|_| more.next()));
            Product::Lt(LtGemm { gemm, bias_ptr, residual_ptr, lt: lt.clone() })
        }
    };
    let ordinal = lhs.device.index;
    let stream = located[0].1.filter(|&s| located.iter().all(|&(_, t)| t == Some(s)));
    let ordered = if ordering != BlasOrdering::Host
        && let Some(s) = stream
    {
        match &product {
            Product::Gemm(gemm) => run_on_stream(ordinal, s, gemm)?,
            Product::Lt(gemm) => {
                let context = blas.lock().map_err(|_| "cuBLAS handle poisoned".to_string())?.context.clone();
                run_lt(&context, s, gemm)?
            }
        }
        BlasOrdering::Stream
    } else {
        let blas = blas.lock().map_err(|_| "cuBLAS handle poisoned".to_string())?;
        blas.context.bind_to_thread().map_err(|e| format!("bind context: {e}"))?;
        // Everything queued before (the inputs' producers) is done.
        cubecl::future::block_on(client.sync()).map_err(|e| format!("sync: {e:?}"))?;
        match &product {
            // SAFETY: the pointers are live allocations of the shapes and layouts checked above;
            // the inputs' producers are done and nothing else uses the output yet.
            Product::Gemm(gemm) => unsafe { gemm.run(*blas.blas.handle()) }.map_err(|e| gemm.failed(e))?,
            Product::Lt(gemm) => run_lt(&blas.context, blas.stream.cu_stream() as usize, gemm)?,
        }
        blas.stream.synchronize().map_err(|e| format!("cuBLAS stream: {e}"))?;
        BlasOrdering::Host
    };
    drop(held);
    // Only what a later `Queued` product looks up (none without the feature).
    if cfg!(feature = "queued-blas")
        && ordering == BlasOrdering::Queued
        && ordered == BlasOrdering::Stream
        && let Ok(mut proven) = proven().lock()
        && proven.len() < PROVEN_MAX
    {
        proven.insert(proven_key);
    }
    Ok((out, ordered))
}

/// [`linear`]'s terms as cuBLASLt takes them: the bias one contiguous value per output column,
/// the residual laid out as the output `out` (`out_layout`), each in the output's dtype; the
/// product is one matrix.
fn epilogue_terms(terms: Terms, out: &CubeTensor<CudaRuntime>, out_layout: Operand) -> Result<Terms, String> {
    let shape = out.meta.shape().as_slice();
    let n = shape[shape.len() - 1];
    if out_layout.count != 1 {
        return Err(format!("an epilogue over {} products", out_layout.count));
    }
    let bias = match terms.bias {
        Some(b) if b.dtype != out.dtype || b.meta.shape().as_slice() != [n] => {
            return Err(format!("bias {:?} ({:?}) for an output {shape:?} ({:?})", b.meta.shape().as_slice(), b.dtype, out.dtype));
        }
        Some(b) if b.meta.strides()[..] != [1] => Some(into_contiguous(b)),
        b => b,
    };
    let residual = match terms.residual {
        Some(r) if r.dtype != out.dtype || r.meta.shape().as_slice() != shape => {
            return Err(format!("residual {:?} ({:?}) for an output {shape:?} ({:?})", r.meta.shape().as_slice(), r.dtype, out.dtype));
        }
        Some(r) => {
            let r = if layout(&r) == Some(out_layout) { r } else { into_contiguous(r) };
            if layout(&r) != Some(out_layout) {
                return Err(format!("residual strides {:?} for an output's {:?}", r.meta.strides(), out.meta.strides()));
            }
            Some(r)
        }
        None => None,
    };
    Ok(Terms { bias, residual })
}

/// A product for cuBLAS, or for cuBLASLt with an epilogue.
enum Product {
    Gemm(Gemm),
    Lt(LtGemm),
}

/// A [`Gemm`] with its epilogue's terms: the addresses of a bias (one value per output column)
/// and of a residual (laid out as the output); and the device's cuBLASLt handle, looked up
/// before the product's operands were copied or taken.
struct LtGemm {
    gemm: Gemm,
    bias_ptr: Option<u64>,
    residual_ptr: Option<u64>,
    lt: Arc<Mutex<Lt>>,
}

/// Bytes of cuBLASLt's workspace per CUDA stream (NVIDIA's advice for Hopper).
const LT_WORKSPACE: usize = 32 << 20;

/// One device's cuBLASLt handle, the workspace of each CUDA stream it has run on, and the
/// algorithm its heuristic chose for each product (all but its addresses).
struct Lt {
    handle: lt::cublasLtHandle_t,
    workspaces: HashMap<usize, u64>,
    /// Each shape's descriptors and algorithm, made once (a product sets only its bias
    /// pointer); at most [`PROVEN_MAX`], then made again from none.
    plans: HashMap<LtShape, LtPlan>,
}

/// A cuBLASLt product's descriptors and the heuristic's algorithm for them.
struct LtPlan {
    descs: LtDescs,
    algo: lt::cublasLtMatmulAlgo_t,
}

// SAFETY: the handle is used under its lock only (`lt_handle`).
unsafe impl Send for Lt {}

/// A cuBLASLt product but for its addresses, with their alignments (which its algorithm must
/// allow): what its algorithm is kept by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct LtShape {
    gemm: GemmShape,
    bias: bool,
    residual: bool,
    /// Of A (the weight), B (the activations), C (the residual, else the output) and D (the
    /// output), in bytes, at most 256.
    align: [u32; 4],
}

/// The largest power of two (at most 256) that divides `address`.
fn alignment(address: u64) -> u32 {
    1 << address.trailing_zeros().min(8)
}

/// Device `ordinal`'s cuBLASLt handle, created on first use.
fn lt_handle(ordinal: usize) -> Result<Arc<Mutex<Lt>>, String> {
    static HANDLES: PerDevice<Lt> = OnceLock::new();
    per_device(&HANDLES, ordinal, "cublasLt", || {
        let handle = lt_result::create_handle().map_err(|e| format!("cuBLASLt handle: {e:?}"))?;
        Ok(Lt { handle, workspaces: HashMap::new(), plans: HashMap::new() })
    })
}

/// Enqueues `g` on CUDA stream `stream` by cuBLASLt, in `context` (the device's primary
/// context, bound to this thread when a stream's workspace is allocated).
fn run_lt(context: &CudaContext, stream: usize, g: &LtGemm) -> Result<(), String> {
    let mut lt = g.lt.lock().map_err(|_| "cuBLASLt handle poisoned".to_string())?;
    let workspace = match lt.workspaces.get(&stream) {
        Some(&w) => w,
        None => {
            context.bind_to_thread().map_err(|e| format!("bind context: {e}"))?;
            // SAFETY: an allocation in the bound context, used by this stream's products only
            // (one after the other), never freed: CubeCL's streams live as long as the process.
            let w = unsafe { cudarc::driver::result::malloc_sync(LT_WORKSPACE) }.map_err(|e| format!("cuBLASLt workspace: {e}"))?;
            lt.workspaces.insert(stream, w);
            w
        }
    };
    let Gemm { shape, lhs_ptr, rhs_ptr, out_ptr } = g.gemm;
    let c_ptr = g.residual_ptr.unwrap_or(out_ptr);
    let key = LtShape { gemm: shape, bias: g.bias_ptr.is_some(), residual: g.residual_ptr.is_some(), align: [rhs_ptr, lhs_ptr, c_ptr, out_ptr].map(alignment) };
    if !lt.plans.contains_key(&key) {
        if lt.plans.len() >= PROVEN_MAX {
            lt.plans.clear();
        }
        let descs = LtDescs::new(&key)?;
        let algo = descs.heuristic(lt.handle, &key)?;
        lt.plans.insert(key, LtPlan { descs, algo });
    }
    let lt = &*lt;
    let LtPlan { descs, algo } = &lt.plans[&key];
    // cuBLASLt reads the descriptor when the product is enqueued: the next product may set
    // another bias into it.
    if let Some(bias) = g.bias_ptr {
        descs.set_bias(bias)?;
    }
    let (alpha, beta) = (1.0f32, if g.residual_ptr.is_some() { 1.0f32 } else { 0.0 });
    let ptr = |address: u64| address as *const c_void;
    // SAFETY: the caller's, as for `Gemm::run`: live allocations of the layouts `descs`
    // describes (the bias one value per output column), enqueued on a stream of the context the
    // handle and workspace belong to.
    #[rustfmt::skip]
    let status = unsafe {
        lt_result::matmul(
            lt.handle, descs.desc, (&alpha as *const f32).cast(), (&beta as *const f32).cast(),
            ptr(rhs_ptr), descs.a, ptr(lhs_ptr), descs.b, ptr(c_ptr), descs.c, out_ptr as *mut c_void, descs.c,
            algo, workspace as *mut c_void, LT_WORKSPACE, stream as lt::cudaStream_t,
        )
    };
    status.map_err(|e| format!("cublasLtMatmul m, k, n = {}, {}, {} ({:?}): {e:?}", shape.m, shape.k, shape.n, shape.data_type))
}

/// A cuBLASLt product's descriptors, destroyed on drop: the operation (f32 accumulation and
/// scales; the weight transposed where its columns are contiguous; the bias epilogue) and the
/// column-major layouts of A (the weight), B (the activations) and C = D (the output, the
/// residual), as [`Gemm::run`] hands them to cuBLAS.
struct LtDescs {
    desc: lt::cublasLtMatmulDesc_t,
    a: lt::cublasLtMatrixLayout_t,
    b: lt::cublasLtMatrixLayout_t,
    c: lt::cublasLtMatrixLayout_t,
}

impl LtDescs {
    fn new(key: &LtShape) -> Result<Self, String> {
        use lt::cublasLtMatmulDescAttributes_t::{CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_MATMUL_DESC_TRANSA};
        let GemmShape { data_type, op_rhs, m, k, n, a, b, c, .. } = key.gemm;
        let failed = |what: &'static str| move |e: lt_result::CublasError| format!("cuBLASLt {what}: {e:?}");
        let ty = match data_type {
            sys::cudaDataType::CUDA_R_16BF => lt::cudaDataType::CUDA_R_16BF,
            sys::cudaDataType::CUDA_R_16F => lt::cudaDataType::CUDA_R_16F,
            sys::cudaDataType::CUDA_R_32F => lt::cudaDataType::CUDA_R_32F,
            other => return Err(format!("cuBLASLt: data type {other:?}")),
        };
        let desc = lt_result::create_matmul_desc(lt::cublasComputeType_t::CUBLAS_COMPUTE_32F, lt::cudaDataType::CUDA_R_32F).map_err(failed("descriptor"))?;
        let mut descs = Self { desc, a: std::ptr::null_mut(), b: std::ptr::null_mut(), c: std::ptr::null_mut() };
        let transposed = op_rhs == sys::cublasOperation_t::CUBLAS_OP_T;
        let (a_rows, a_cols) = if transposed { (k, n) } else { (n, k) };
        let layout = |rows: usize, cols: usize, ld: usize| lt_result::create_matrix_layout(ty, rows as u64, cols as u64, ld as i64).map_err(failed("layout"));
        descs.a = layout(a_rows, a_cols, b.ld)?;
        descs.b = layout(k, m, a.ld)?;
        descs.c = layout(n, m, c.ld)?;
        let op = op_rhs as i32;
        let epilogue = if key.bias { lt::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS } else { lt::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT };
        // SAFETY: `desc` is live; each value has the attribute's type (int32, the epilogue enum).
        unsafe {
            lt_result::set_matmul_desc_attribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, (&op as *const i32).cast(), size_of::<i32>()).map_err(failed("transa"))?;
            lt_result::set_matmul_desc_attribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, (&epilogue as *const lt::cublasLtEpilogue_t).cast(), size_of_val(&epilogue)).map_err(failed("epilogue"))?;
        }
        Ok(descs)
    }

    /// The bias epilogue's vector (one value per output column, the output's dtype).
    fn set_bias(&self, address: u64) -> Result<(), String> {
        let ptr = address as *const c_void;
        // SAFETY: `desc` is live; the value is a device pointer, the attribute's type.
        unsafe { lt_result::set_matmul_desc_attribute(self.desc, lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER, (&ptr as *const *const c_void).cast(), size_of::<*const c_void>()) }
            .map_err(|e| format!("cuBLASLt bias: {e:?}"))
    }

    /// The heuristic's fastest algorithm for `key` within [`LT_WORKSPACE`] and `key`'s alignments.
    fn heuristic(&self, handle: lt::cublasLtHandle_t, key: &LtShape) -> Result<lt::cublasLtMatmulAlgo_t, String> {
        use lt::cublasLtMatmulPreferenceAttributes_t as Pref;
        let pref = lt_result::create_matmul_pref().map_err(|e| format!("cuBLASLt preference: {e:?}"))?;
        let workspace = LT_WORKSPACE as u64;
        let aligns = [Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES];
        // SAFETY: `pref` and the descriptors are live; each value has its attribute's type
        // (uint64 bytes, uint32 alignments).
        let found = unsafe {
            lt_result::set_matmul_pref_attribute(pref, Pref::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, (&workspace as *const u64).cast(), size_of::<u64>())
                .and_then(|()| aligns.iter().zip(&key.align).try_for_each(|(&attr, align)| lt_result::set_matmul_pref_attribute(pref, attr, (align as *const u32).cast(), size_of::<u32>())))
                .and_then(|()| lt_result::get_matmul_algo_heuristic(handle, self.desc, self.a, self.b, self.c, self.c, pref))
        };
        // SAFETY: created above, destroyed once.
        let _ = unsafe { lt_result::destroy_matmul_pref(pref) };
        found.map(|h| h.algo).map_err(|e| format!("cuBLASLt heuristic for {key:?}: {e:?}"))
    }
}

impl Drop for LtDescs {
    fn drop(&mut self) {
        // SAFETY: each was created by `new` (or is null) and is destroyed once.
        unsafe {
            for layout in [self.a, self.b, self.c].into_iter().filter(|l| !l.is_null()) {
                let _ = lt_result::destroy_matrix_layout(layout);
            }
            let _ = lt_result::destroy_matmul_desc(self.desc);
        }
    }
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
