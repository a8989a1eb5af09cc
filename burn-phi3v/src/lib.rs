//! # burn-phi3v
//!
//! Phi-3-vision-128k-instruct, Phi-3.5-vision-instruct and the Phi-3-mini decoder they share,
//! defined once over Burn's [`Backend`](burn::tensor::backend::Backend) trait, with the
//! device chosen at run time.
//!
//! ## Quick start
//!
//! Load a Hugging Face model folder as it is (`config.json`, `tokenizer.json`,
//! `preprocessor_config.json`, the safetensors shards) on a device, ask about an image, and
//! print the answer as it is generated:
//!
//! ```
//! use std::io::Write;
//! use burn_phi3v::{LoadOptions, Pipeline, Request};
//!
//! # let model_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/models/phi35v-tiny");
//! # let image = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/images/chelsea.png");
//! let pipeline = Pipeline::from_pretrained(model_dir, "cpu", &LoadOptions::default())?;
//! let request = Request::new("What is shown in this image?").image_path(image).max_new_tokens(16);
//! for token in pipeline.stream(&request)? {
//!     print!("{}", token?.text);
//!     std::io::stdout().flush()?;
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! (The examples in these docs run the tiny random-weight checkpoints of the repository's
//! `tests/fixtures/models`: their answers are meaningless.)
//!
//! ## The API in layers
//!
//! - [`Pipeline`]: a model on a device named by a string (`"cpu"`, `"cuda:0"`, `"wgpu"`,
//!   `"vulkan"`) or by a Burn backend type ([`Pipeline::from_pretrained_on`]), answering
//!   [`Request`]s (text, images as paths, bytes or [`image::DynamicImage`], generation
//!   parameters) blocking ([`Pipeline::generate`]), as an iterator ([`Pipeline::stream`]) or
//!   as a batch ([`Pipeline::batch`]).
//! - [`device`]: device strings, the devices present ([`device::available_devices`]) and
//!   [`device::with_device`], which runs code generic over `B: Kernels` on the backend a
//!   string names. [`backends`] names the backend types themselves.
//! - [`kernels`]: [`kernels::Kernels`], the `Backend` extension the model is generic over
//!   (its fused steps: RMSNorm, rotary, SiLU·mul, decode attention, few-row products), with composed defaults
//!   and CubeCL kernels for the GPU backends.
//! - [`Phi3VProcessor`] (chat template, image tags, tokenizer, [`image_processor`]) and
//!   [`generation`] ([`generate`], the step-by-step [`Generator`], sampling, stop conditions).
//! - [`LoadedModel`] and [`Phi3VForCausalLM`]: the typed model and its steps
//!   (`embed_images`, `embed_inputs`, `forward` over a KV cache, `logits`).
//!
//! Errors are one type, [`Phi3vError`], whose variants name the file, tensor, image or device
//! at fault.
//!
//! ## Cargo features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `cpu` | yes | the CPU (Burn's Flex backend): device `cpu`, f32 |
//! | `cuda` | no | NVIDIA GPUs (Burn's CUDA backend; kernels compiled at run time by NVRTC): `cuda[:N]`, bf16 by default, f16, f32 |
//! | `wgpu` | no | Vulkan / Metal / DX12 through wgpu: `wgpu[:N]`, `vulkan[:N]`, f32 (f16 where the adapter has it) |
//! | `rocm` | no | AMD GPUs (Burn's ROCm backend): the backend type and discovery in `backends::rocm`, no device string yet (never run on AMD hardware) |
//! | `plugin` | no | vendor devices through a C-ABI plugin loaded at run time (`backends/plugin`): `plugin:PATH[:N]`, or `plugin` with `PHI3V_PLUGIN` |
//! | `fusion` | no | Burn's kernel fusion on the GPU backends (miscompiles some of this model's shapes in Burn 0.21); the model's kernels run inside the fusion stream |
//! | `cube` | with `cuda`, `wgpu`, `rocm`, `plugin` | the model's CubeCL kernels ([`kernels`]) for every CubeCL backend |
//!
//! The backends are additive: `burn-phi3v = { version = "0.1", features = ["cuda"] }` gives
//! `cpu` and `cuda`; with `default-features = false` only what is named. A device string whose
//! backend is not compiled in is an error ([`device::DeviceError::NotCompiled`]) that names
//! the feature. The crate re-exports [`burn`] and [`image`], so an application needs no other
//! dependency. The backends' code (backend types, device discovery, dtype policy) lives here, in
//! [`backends`]; the crates `phi3v-backend-cpu`, `-cuda`, `-wgpu` and `-rocm` re-export it.

#![deny(missing_docs)]

pub mod backends;
pub mod config;
pub mod device;
pub mod engine;
pub mod error;
pub mod generation;
pub mod image_processor;
pub mod kernel_cache;
pub mod kernels;
pub mod loader;
pub mod model;
pub mod pipeline;
pub mod processor;
pub mod weights;

pub use burn;
pub use image;

pub use config::{GenerationConfig, Phi3VConfig};
pub use device::{DeviceError, DeviceFn, DeviceInfo, with_device};
pub use engine::{Engine, EngineClient, EngineConfig, EngineStats, RequestEvent, RequestHandle};
pub use error::{Phi3vError, Result};
pub use generation::{FinishReason, GenerationOutput, GenerationParams, Generator, SamplingParams, StreamEvent, generate};
pub use loader::{LoadOptions, LoadedModel};
pub use model::Phi3VForCausalLM;
pub use pipeline::{ImageInput, Pipeline, Request, StreamedToken, TokenStream};
pub use processor::{Message, Phi3VProcessor, ProcessedPrompt, apply_chat_template, with_image_tags};
