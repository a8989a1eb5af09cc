//! MMMU items and their two on-disk forms.
//!
//! # Hugging Face parquet (`MMMU/MMMU` as published)
//! One folder per subject holding `{split}-NNNNN-of-NNNNN.parquet`
//! (`Art/validation-00000-of-00001.parquet`); [`open`] also takes a single parquet file or a
//! folder of parquet files. Columns (all optional strings unless noted): `id`, `question`,
//! `options` (a Python list literal, `"[]"` for open questions), `explanation`, `image_1` …
//! `image_7` (each a struct `{bytes: binary, path: string}` or null), `img_type`, `answer`,
//! `topic_difficulty`, `question_type`, `subfield`. `id`, `question`, `options`, `answer` and
//! `question_type` are required; a file without one of them is an error for that file.
//!
//! # JSONL + image folder (custom sets)
//! One JSON object per line:
//! ```json
//! {"id": "validation_Art_1", "question": "What is in <image 1>?",
//!  "options": ["a cat", "a dog"], "answer": "A", "question_type": "multiple-choice",
//!  "images": {"1": "art/1.png"}, "subject": "Art", "subfield": "…", "explanation": "…",
//!  "img_type": "…", "topic_difficulty": "…"}
//! ```
//! `options` is a JSON list of strings or a Python list literal string; `answer` a string or a list
//! of strings; `images` maps k → a path relative to the image folder (default: the JSONL's folder),
//! or is a list whose i-th entry is `image_{i+1}` (`null` for none). `subject` defaults to the
//! subject in the id. Blank lines are ignored.
//!
//! # Rows that cannot be used
//! A row with a bad options string, a referenced image that is missing or not an image, an empty
//! answer, a multiple-choice question without options, or a wrongly typed column becomes a
//! [`Skipped`] entry with the error; reading goes on.
//!
//! # Order and filters
//! Items are ordered as the official runner concatenates them: subjects in `CAT_SHORT2LONG` order
//! (other subjects after, by name), rows in file order within a subject. The split filter keeps
//! ids that start with `{split}_`; subject names may be long (`Art_Theory`) or short
//! (`art_theory`). `limit_per_subject` applies first, then `limit` (the first N items overall).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Cursor};
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::parse::Gold;
use crate::prompt::image_tags;
use crate::pyliteral::parse_str_list;
use crate::subjects;

/// One encoded image of an item (`image_k`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ItemImage {
    /// The column number: `image_k` ↔ `<image k>`.
    pub k: u32,
    /// Encoded file bytes (PNG, JPEG, …) as stored.
    pub bytes: Vec<u8>,
    /// The `path` field of the HF image struct, or the file path for JSONL sets.
    pub path: Option<String>,
}

/// One MMMU question.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MmmuItem {
    pub id: String,
    /// Long subject name (`Art_Theory`).
    pub subject: String,
    pub question: String,
    /// The parsed option strings (empty for open questions).
    pub options: Vec<String>,
    pub answer: Gold,
    /// As stored: `multiple-choice`, or anything else for open questions.
    pub question_type: String,
    /// The images present in the row, ascending `k`.
    pub images: Vec<ItemImage>,
    pub explanation: Option<String>,
    pub img_type: Option<String>,
    pub topic_difficulty: Option<String>,
    pub subfield: Option<String>,
}

impl MmmuItem {
    /// The official code branches on exactly this string; everything else is open.
    pub fn is_multiple_choice(&self) -> bool {
        self.question_type == "multiple-choice"
    }

    /// `image_k`, if present.
    pub fn image(&self, k: u32) -> Option<&ItemImage> {
        self.images.iter().find(|im| im.k == k)
    }

    /// The images the prompt passes, in order (see [`crate::prompt`]).
    pub fn referenced_images(&self) -> Vec<&ItemImage> {
        image_tags(&self.question, &self.options)
            .into_iter()
            .filter_map(|k| self.image(k))
            .collect()
    }
}

/// A row that could not be used.
#[derive(Debug)]
pub struct Skipped {
    /// The item id when it could be read.
    pub id: Option<String>,
    /// `file` or `file:row`/`file:line`.
    pub location: String,
    pub error: Error,
}

/// Which items to read.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `dev`, `validation` or `test`; `None` keeps all.
    pub split: Option<String>,
    /// Long or short subject names; `None` keeps all.
    pub subjects: Option<Vec<String>>,
    /// At most this many items in total (after ordering).
    pub limit: Option<usize>,
    /// At most this many items per subject.
    pub limit_per_subject: Option<usize>,
}

/// The items read, in evaluation order, and the rows that were skipped.
#[derive(Debug, Default)]
pub struct Dataset {
    pub items: Vec<MmmuItem>,
    pub skipped: Vec<Skipped>,
    /// The files that were read.
    pub files: Vec<PathBuf>,
}

/// A row before validation: the raw column strings and images.
#[derive(Debug, Clone, Default)]
struct RawRow {
    id: Option<String>,
    subject: Option<String>,
    question: Option<String>,
    options: Option<OptionsValue>,
    answer: Option<AnswerValue>,
    question_type: Option<String>,
    images: Vec<ItemImage>,
    explanation: Option<String>,
    img_type: Option<String>,
    topic_difficulty: Option<String>,
    subfield: Option<String>,
}

#[derive(Debug, Clone)]
enum OptionsValue {
    Literal(String),
    List(Vec<String>),
}

#[derive(Debug, Clone)]
enum AnswerValue {
    Text(String),
    List(Vec<String>),
}

/// Reads a dataset: a folder in the HF layout (or of parquet files), a `.parquet` file, or a
/// `.jsonl` file (images relative to its folder).
pub fn open(path: &Path, filter: &Filter) -> Result<Dataset> {
    if path.is_dir() {
        read_parquet_dir(path, filter)
    } else if path.extension().is_some_and(|e| e == "jsonl") {
        read_jsonl(path, None, filter)
    } else {
        read_parquet_files(&[path.to_path_buf()], filter)
    }
}

/// Resolves subject names given on a command line to long names. Unknown names are an error
/// unless `allow_custom` (custom sets may have their own subjects).
pub fn resolve_subjects(names: &[String], allow_custom: bool) -> Result<Vec<String>> {
    names
        .iter()
        .map(|n| match subjects::resolve(n) {
            Some(long) => Ok(long.to_owned()),
            None if allow_custom => Ok(n.clone()),
            None => Err(Error::UnknownSubject { name: n.clone() }),
        })
        .collect()
}

fn wanted_subjects(filter: &Filter) -> Option<Vec<String>> {
    filter.subjects.as_ref().map(|names| {
        names
            .iter()
            .map(|n| {
                subjects::resolve(n)
                    .map(str::to_owned)
                    .unwrap_or_else(|| n.clone())
            })
            .collect()
    })
}

/// Reads the HF layout (`{Subject}/{split}-*.parquet`), or every `*.parquet` directly in `root`.
pub fn read_parquet_dir(root: &Path, filter: &Filter) -> Result<Dataset> {
    let wanted = wanted_subjects(filter);
    // A file named for another split is not read (rows are filtered by id in any case).
    let split_ok = |path: &Path| {
        let name = path.file_name().and_then(|s| s.to_str()).unwrap_or("");
        match &filter.split {
            Some(split) => !KNOWN_SPLITS.iter().any(|s| {
                s != split
                    && (name.starts_with(&format!("{s}-")) || name.starts_with(&format!("{s}_")))
            }),
            None => true,
        }
    };
    let hidden = |p: &Path| {
        p.file_name()
            .and_then(|s| s.to_str())
            .is_some_and(|n| n.starts_with('.'))
    };
    let mut files = Vec::new();
    // Parquet files directly in root (a flat export), then one level of subject folders.
    for entry in sorted_dir(root)? {
        if hidden(&entry) {
            continue;
        }
        if entry.is_file() && is_parquet(&entry) && split_ok(&entry) {
            files.push(entry);
        } else if entry.is_dir() {
            let subject = entry
                .file_name()
                .and_then(|s| s.to_str())
                .unwrap_or("")
                .to_owned();
            if let Some(w) = &wanted
                && !w.contains(&subject)
            {
                continue;
            }
            for f in sorted_dir(&entry)? {
                if f.is_file() && is_parquet(&f) && split_ok(&f) && !hidden(&f) {
                    files.push(f);
                }
            }
        }
    }
    if files.is_empty() {
        let pattern = match &filter.split {
            Some(s) => format!("{{Subject}}/{s}-*.parquet or *.parquet"),
            None => "{Subject}/*.parquet or *.parquet".into(),
        };
        return Err(Error::NoFiles {
            path: root.to_path_buf(),
            pattern,
        });
    }
    read_parquet_files(&files, filter)
}

const KNOWN_SPLITS: [&str; 3] = ["dev", "validation", "test"];

fn is_parquet(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "parquet")
}

fn sorted_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

/// Reads parquet files in MMMU's schema. The subject of each row comes from its id (or the parent
/// folder name when the id does not encode one).
pub fn read_parquet_files(files: &[PathBuf], filter: &Filter) -> Result<Dataset> {
    let mut rows = Vec::new();
    for path in files {
        let folder_subject = path
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|s| s.to_str())
            .filter(|s| subjects::resolve(s).is_some())
            .map(str::to_owned);
        for (i, row) in read_parquet_rows(path)?.into_iter().enumerate() {
            let location = format!("{}:{}", path.display(), i);
            rows.push((
                location,
                row.map(|mut r| {
                    if r.subject.is_none() {
                        r.subject = folder_subject.clone();
                    }
                    r
                }),
            ));
        }
    }
    Ok(finish(rows, files.to_vec(), filter))
}

const REQUIRED: [&str; 5] = ["id", "question", "options", "answer", "question_type"];

/// All rows of one file; a row-level problem is an `Err` in its slot.
fn read_parquet_rows(path: &Path) -> Result<Vec<Result<RawRow>>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| Error::parquet(path, e))?;
    let schema = reader.metadata().file_metadata().schema();
    let names: Vec<&str> = schema.get_fields().iter().map(|f| f.name()).collect();
    for col in REQUIRED {
        if !names.contains(&col) {
            return Err(Error::MissingColumn {
                path: path.to_path_buf(),
                column: col.into(),
            });
        }
    }
    let iter = reader
        .get_row_iter(None)
        .map_err(|e| Error::parquet(path, e))?;
    let mut out = Vec::new();
    for (i, row) in iter.enumerate() {
        // A decoding error inside the file ends the file: later rows cannot be located.
        let row = row.map_err(|e| Error::parquet(path, e))?;
        out.push(raw_from_parquet(path, i, &row));
    }
    Ok(out)
}

fn raw_from_parquet(path: &Path, row_index: usize, row: &Row) -> Result<RawRow> {
    let bad = |column: &str, expected: &'static str| Error::BadColumn {
        path: path.to_path_buf(),
        row: row_index,
        column: column.into(),
        expected,
    };
    let text = |column: &str, f: &Field| -> Result<Option<String>> {
        match f {
            Field::Null => Ok(None),
            Field::Str(s) => Ok(Some(s.clone())),
            Field::Bytes(b) => match std::str::from_utf8(b.data()) {
                Ok(s) => Ok(Some(s.to_owned())),
                Err(_) => Err(bad(column, "UTF-8 text")),
            },
            _ => Err(bad(column, "a string")),
        }
    };
    let mut raw = RawRow::default();
    for (name, field) in row.get_column_iter() {
        match name.as_str() {
            "id" => raw.id = text(name, field)?,
            "question" => raw.question = text(name, field)?,
            "options" => raw.options = text(name, field)?.map(OptionsValue::Literal),
            "answer" => raw.answer = text(name, field)?.map(AnswerValue::Text),
            "question_type" => raw.question_type = text(name, field)?,
            "explanation" => raw.explanation = text(name, field)?,
            "img_type" => raw.img_type = text(name, field)?,
            "topic_difficulty" => raw.topic_difficulty = text(name, field)?,
            "subfield" => raw.subfield = text(name, field)?,
            col if col.starts_with("image_") => {
                let Ok(k) = col["image_".len()..].parse::<u32>() else {
                    continue;
                };
                match field {
                    Field::Null => {}
                    Field::Group(g) => {
                        let mut bytes = None;
                        let mut img_path = None;
                        for (sub, v) in g.get_column_iter() {
                            match (sub.as_str(), v) {
                                ("bytes", Field::Bytes(b)) => bytes = Some(b.data().to_vec()),
                                ("bytes", Field::Null) => {}
                                ("bytes", _) => {
                                    return Err(bad(col, "an image struct with binary `bytes`"));
                                }
                                ("path", v) => img_path = text(col, v)?,
                                _ => {}
                            }
                        }
                        // An image struct without bytes counts as missing.
                        if let Some(bytes) = bytes {
                            raw.images.push(ItemImage {
                                k,
                                bytes,
                                path: img_path,
                            });
                        }
                    }
                    Field::Bytes(b) => raw.images.push(ItemImage {
                        k,
                        bytes: b.data().to_vec(),
                        path: None,
                    }),
                    _ => return Err(bad(col, "an image struct {bytes, path} or null")),
                }
            }
            _ => {}
        }
    }
    Ok(raw)
}

/// Reads a JSONL set (see the module docs). `image_root` defaults to the file's folder.
pub fn read_jsonl(path: &Path, image_root: Option<&Path>, filter: &Filter) -> Result<Dataset> {
    let root = image_root
        .map(Path::to_path_buf)
        .unwrap_or_else(|| path.parent().map(Path::to_path_buf).unwrap_or_default());
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let location = format!("{}:{}", path.display(), i + 1);
        let row = raw_from_json(path, i + 1, &line, &root);
        rows.push((location, row));
    }
    Ok(finish(rows, vec![path.to_path_buf()], filter))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonOptions {
    List(Vec<String>),
    Literal(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonImages {
    Map(BTreeMap<String, Option<String>>),
    List(Vec<Option<String>>),
}

#[derive(Deserialize)]
struct JsonRow {
    id: String,
    question: String,
    #[serde(default)]
    options: Option<JsonOptions>,
    answer: Gold,
    question_type: String,
    #[serde(default)]
    images: Option<JsonImages>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    explanation: Option<String>,
    #[serde(default)]
    img_type: Option<String>,
    #[serde(default)]
    topic_difficulty: Option<String>,
    #[serde(default)]
    subfield: Option<String>,
}

fn raw_from_json(path: &Path, line_no: usize, line: &str, root: &Path) -> Result<RawRow> {
    let row: JsonRow = serde_json::from_str(line).map_err(|e| Error::BadJsonLine {
        path: path.to_path_buf(),
        line: line_no,
        message: e.to_string(),
    })?;
    let mut images = Vec::new();
    let listed: Vec<(String, Option<String>)> = match row.images {
        None => Vec::new(),
        Some(JsonImages::Map(m)) => m.into_iter().collect(),
        Some(JsonImages::List(v)) => v
            .into_iter()
            .enumerate()
            .map(|(i, p)| ((i + 1).to_string(), p))
            .collect(),
    };
    for (key, rel) in listed {
        let Some(rel) = rel else { continue };
        let k: u32 = key
            .trim_start_matches("image_")
            .parse()
            .map_err(|_| Error::BadJsonLine {
                path: path.to_path_buf(),
                line: line_no,
                message: format!("image key {key:?} is not a number"),
            })?;
        let file = root.join(&rel);
        match std::fs::read(&file) {
            Ok(bytes) => images.push(ItemImage {
                k,
                bytes,
                path: Some(rel),
            }),
            // A missing file is a missing image; it only matters if the prompt references it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(file, e)),
        }
    }
    images.sort_by_key(|im| im.k);
    Ok(RawRow {
        id: Some(row.id),
        subject: row.subject,
        question: Some(row.question),
        options: Some(match row.options {
            None => OptionsValue::List(Vec::new()),
            Some(JsonOptions::List(v)) => OptionsValue::List(v),
            Some(JsonOptions::Literal(s)) => OptionsValue::Literal(s),
        }),
        answer: Some(match row.answer {
            Gold::One(s) => AnswerValue::Text(s),
            Gold::Many(v) => AnswerValue::List(v),
        }),
        question_type: Some(row.question_type),
        images,
        explanation: row.explanation,
        img_type: row.img_type,
        topic_difficulty: row.topic_difficulty,
        subfield: row.subfield,
    })
}

/// Validates one raw row into an item.
fn validate(raw: RawRow, location: &str) -> Result<MmmuItem> {
    let id = raw
        .id
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::MissingId {
            location: location.into(),
        })?;
    let subject = match subjects::subject_from_id(&id) {
        s if !s.is_empty() => s,
        _ => raw
            .subject
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or(Error::NoSubject { item: id.clone() })?,
    };
    let options = match raw.options {
        None => Vec::new(),
        Some(OptionsValue::List(v)) => v,
        Some(OptionsValue::Literal(s)) => {
            parse_str_list(&s).map_err(|source| Error::BadOptions {
                item: id.clone(),
                source,
            })?
        }
    };
    let question_type = raw.question_type.unwrap_or_default();
    let answer = match raw.answer {
        None => return Err(Error::EmptyAnswer { item: id }),
        Some(AnswerValue::List(v)) => Gold::Many(v),
        // The HF data stores the three list-valued golds as the string of the list; the official
        // answer_dict_val.json has real lists, which is what its evaluator compares against.
        Some(AnswerValue::Text(s)) => {
            match s.trim_start().starts_with('[').then(|| parse_str_list(&s)) {
                Some(Ok(v)) if !v.is_empty() => Gold::Many(v),
                _ => Gold::One(s),
            }
        }
    };
    if answer.answers().iter().all(|a| a.is_empty()) {
        return Err(Error::EmptyAnswer { item: id });
    }
    let mut item = MmmuItem {
        id,
        subject,
        question: raw.question.unwrap_or_default(),
        options,
        answer,
        question_type,
        images: raw.images,
        explanation: raw.explanation,
        img_type: raw.img_type,
        topic_difficulty: raw.topic_difficulty,
        subfield: raw.subfield,
    };
    item.images.sort_by_key(|im| im.k);
    if item.is_multiple_choice() && item.options.is_empty() {
        return Err(Error::NoOptions { item: item.id });
    }
    for k in image_tags(&item.question, &item.options) {
        let Some(im) = item.image(k) else {
            return Err(Error::MissingImage {
                item: item.id.clone(),
                k,
            });
        };
        // Read the header only: cheap, and catches bytes that are not an image.
        let header = image::ImageReader::new(Cursor::new(&im.bytes))
            .with_guessed_format()
            .map_err(image::ImageError::IoError)
            .and_then(|r| r.into_dimensions());
        if let Err(source) = header {
            return Err(Error::BadImage {
                item: item.id.clone(),
                k,
                source,
            });
        }
    }
    Ok(item)
}

/// Filters, validates, orders and limits.
fn finish(rows: Vec<(String, Result<RawRow>)>, files: Vec<PathBuf>, filter: &Filter) -> Dataset {
    let wanted = wanted_subjects(filter);
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    for (location, row) in rows {
        let raw = match row {
            Ok(raw) => raw,
            Err(error) => {
                skipped.push(Skipped {
                    id: None,
                    location,
                    error,
                });
                continue;
            }
        };
        // Filter before validating, so rows outside the selection are not reported.
        let id = raw.id.clone().unwrap_or_default();
        if let Some(split) = &filter.split
            && !id.is_empty()
            && subjects::split_from_id(&id) != split
        {
            continue;
        }
        if let Some(w) = &wanted {
            let from_id = subjects::subject_from_id(&id);
            let subject = if from_id.is_empty() {
                raw.subject.clone().unwrap_or_default()
            } else {
                from_id
            };
            if !id.is_empty() && !w.contains(&subject) {
                continue;
            }
        }
        match validate(raw, &location) {
            Ok(item) => items.push(item),
            Err(error) => skipped.push(Skipped {
                id: (!id.is_empty()).then_some(id),
                location,
                error,
            }),
        }
    }
    // Evaluation order: subject rank (stable within a subject).
    items.sort_by_key(|it| subjects::order_key(&it.subject));
    if let Some(n) = filter.limit_per_subject {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        items.retain(|it| {
            let c = seen.entry(it.subject.clone()).or_default();
            *c += 1;
            *c <= n
        });
    }
    if let Some(n) = filter.limit {
        items.truncate(n);
    }
    Dataset {
        items,
        skipped,
        files,
    }
}

/// Counts by subject, in evaluation order (for reports).
pub fn subject_counts(items: &[MmmuItem]) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for it in items {
        match out.last_mut() {
            Some((s, n)) if *s == it.subject => *n += 1,
            _ => out.push((it.subject.clone(), 1)),
        }
    }
    out
}

/// A serialisable description of a skipped row (for summaries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipNote {
    pub id: Option<String>,
    pub location: String,
    pub reason: String,
}

impl From<&Skipped> for SkipNote {
    fn from(s: &Skipped) -> Self {
        SkipNote {
            id: s.id.clone(),
            location: s.location.clone(),
            reason: s.error.to_string(),
        }
    }
}
