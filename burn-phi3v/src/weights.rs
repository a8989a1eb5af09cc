//! Strict safetensors import, as Hugging Face ships checkpoints: one `model.safetensors` or
//! shards listed by `model.safetensors.index.json`.
//!
//! Every shard is memory-mapped and validated (header, offsets, sizes, duplicate names) before
//! any tensor is read; tensors are then converted one at a time to the compute dtype and moved
//! to the device, so host memory never holds a second copy of the checkpoint. The model asks
//! for each tensor by its checkpoint name and shape; [`Weights::finish`] fails if any checkpoint
//! tensor was not consumed. The only tensors a model may leave unread are named, with a reason,
//! through [`Weights::skip`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::{DType, Distribution, Tensor, TensorData, backend::Backend};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde::de::{Deserializer, MapAccess, Visitor};

use crate::error::{Phi3vError, Result};

/// Name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the shard index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Where one tensor lives.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    /// Index into the checkpoint's shard list.
    pub shard: usize,
    /// Stored dtype.
    pub dtype: Dtype,
    /// Stored shape.
    pub shape: Vec<usize>,
}

struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// A validated checkpoint: shard maps plus a name → location table.
pub struct Checkpoint {
    shards: Vec<Shard>,
    entries: BTreeMap<String, TensorEntry>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("shards", &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>())
            .field("tensors", &self.entries.len())
            .finish()
    }
}

/// Collects a JSON object's keys in order, so duplicates (which a map would silently
/// collapse) can be reported.
struct KeyList(Vec<String>);

impl<'de> serde::Deserialize<'de> for KeyList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<KeyList, A::Error> {
                let mut keys = Vec::new();
                while let Some((k, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                    keys.push(k);
                }
                Ok(KeyList(keys))
            }
        }
        d.deserialize_map(V)
    }
}

fn first_duplicate(keys: &[String]) -> Option<&str> {
    let mut seen = HashSet::new();
    keys.iter().find(|k| !seen.insert(k.as_str())).map(String::as_str)
}

impl Checkpoint {
    /// Opens the checkpoint in a Hugging Face model folder.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            Self::open_index(&index)
        } else {
            let single = dir.join(SINGLE_FILE);
            if single.is_file() {
                Self::open_files(&[single])
            } else {
                Err(Phi3vError::io(
                    single,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("neither {SINGLE_FILE} nor {INDEX_FILE} found in {}", dir.display()),
                    ),
                ))
            }
        }
    }

    /// Opens a sharded checkpoint from its `model.safetensors.index.json`.
    pub fn open_index(index_path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index_path).map_err(|e| Phi3vError::io(index_path, e))?;
        let bad = |reason: String| Phi3vError::ShardIndex {
            path: index_path.to_path_buf(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| Phi3vError::Json {
                path: index_path.to_path_buf(),
                source,
            })?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("no `weight_map` object".into()))?;
        // serde_json keeps the last of duplicated keys: list the raw keys to catch duplicates.
        #[derive(serde::Deserialize)]
        struct IndexKeys {
            weight_map: KeyList,
        }
        if let Ok(keys) = serde_json::from_str::<IndexKeys>(&text)
            && let Some(dup) = first_duplicate(&keys.weight_map.0)
        {
            return Err(Phi3vError::DuplicateTensor {
                name: dup.to_string(),
                first: index_path.display().to_string(),
                second: index_path.display().to_string(),
            });
        }
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut files: Vec<String> = Vec::new();
        let mut declared: HashMap<String, String> = HashMap::new();
        for (name, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| bad(format!("weight_map entry `{name}` is not a file name")))?;
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(bad(format!("shard `{file}` is not a plain file name")));
            }
            if !files.iter().any(|f| f == file) {
                files.push(file.to_string());
            }
            declared.insert(name.clone(), file.to_string());
        }
        files.sort();
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        for p in &paths {
            if !p.is_file() {
                return Err(bad(format!("names shard `{}`, which does not exist", p.display())));
            }
        }
        let ckpt = Self::open_files(&paths)?;
        // The index and the shard headers must agree.
        for (name, file) in &declared {
            match ckpt.entries.get(name) {
                None => {
                    return Err(bad(format!("tensor `{name}` is listed in shard `{file}` but not stored there")));
                }
                Some(e) if ckpt.shards[e.shard].path.file_name().and_then(|f| f.to_str()) != Some(file) => {
                    return Err(bad(format!(
                        "tensor `{name}` is listed in shard `{file}` but stored in `{}`",
                        ckpt.shards[e.shard].path.display()
                    )));
                }
                _ => {}
            }
        }
        if let Some(extra) = ckpt.entries.keys().find(|k| !declared.contains_key(*k)) {
            return Err(bad(format!("tensor `{extra}` is stored in a shard but not listed in the index")));
        }
        Ok(ckpt)
    }

    /// Opens and validates the given safetensors files as one checkpoint.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::with_capacity(paths.len());
        let mut entries: BTreeMap<String, TensorEntry> = BTreeMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|e| Phi3vError::io(path, e))?;
            // SAFETY: the map is read-only; a checkpoint modified while loaded is outside the
            // contract of any loader (the same holds for safetensors' own mmap loaders).
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Phi3vError::io(path, e))?;
            let malformed = |reason: String| Phi3vError::Safetensors {
                path: path.clone(),
                reason,
            };
            let header_keys = header_keys(&map).map_err(&malformed)?;
            if let Some(dup) = first_duplicate(&header_keys) {
                return Err(Phi3vError::DuplicateTensor {
                    name: dup.to_string(),
                    first: path.display().to_string(),
                    second: path.display().to_string(),
                });
            }
            let st = SafeTensors::deserialize(&map).map_err(|e| malformed(describe(&e)))?;
            for (name, view) in st.iter() {
                if let Some(prev) = entries.get(name) {
                    return Err(Phi3vError::DuplicateTensor {
                        name: name.to_string(),
                        first: shards
                            .get(prev.shard)
                            .map(|s: &Shard| s.path.display().to_string())
                            .unwrap_or_else(|| path.display().to_string()),
                        second: path.display().to_string(),
                    });
                }
                entries.insert(
                    name.to_string(),
                    TensorEntry {
                        shard: i,
                        dtype: view.dtype(),
                        shape: view.shape().to_vec(),
                    },
                );
            }
            drop(st);
            shards.push(Shard {
                path: path.clone(),
                map,
            });
        }
        Ok(Self { shards, entries })
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Number of stored elements over all tensors (saturating): what the weights take on the
    /// device is this times the compute dtype's size.
    pub fn num_elements(&self) -> u64 {
        self.entries
            .values()
            .map(|e| e.shape.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64)))
            .fold(0u64, u64::saturating_add)
    }

    /// Location, dtype and shape of a tensor.
    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.entries.get(name)
    }

    /// Raw little-endian bytes of a tensor, borrowed from its shard's map.
    fn bytes(&self, name: &str) -> Result<(&[u8], &TensorEntry)> {
        let entry = self.entries.get(name).ok_or_else(|| Phi3vError::MissingTensor {
            name: name.to_string(),
        })?;
        let shard = &self.shards[entry.shard];
        let st = SafeTensors::deserialize(&shard.map).map_err(|e| Phi3vError::Safetensors {
            path: shard.path.clone(),
            reason: describe(&e),
        })?;
        let view = st.tensor(name).map_err(|e| Phi3vError::Safetensors {
            path: shard.path.clone(),
            reason: describe(&e),
        })?;
        Ok((view.data(), entry))
    }
}

fn header_keys(buf: &[u8]) -> std::result::Result<Vec<String>, String> {
    if buf.len() < 8 {
        return Err("file is shorter than the 8-byte header length".into());
    }
    let n = u64::from_le_bytes(buf[..8].try_into().map_err(|_| "short header")?) as usize;
    let end = 8usize
        .checked_add(n)
        .filter(|e| *e <= buf.len())
        .ok_or_else(|| format!("header length {n} runs past the end of the file ({} bytes)", buf.len()))?;
    let header = std::str::from_utf8(&buf[8..end]).map_err(|e| format!("header is not UTF-8: {e}"))?;
    let keys: KeyList = serde_json::from_str(header).map_err(|e| format!("header is not valid JSON: {e}"))?;
    Ok(keys.0.into_iter().filter(|k| k != "__metadata__").collect())
}

fn describe(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer => "data section does not match the header (truncated or padded file)".into(),
        E::InvalidOffset(name) => format!("offsets of tensor `{name}` point outside the data section"),
        E::HeaderTooSmall | E::InvalidHeaderLength => "header length is invalid (truncated file?)".into(),
        E::TensorInvalidInfo => "a tensor's shape and dtype do not match its byte range".into(),
        other => format!("{other:?}"),
    }
}

/// Hands checkpoint tensors to a model being built, converting to the compute dtype and
/// recording which names were consumed.
pub struct Weights<'a, B: Backend> {
    /// `None`: random weights (benchmarks without a checkpoint).
    ckpt: Option<&'a Checkpoint>,
    device: B::Device,
    dtype: DType,
    used: Mutex<HashSet<String>>,
    progress: Option<&'a (dyn Fn(usize, usize) + Sync)>,
    elements: AtomicUsize,
}

impl<'a, B: Backend> Weights<'a, B> {
    /// Starts an import onto `device` with float tensors in `dtype`.
    pub fn new(ckpt: &'a Checkpoint, device: &B::Device, dtype: DType) -> Self {
        Self {
            ckpt: Some(ckpt),
            device: device.clone(),
            dtype,
            used: Mutex::new(HashSet::new()),
            progress: None,
            elements: AtomicUsize::new(0),
        }
    }

    /// Random weights instead of a checkpoint, created on `device` without a host copy (like
    /// optimum-benchmark's `no_weights`): every tensor ~ N(0, 0.02). For benchmarks: outputs
    /// are meaningless but every kernel runs at the real shapes.
    pub fn random(device: &B::Device, dtype: DType) -> Self {
        Self {
            ckpt: None,
            device: device.clone(),
            dtype,
            used: Mutex::new(HashSet::new()),
            progress: None,
            elements: AtomicUsize::new(0),
        }
    }

    /// Calls `f(done, total)` after every tensor (for progress bars).
    pub fn with_progress(mut self, f: &'a (dyn Fn(usize, usize) + Sync)) -> Self {
        self.progress = Some(f);
        self
    }

    /// Number of parameters (tensor elements) handed out so far.
    pub fn elements(&self) -> usize {
        self.elements.load(Ordering::Relaxed)
    }

    /// The device tensors go to.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The float compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Whether the checkpoint stores `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.ckpt.is_some_and(|c| c.entry(name).is_some())
    }

    fn mark(&self, name: &str) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        used.insert(name.to_string());
        if let (Some(f), Some(ckpt)) = (self.progress, self.ckpt) {
            f(used.len(), ckpt.entries.len());
        }
    }

    fn check_shape(&self, name: &str, expected: &[usize]) -> Result<&TensorEntry> {
        let entry = self.ckpt.and_then(|c| c.entry(name)).ok_or_else(|| Phi3vError::MissingTensor {
            name: name.to_string(),
        })?;
        if entry.shape != expected {
            return Err(Phi3vError::ShapeMismatch {
                name: name.to_string(),
                expected: expected.to_vec(),
                found: entry.shape.clone(),
            });
        }
        Ok(entry)
    }

    /// Reads tensor `name`, which must have `shape`, as a float tensor in the compute dtype.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<B, D>> {
        self.elements.fetch_add(shape.iter().product(), Ordering::Relaxed);
        let Some(ckpt) = self.ckpt else {
            let t = Tensor::<B, D>::random(shape, Distribution::Normal(0.0, 0.02), &self.device);
            return Ok(t.cast(self.dtype));
        };
        self.check_shape(name, &shape)?;
        let (bytes, entry) = ckpt.bytes(name)?;
        let dtype = match entry.dtype {
            Dtype::BF16 => DType::BF16,
            Dtype::F16 => DType::F16,
            Dtype::F32 => DType::F32,
            other => {
                return Err(Phi3vError::UnsupportedDtype {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        let data = TensorData::from_bytes_vec(bytes.to_vec(), shape, dtype);
        let t = Tensor::<B, D>::from_data(data, (&self.device, self.dtype));
        self.mark(name);
        Ok(t)
    }

    /// Reads tensor `name` under any of `names` (aliases of one parameter, e.g.
    /// `model.embed_tokens.weight` and `model.vision_embed_tokens.wte.weight`): the first present
    /// is loaded, the others are checked for shape and consumed without a second copy.
    pub fn tensor_aliased<const D: usize>(&self, names: &[&str], shape: [usize; D]) -> Result<Tensor<B, D>> {
        if self.ckpt.is_none() {
            return self.tensor(names.first().copied().unwrap_or_default(), shape);
        }
        let first = names
            .iter()
            .find(|n| self.contains(n))
            .ok_or_else(|| Phi3vError::MissingTensor {
                name: names.first().copied().unwrap_or_default().to_string(),
            })?;
        let t = self.tensor(first, shape)?;
        for n in names.iter().filter(|n| *n != first && self.contains(n)) {
            self.check_shape(n, &shape)?;
            self.mark(n);
        }
        Ok(t)
    }

    /// Consumes a stored tensor the model does not need (checked for shape, never read).
    /// `why` documents the exception at the call site.
    pub fn skip(&self, name: &str, shape: &[usize], why: &'static str) -> Result<()> {
        let _ = why;
        if self.ckpt.is_none() {
            return Ok(());
        }
        self.check_shape(name, shape)?;
        self.mark(name);
        Ok(())
    }

    /// Consumes every stored tensor whose name ends with one of `suffixes` (non-persistent
    /// buffers such as `rotary_emb.inv_freq` that some exports include).
    pub fn skip_buffers(&self, suffixes: &[&str]) {
        let Some(ckpt) = self.ckpt else { return };
        let names: Vec<String> = ckpt
            .names()
            .filter(|n| suffixes.iter().any(|s| n.ends_with(s)))
            .map(str::to_string)
            .collect();
        for n in names {
            self.mark(&n);
        }
    }

    /// Ends the import: every checkpoint tensor must have been consumed.
    pub fn finish(self) -> Result<()> {
        let used = self.used.into_inner().unwrap_or_else(|p| p.into_inner());
        let Some(ckpt) = self.ckpt else { return Ok(()) };
        let unused: Vec<String> = ckpt
            .names()
            .filter(|n| !used.contains(*n))
            .map(str::to_string)
            .collect();
        if unused.is_empty() {
            Ok(())
        } else {
            Err(Phi3vError::UnusedTensors { names: unused })
        }
    }
}
