//! The crate's one error type. Every variant names the file, field, tensor, token or image at
//! fault, so a user can act on the message alone.

use std::path::PathBuf;

use crate::device::DeviceError;
use crate::image_processor::ImageError;

/// Everything that can go wrong while choosing a device, loading or running a Phi-3-vision model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Phi3vError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A JSON file is not valid JSON.
    #[error("{path} is not valid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser error.
        #[source]
        source: serde_json::Error,
    },

    /// A required configuration field is absent.
    #[error("{file}: missing field `{field}`")]
    MissingField {
        /// The configuration file.
        file: String,
        /// The field's JSON path.
        field: String,
    },

    /// A configuration field has a value this implementation cannot accept.
    #[error("{file}: invalid field `{field}`: {reason}")]
    InvalidField {
        /// The configuration file.
        file: String,
        /// The field's JSON path.
        field: String,
        /// Why the value is refused.
        reason: String,
    },

    /// A safetensors file is malformed (bad header, truncated data, offsets past the end).
    #[error("{path}: malformed safetensors file: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The shard index names a shard that is not there, or is itself malformed.
    #[error("{path}: {reason}")]
    ShardIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The model needs a tensor the checkpoint does not have.
    #[error("checkpoint is missing tensor `{name}`")]
    MissingTensor {
        /// Checkpoint name of the tensor.
        name: String,
    },

    /// The checkpoint holds tensors the model does not use.
    #[error("checkpoint has {} tensor(s) the model does not use: {}", names.len(), names.join(", "))]
    UnusedTensors {
        /// Checkpoint names of the unused tensors.
        names: Vec<String>,
    },

    /// A tensor appears in two shards, or twice in a header.
    #[error("tensor `{name}` is stored more than once ({first} and {second})")]
    DuplicateTensor {
        /// Checkpoint name of the tensor.
        name: String,
        /// Where it was first seen.
        first: String,
        /// Where it was seen again.
        second: String,
    },

    /// A tensor has another shape than the configuration implies.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Checkpoint name of the tensor.
        name: String,
        /// Shape the configuration implies.
        expected: Vec<usize>,
        /// Shape stored in the checkpoint.
        found: Vec<usize>,
    },

    /// A tensor is stored in a dtype that cannot be converted to a float compute dtype.
    #[error("tensor `{name}` has unsupported dtype {dtype} (expected BF16, F16 or F32)")]
    UnsupportedDtype {
        /// Checkpoint name of the tensor.
        name: String,
        /// The stored dtype.
        dtype: String,
    },

    /// The tokenizer could not be loaded or failed on some text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// An image could not be decoded or preprocessed.
    #[error(transparent)]
    Image(#[from] ImageError),

    /// The prompt's image tags do not agree with the images given.
    #[error("prompt/image mismatch: {0}")]
    ImageTags(String),

    /// More images in one prompt than the processor accepts
    /// ([`ImageProcessorConfig::max_images`](crate::image_processor::ImageProcessorConfig::max_images)).
    #[error("{count} images given for one prompt, more than the limit of {max} (image_processor max_images)")]
    TooManyImages {
        /// Images given.
        count: usize,
        /// The limit.
        max: usize,
    },

    /// The checkpoint cannot fit in the device's memory: refused before loading (Burn 0.21's
    /// GPU backends abort on a failed allocation instead of returning an error).
    #[error("{path}: the weights need {needed} bytes in {dtype} but device `{device}` has {available} bytes {kind}")]
    InsufficientMemory {
        /// The model folder.
        path: PathBuf,
        /// The device string.
        device: String,
        /// The compute dtype.
        dtype: String,
        /// Bytes the weights take in that dtype.
        needed: u64,
        /// Bytes the device reports.
        available: u64,
        /// `free` or `in total`: which figure the device reported.
        kind: &'static str,
    },

    /// A token id is outside the vocabulary.
    #[error("token id {id} at position {position} is outside the vocabulary (size {vocab_size})")]
    TokenOutOfRange {
        /// The id.
        id: i64,
        /// Its position in the prompt.
        position: usize,
        /// The vocabulary size.
        vocab_size: usize,
    },

    /// Inputs to a model step are inconsistent (e.g. image features do not fill the placeholders).
    #[error("invalid model input: {0}")]
    InvalidInput(String),

    /// The prompt plus the tokens to generate exceed the model's context.
    #[error("sequence of {requested} tokens exceeds the model's context of {max} tokens")]
    ContextOverflow {
        /// Prompt tokens plus tokens to generate.
        requested: usize,
        /// `max_position_embeddings`.
        max: usize,
    },

    /// Generation parameters are out of range.
    #[error("invalid generation parameter `{name}`: {reason}")]
    InvalidParameter {
        /// Parameter name.
        name: &'static str,
        /// Why the value is refused.
        reason: String,
    },

    /// A request needs more KV-cache slots than the serving engine's whole pool holds, so it
    /// could never run.
    #[error("request needs {requested} KV-cache slots (prompt + max_new_tokens) but the engine's pool holds {capacity}")]
    PoolTooSmall {
        /// Prompt tokens plus tokens to generate.
        requested: usize,
        /// The pool's capacity in tokens.
        capacity: usize,
    },

    /// The serving engine stopped before the request finished (or was stopped when it came).
    #[error("the serving engine has stopped")]
    EngineStopped,

    /// A serving-engine pass failed; every request in flight at the time fails with it.
    #[error("engine step failed: {0}")]
    EngineStep(String),

    /// The device backend failed (e.g. reading a tensor back).
    #[error("backend error: {0}")]
    Backend(String),

    /// The device string or dtype cannot be used (unknown, not compiled in, not present).
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// Result alias for this crate.
pub type Result<T, E = Phi3vError> = std::result::Result<T, E>;

impl Phi3vError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
