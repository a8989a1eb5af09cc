//! The accuracy loop in one place: fixture readers, named tolerances, and a parity runner
//! written once and run on every backend (tests, and the GPU parity report).

pub mod args;
pub mod conformance;
pub mod devices;
pub mod fixtures;
pub mod parity;
pub mod report;
pub mod rng;
pub mod stages;
pub mod tolerance;

pub use fixtures::{Case, FixtureTensor, fixtures_dir, model_dir};
pub use parity::{CaseReport, JpegSource, run_case, run_case_with};
pub use tolerance::Tolerance;
