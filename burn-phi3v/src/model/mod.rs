//! The models, generic over Burn's `Backend`: the Phi-3 decoder, the CLIP tower and the
//! Phi-3-vision wrapper. No request, batching or device logic lives here.

pub mod clip;
pub mod nn;
pub mod paged;
pub mod phi3;
pub mod phi3v;

pub use paged::{PagedBatch, PagedKvCache, PagedRow};
pub use phi3::{DecoderOutput, KvCache, RopeRegime};
pub use phi3v::{CropGrid, Phi3VForCausalLM};
