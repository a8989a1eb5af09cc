//! The crate's one error type. Every variant names the file, item, column or line at fault.

use std::path::PathBuf;

/// Errors of the MMMU harness.
///
/// Data problems in single rows (a bad options string, a missing image) are reported as values of
/// this type inside [`crate::dataset::Skipped`] and do not stop a read; only problems with whole
/// files (unreadable, wrong schema) are returned as `Err`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: parquet: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },

    #[error("{path}: required column `{column}` is missing")]
    MissingColumn { path: PathBuf, column: String },

    #[error("{path}, row {row}: column `{column}`: expected {expected}")]
    BadColumn {
        path: PathBuf,
        row: usize,
        column: String,
        expected: &'static str,
    },

    #[error("{location}: no usable `id`")]
    MissingId { location: String },

    #[error("item {item}: options are not a Python list of strings: {source}")]
    BadOptions {
        item: String,
        #[source]
        source: crate::pyliteral::LiteralError,
    },

    #[error("item {item}: multiple-choice question without options")]
    NoOptions { item: String },

    #[error("item {item}: answer is empty")]
    EmptyAnswer { item: String },

    #[error("item {item}: `<image {k}>` is referenced but image_{k} is missing")]
    MissingImage { item: String, k: u32 },

    #[error("item {item}: image_{k} is not a decodable image: {source}")]
    BadImage {
        item: String,
        k: u32,
        #[source]
        source: image::ImageError,
    },

    #[error("item {item}: cannot derive the subject from the id")]
    NoSubject { item: String },

    #[error("{path}, line {line}: {message}")]
    BadJsonLine {
        path: PathBuf,
        line: usize,
        message: String,
    },

    #[error("{path}: {message}")]
    BadJson { path: PathBuf, message: String },

    #[error("{path}: no dataset files found (looked for {pattern})")]
    NoFiles { path: PathBuf, pattern: String },

    #[error(
        "unknown subject `{name}` (use a long name such as `Art_Theory` or a short one such as `art_theory`)"
    )]
    UnknownSubject { name: String },

    #[error(
        "{path}: this run was started with other settings ({field}: was {was}, now {now}); use a new output file"
    )]
    ResumeMismatch {
        path: PathBuf,
        field: &'static str,
        was: String,
        now: String,
    },

    #[error("item {item}: the answerer failed: {source}")]
    Answerer {
        item: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("image encoding for {what}: {source}")]
    Encode {
        what: String,
        #[source]
        source: image::ImageError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn parquet(path: impl Into<PathBuf>, source: parquet::errors::ParquetError) -> Self {
        Error::Parquet {
            path: path.into(),
            source,
        }
    }
}
