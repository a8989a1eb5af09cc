//! MMMU accuracy-parity harness: the model-independent half.
//!
//! - [`dataset`]: MMMU items from the Hugging Face parquet files or a JSONL + image folder, with
//!   split/subject/limit filters; malformed rows are reported, not fatal.
//! - [`prompt`]: the official MMMU prompt text, the referenced images in tag order, and the
//!   Phi-3-vision chat message.
//! - [`parse`]: the official answer parsing and per-item evaluation, reproduced exactly
//!   (with [`pyrandom`] for the random fallback and [`pynum`] for Python's number rules).
//! - [`scoring`]: per-item records (JSONL, resumable), per-subject/discipline/overall accuracy,
//!   the run summary and Markdown report.
//! - [`compare`]: two runs side by side: agreement, paired accuracy delta, option-letter
//!   distribution divergence.
//! - [`runner`]: the [`runner::Answerer`] trait the model side implements, and [`runner::run`].
//! - [`sample`]: a code-drawn sample set in MMMU's parquet format, and the parquet writer.
//!
//! The references are the official evaluator `MMMU-Benchmark/MMMU` (`eval/eval_utils.py`,
//! `eval/data_utils.py`, `mmmu/run_llava.py`, `configs/llava1.5.yaml`) and the project spec
//! `docs/phi3v-spec.md` §6.

pub mod compare;
pub mod dataset;
pub mod error;
pub mod parse;
pub mod prompt;
pub mod pyliteral;
pub mod pynum;
pub mod pyrandom;
pub mod runner;
pub mod sample;
pub mod scoring;
pub mod subjects;

pub use dataset::{Dataset, Filter, MmmuItem};
pub use error::{Error, Result};
pub use runner::{Answer, Answerer, Progress, Query, run};
pub use scoring::{RunMeta, RunRecord, Summary};

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh, empty directory under the system temp dir.
    pub fn temp_dir(name: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "phi3v-accuracy-{}-{}-{}",
            name,
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }
}
