//! # burn-phi3v
//!
//! Phi-3-vision-128k-instruct, Phi-3.5-vision-instruct and the Phi-3-mini decoder they share,
//! defined once over Burn's [`Backend`](burn::tensor::backend::Backend) trait.

pub mod config;
pub mod device;
pub mod error;
pub mod generation;
pub mod image_processor;
pub mod loader;
pub mod model;
pub mod processor;
pub mod weights;

pub use config::{GenerationConfig, Phi3VConfig};
pub use error::{Phi3vError, Result};
pub use generation::{FinishReason, GenerationOutput, GenerationParams, SamplingParams, StreamEvent, generate};
pub use loader::LoadedModel;
pub use model::Phi3VForCausalLM;
pub use processor::{Message, Phi3VProcessor, ProcessedPrompt, apply_chat_template, with_image_tags};
