//! Per-item records, their JSONL file, scoring and aggregation, and the run summary/report.
//!
//! Scoring follows the official evaluator (§6.7 of the spec): per-subject accuracy, and
//! instance-level (micro) accuracy for each discipline and overall. Multiple-choice responses are
//! parsed with one CPython-compatible generator seeded once (default 42) and consumed in
//! evaluation order, so the random fallbacks match the official run item for item.
//! [`Scorer::rescore`] re-parses a whole run from the raw outputs in that order; a resumed run
//! therefore scores exactly like an uninterrupted one.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::SkipNote;
use crate::error::{Error, Result};
use crate::parse::{
    ChoiceParse, Gold, MatchKind, Norm, choice_letters, eval_multi_choice, eval_open,
    parse_multi_choice_response, parse_open_response,
};
use crate::prompt::PromptOptions;
use crate::pyrandom::PyRandom;
use crate::subjects;

/// The parsed prediction: a letter for multiple choice, the normalised prediction list for open
/// questions. JSON: a string or an array.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Parsed {
    Choice(String),
    Open(Vec<Norm>),
}

impl Parsed {
    /// Same prediction (open lists compared as sets, with Python `==` on elements).
    pub fn same_as(&self, other: &Parsed) -> bool {
        match (self, other) {
            (Parsed::Choice(a), Parsed::Choice(b)) => a == b,
            (Parsed::Open(a), Parsed::Open(b)) => {
                let eq = |x: &Norm, y: &Norm| match (x, y) {
                    (Norm::Str(p), Norm::Str(q)) => p == q,
                    (Norm::Num(p), Norm::Num(q)) => p == q || (p.is_nan() && q.is_nan()),
                    _ => false,
                };
                a.iter().all(|x| b.iter().any(|y| eq(x, y)))
                    && b.iter().all(|y| a.iter().any(|x| eq(x, y)))
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Parsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Parsed::Choice(s) => f.write_str(s),
            Parsed::Open(v) => {
                let parts: Vec<String> = v
                    .iter()
                    .map(|n| match n {
                        Norm::Str(s) => format!("{s:?}"),
                        Norm::Num(x) => format!("{x:?}"),
                    })
                    .collect();
                write!(f, "{{{}}}", parts.join(", "))
            }
        }
    }
}

/// One line of a run's JSONL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub subject: String,
    /// `multiple-choice` or the open label as stored.
    pub question_type: String,
    pub gold: Gold,
    /// The options (so a run file can be re-scored without the dataset).
    #[serde(default)]
    pub options: Vec<String>,
    /// `k` of the images passed, in order.
    #[serde(default)]
    pub image_tags: Vec<u32>,
    /// Prompt length in tokens, image tokens included.
    pub prompt_tokens: usize,
    /// Generated tokens, when the answerer reports them.
    #[serde(default)]
    pub generated_tokens: Option<usize>,
    /// The decoded generation (special tokens skipped).
    pub raw_output: String,
    pub parsed: Parsed,
    pub correct: bool,
    /// True when the multiple-choice prediction came from the random fallback.
    pub fallback: bool,
    /// Which parsing rule decided (multiple choice only).
    #[serde(default)]
    pub match_kind: Option<MatchKind>,
    /// Log-probabilities of the option letters at the first generated position (letter → logprob;
    /// empty for open questions or when the answerer does not provide them).
    #[serde(default)]
    pub option_logprobs: BTreeMap<String, f32>,
}

impl RunRecord {
    pub fn is_multiple_choice(&self) -> bool {
        self.question_type == "multiple-choice"
    }
}

/// The parse and verdict for one response.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub parsed: Parsed,
    pub correct: bool,
    pub match_kind: Option<MatchKind>,
}

impl Verdict {
    pub fn fallback(&self) -> bool {
        self.match_kind == Some(MatchKind::Random)
    }
}

/// Parses and judges responses in evaluation order with one seeded generator.
#[derive(Debug, Clone)]
pub struct Scorer {
    rng: PyRandom,
}

impl Scorer {
    /// `random.seed(seed)` once, as `eval_utils.py` does at import (seed 42).
    pub fn new(seed: u64) -> Self {
        Scorer {
            rng: PyRandom::new(i128::from(seed)),
        }
    }

    /// Parses one response. Multiple choice: `parse_multi_choice_response` then
    /// `eval_multi_choice`; open: `parse_open_response` then `eval_open`.
    pub fn judge(
        &mut self,
        multiple_choice: bool,
        options: &[String],
        gold: &Gold,
        response: &str,
    ) -> Verdict {
        if multiple_choice {
            let letters = choice_letters(options.len());
            let index2ans: Vec<(String, String)> = letters
                .iter()
                .cloned()
                .zip(options.iter().cloned())
                .collect();
            let ChoiceParse { prediction, kind } =
                parse_multi_choice_response(response, &letters, &index2ans, &mut self.rng);
            let correct = eval_multi_choice(gold, &prediction);
            Verdict {
                parsed: Parsed::Choice(prediction),
                correct,
                match_kind: Some(kind),
            }
        } else {
            let preds = parse_open_response(response);
            let correct = eval_open(gold, &preds);
            Verdict {
                parsed: Parsed::Open(preds),
                correct,
                match_kind: None,
            }
        }
    }

    /// Re-judges a record from its raw output, options and gold, updating it in place.
    pub fn judge_record(&mut self, rec: &mut RunRecord) {
        let v = self.judge(
            rec.is_multiple_choice(),
            &rec.options,
            &rec.gold,
            &rec.raw_output,
        );
        rec.fallback = v.fallback();
        rec.parsed = v.parsed;
        rec.correct = v.correct;
        rec.match_kind = v.match_kind;
    }

    /// Re-scores a whole run: records sorted into evaluation order (subject order, file order
    /// within a subject), then judged with a fresh generator.
    pub fn rescore(seed: u64, records: &mut [RunRecord]) {
        records.sort_by_key(|r| subjects::order_key(&r.subject));
        let mut s = Scorer::new(seed);
        for r in records.iter_mut() {
            s.judge_record(r);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Aggregation

/// Accuracy of a group of items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupScore {
    pub name: String,
    pub n: usize,
    pub correct: usize,
    /// correct / n (0 when n = 0, as the official code returns).
    pub accuracy: f64,
}

impl GroupScore {
    fn new(name: &str, n: usize, correct: usize) -> Self {
        GroupScore {
            name: name.into(),
            n,
            correct,
            accuracy: if n == 0 {
                0.0
            } else {
                correct as f64 / n as f64
            },
        }
    }
}

/// One discipline (`Overall-<discipline>` in the official printout) and its subjects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DisciplineScore {
    pub discipline: GroupScore,
    pub subjects: Vec<GroupScore>,
}

/// All accuracies of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub overall: GroupScore,
    /// Disciplines with at least one item, in `DOMAIN_CAT2SUB_CAT` order; subjects in that
    /// table's order.
    pub disciplines: Vec<DisciplineScore>,
    /// Subjects outside MMMU (custom sets), by name; counted in `overall` only.
    pub other_subjects: Vec<GroupScore>,
    pub multiple_choice: GroupScore,
    pub open: GroupScore,
    /// Multiple-choice items decided by `random.choice`.
    pub random_fallbacks: usize,
}

/// Aggregates records (order irrelevant).
pub fn aggregate(records: &[RunRecord]) -> Scores {
    let mut by_subject: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for r in records {
        let e = by_subject.entry(r.subject.as_str()).or_default();
        e.0 += 1;
        e.1 += usize::from(r.correct);
    }
    let mut disciplines = Vec::new();
    for (name, subs) in subjects::DISCIPLINES {
        let scores: Vec<GroupScore> = subs
            .iter()
            .filter_map(|s| by_subject.get(s).map(|&(n, c)| GroupScore::new(s, n, c)))
            .collect();
        if scores.is_empty() {
            continue;
        }
        let (n, c) = scores
            .iter()
            .fold((0, 0), |(n, c), s| (n + s.n, c + s.correct));
        disciplines.push(DisciplineScore {
            discipline: GroupScore::new(name, n, c),
            subjects: scores,
        });
    }
    let other_subjects = by_subject
        .iter()
        .filter(|(s, _)| subjects::discipline(s).is_none())
        .map(|(s, &(n, c))| GroupScore::new(s, n, c))
        .collect();
    let count = |f: &dyn Fn(&RunRecord) -> bool| {
        let sel: Vec<&RunRecord> = records.iter().filter(|r| f(r)).collect();
        (sel.len(), sel.iter().filter(|r| r.correct).count())
    };
    let (n, c) = count(&|_| true);
    let (mn, mc) = count(&|r| r.is_multiple_choice());
    let (on, oc) = count(&|r| !r.is_multiple_choice());
    Scores {
        overall: GroupScore::new("Overall", n, c),
        disciplines,
        other_subjects,
        multiple_choice: GroupScore::new("multiple-choice", mn, mc),
        open: GroupScore::new("open", on, oc),
        random_fallbacks: records.iter().filter(|r| r.fallback).count(),
    }
}

// ---------------------------------------------------------------------------------------------
// Run metadata, summary and report

/// The settings of a run; recorded in the summary and checked when a run resumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    /// Model name or path.
    pub model: String,
    /// Device/backend description (informational; not checked on resume).
    #[serde(default)]
    pub device: String,
    /// Image crops of the processor (changes scores: record it).
    pub num_crops: Option<u32>,
    pub max_new_tokens: usize,
    /// Seed of the random fallback generator (official: 42).
    pub seed: u64,
    pub prompt: PromptOptions,
    /// Where the items came from (informational).
    #[serde(default)]
    pub dataset: String,
    /// Free-form extra settings (dtype, decoding, …).
    #[serde(default)]
    pub notes: BTreeMap<String, String>,
}

impl Default for RunMeta {
    fn default() -> Self {
        RunMeta {
            model: String::new(),
            device: String::new(),
            num_crops: None,
            max_new_tokens: 10,
            seed: 42,
            prompt: PromptOptions::default(),
            dataset: String::new(),
            notes: BTreeMap::new(),
        }
    }
}

/// What a run writes next to its JSONL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub meta: RunMeta,
    pub scores: Scores,
    /// Items scored (= records of the selected items).
    pub items: usize,
    /// Items generated by this invocation.
    pub generated: usize,
    /// Items taken from the existing JSONL.
    pub resumed: usize,
    /// Records in the JSONL for items outside this selection (not scored).
    pub ignored_records: usize,
    /// Rows the dataset reader or the runner could not use.
    pub skipped: Vec<SkipNote>,
    pub mean_prompt_tokens: f64,
    /// Wall time of this invocation.
    pub wall_seconds: f64,
}

impl Summary {
    /// The Markdown report.
    pub fn to_markdown(&self) -> String {
        let m = &self.meta;
        let s = &self.scores;
        let mut o = String::new();
        o += &format!(
            "# MMMU run: {}\n\n",
            if m.model.is_empty() {
                "(unnamed model)"
            } else {
                &m.model
            }
        );
        o += "| setting | value |\n|---|---|\n";
        o += &format!("| dataset | {} |\n", md(&m.dataset));
        if !m.device.is_empty() {
            o += &format!("| device | {} |\n", md(&m.device));
        }
        o += &format!(
            "| items | {} (generated now {}, resumed {}, skipped rows {}) |\n",
            self.items,
            self.generated,
            self.resumed,
            self.skipped.len()
        );
        o += &format!(
            "| prompt | {} templates, images {:?} |\n",
            m.prompt.templates.name, m.prompt.placement
        );
        o += &format!(
            "| num_crops | {} |\n",
            m.num_crops
                .map_or("(processor default)".into(), |n| n.to_string())
        );
        o += &format!("| max_new_tokens | {} (greedy) |\n", m.max_new_tokens);
        o += &format!("| fallback seed | {} |\n", m.seed);
        for (k, v) in &m.notes {
            o += &format!("| {} | {} |\n", md(k), md(v));
        }
        o += &format!("| mean prompt tokens | {:.1} |\n", self.mean_prompt_tokens);
        o += &format!("| wall time | {:.1} s |\n\n", self.wall_seconds);

        o += &format!(
            "## Overall: {:.3} ({}/{})\n\nmultiple-choice {:.3} ({}/{}), open {:.3} ({}/{}); random fallbacks: {}\n\n",
            s.overall.accuracy,
            s.overall.correct,
            s.overall.n,
            s.multiple_choice.accuracy,
            s.multiple_choice.correct,
            s.multiple_choice.n,
            s.open.accuracy,
            s.open.correct,
            s.open.n,
            s.random_fallbacks
        );
        o += "| discipline / subject | n | correct | accuracy |\n|---|---:|---:|---:|\n";
        for d in &s.disciplines {
            let g = &d.discipline;
            o += &format!(
                "| **Overall-{}** | **{}** | **{}** | **{:.3}** |\n",
                g.name, g.n, g.correct, g.accuracy
            );
            for g in &d.subjects {
                o += &format!(
                    "| {} | {} | {} | {:.3} |\n",
                    g.name, g.n, g.correct, g.accuracy
                );
            }
        }
        for g in &s.other_subjects {
            o += &format!(
                "| {} (not MMMU) | {} | {} | {:.3} |\n",
                md(&g.name),
                g.n,
                g.correct,
                g.accuracy
            );
        }
        o += &format!(
            "| **Overall** | **{}** | **{}** | **{:.3}** |\n",
            s.overall.n, s.overall.correct, s.overall.accuracy
        );
        if !self.skipped.is_empty() {
            o += "\n## Skipped rows\n\n";
            for k in &self.skipped {
                o += &format!(
                    "- {} ({}): {}\n",
                    k.id.as_deref().unwrap_or("?"),
                    md(&k.location),
                    md(&k.reason)
                );
            }
        }
        o
    }
}

/// Escapes `|` and newlines for a Markdown table cell.
pub(crate) fn md(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

// ---------------------------------------------------------------------------------------------
// JSONL

/// The records of a run file.
#[derive(Debug, Default)]
pub struct RecordFile {
    /// Records in file order.
    pub records: Vec<RunRecord>,
    /// Byte length of the complete, valid lines (where appending continues).
    pub valid_len: u64,
    /// True when a truncated or corrupt last line was dropped.
    pub dropped_tail: bool,
}

/// Reads a run JSONL. A bad **last** line (an interrupted write) is dropped; a bad line elsewhere
/// is an error. A missing file reads as empty.
pub fn read_records(path: &Path) -> Result<RecordFile> {
    let mut text = String::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_string(&mut text)
                .map_err(|e| Error::io(path, e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RecordFile::default()),
        Err(e) => return Err(Error::io(path, e)),
    }
    let mut out = RecordFile::default();
    let mut offset = 0usize;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let is_last = i + 1 == lines.len();
        let complete = line.ends_with('\n');
        let body = line.trim_end_matches(['\n', '\r']);
        if body.trim().is_empty() {
            if complete {
                offset += line.len();
                out.valid_len = offset as u64;
            }
            continue;
        }
        match serde_json::from_str::<RunRecord>(body) {
            Ok(r) if complete => {
                out.records.push(r);
                offset += line.len();
                out.valid_len = offset as u64;
            }
            // Only the last line can lack its newline, so `Ok(_)` here is the last line too.
            Ok(_) => out.dropped_tail = true,
            Err(_) if is_last => out.dropped_tail = true,
            Err(e) => {
                return Err(Error::BadJsonLine {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// Appends records to a run JSONL, one flushed line each.
pub struct RecordWriter {
    file: File,
    path: PathBuf,
}

impl RecordWriter {
    /// Opens `path` for appending after cutting it to `valid_len` bytes (dropping a bad tail).
    pub fn open(path: &Path, valid_len: u64) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len != valid_len {
            file.set_len(valid_len).map_err(|e| Error::io(path, e))?;
        }
        Ok(RecordWriter {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn write(&mut self, rec: &RunRecord) -> Result<()> {
        let mut line = serde_json::to_string(rec).map_err(|e| Error::BadJson {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| Error::io(&self.path, e))?;
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }
}

/// Writes `value` as pretty JSON.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::BadJson {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

/// Reads JSON into `T`.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::BadJson {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn rec(id: &str, qt: &str, gold: &str, options: &[&str], raw: &str) -> RunRecord {
        RunRecord {
            id: id.into(),
            subject: subjects::subject_from_id(id),
            question_type: qt.into(),
            gold: Gold::One(gold.into()),
            options: options.iter().map(|s| s.to_string()).collect(),
            image_tags: vec![1],
            prompt_tokens: 100,
            generated_tokens: None,
            raw_output: raw.into(),
            parsed: Parsed::Choice(String::new()),
            correct: false,
            fallback: false,
            match_kind: None,
            option_logprobs: BTreeMap::new(),
        }
    }

    fn hand_made() -> Vec<RunRecord> {
        let abcd = ["w", "x", "y", "z"];
        vec![
            rec("validation_Math_1", "multiple-choice", "A", &abcd, "(A)"),
            rec("validation_Math_2", "multiple-choice", "B", &abcd, "C"),
            rec("validation_Math_3", "open", "12", &[], "The answer is 12."),
            rec("validation_Art_1", "multiple-choice", "A", &abcd, "no idea"), // fallback -> A (first draw)
            rec("validation_Art_2", "multiple-choice", "B", &abcd, "hmm"), // fallback -> A (second draw)
            rec("validation_History_1", "open", "Rome", &[], "rome"),
            rec(
                "validation_Custom_1",
                "multiple-choice",
                "A",
                &["p", "q"],
                "A",
            ),
        ]
    }

    #[test]
    fn rescoring_uses_evaluation_order_and_the_seeded_fallback() {
        let mut records = hand_made();
        Scorer::rescore(42, &mut records);
        let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "validation_Art_1",
                "validation_Art_2",
                "validation_History_1",
                "validation_Math_1",
                "validation_Math_2",
                "validation_Math_3",
                "validation_Custom_1"
            ]
        );
        // seed(42): choice(ABCD) = A, A, C, …
        let art: Vec<(&Parsed, bool, bool)> = records[..2]
            .iter()
            .map(|r| (&r.parsed, r.fallback, r.correct))
            .collect();
        assert_eq!(
            art,
            [
                (&Parsed::Choice("A".into()), true, true),
                (&Parsed::Choice("A".into()), true, false)
            ]
        );
        let correct: Vec<bool> = records.iter().map(|r| r.correct).collect();
        assert_eq!(correct, [true, false, true, true, false, true, true]);
    }

    #[test]
    fn aggregation_is_micro_per_discipline() {
        let mut records = hand_made();
        Scorer::rescore(42, &mut records);
        let s = aggregate(&records);
        assert_eq!((s.overall.n, s.overall.correct), (7, 5));
        assert_eq!(s.random_fallbacks, 2);
        assert_eq!(
            (
                s.multiple_choice.n,
                s.multiple_choice.correct,
                s.open.n,
                s.open.correct
            ),
            (5, 3, 2, 2)
        );
        let names: Vec<&str> = s
            .disciplines
            .iter()
            .map(|d| d.discipline.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["Art and Design", "Science", "Humanities and Social Science"]
        );
        let sci = &s.disciplines[1];
        assert_eq!((sci.discipline.n, sci.discipline.correct), (3, 2));
        assert!((sci.discipline.accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.other_subjects, [GroupScore::new("Custom", 1, 1)]);
        let summary = Summary {
            meta: RunMeta {
                model: "fake".into(),
                num_crops: Some(4),
                ..RunMeta::default()
            },
            scores: s,
            items: 7,
            generated: 7,
            resumed: 0,
            ignored_records: 0,
            skipped: vec![],
            mean_prompt_tokens: 100.0,
            wall_seconds: 0.0,
        };
        let md = summary.to_markdown();
        assert!(md.contains("## Overall: 0.714 (5/7)"), "{md}");
        assert!(
            md.contains("| **Overall-Science** | **3** | **2** | **0.667** |"),
            "{md}"
        );
        assert!(md.contains("| Custom (not MMMU) | 1 | 1 | 1.000 |"), "{md}");
        assert!(md.contains("random fallbacks: 2"));
        let json = serde_json::to_string(&summary).unwrap();
        let back: Summary = serde_json::from_str(&json).unwrap();
        assert_eq!(back, summary);
    }

    #[test]
    fn jsonl_tolerates_a_truncated_last_line_only() {
        let dir = crate::testutil::temp_dir("jsonl");
        let path = dir.join("run.jsonl");
        let mut records = hand_made();
        Scorer::rescore(42, &mut records);
        let mut w = RecordWriter::open(&path, 0).unwrap();
        for r in &records[..3] {
            w.write(r).unwrap();
        }
        drop(w);
        let good_len = std::fs::metadata(&path).unwrap().len();
        // Simulate an interrupted write.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"id\": \"validation_Art_9\", \"subj")
            .unwrap();
        drop(f);
        let rf = read_records(&path).unwrap();
        assert_eq!(rf.records, records[..3]);
        assert!(rf.dropped_tail);
        assert_eq!(rf.valid_len, good_len);
        // Appending cuts the bad tail first.
        let mut w = RecordWriter::open(&path, rf.valid_len).unwrap();
        w.write(&records[3]).unwrap();
        drop(w);
        let rf = read_records(&path).unwrap();
        assert_eq!(rf.records, records[..4]);
        assert!(!rf.dropped_tail);
        // A bad line in the middle is an error naming the line.
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines[1] = "{not json";
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        match read_records(&path) {
            Err(Error::BadJsonLine { line, .. }) => assert_eq!(line, 2),
            other => panic!("{other:?}"),
        }
        assert!(
            read_records(&dir.join("missing.jsonl"))
                .unwrap()
                .records
                .is_empty()
        );
    }

    #[test]
    fn record_json_shape() {
        let mut r = rec("validation_Math_3", "open", "12", &[], "The answer is 12.");
        Scorer::new(42).judge_record(&mut r);
        r.option_logprobs.insert("A".into(), -0.5);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for key in [
            "id",
            "prompt_tokens",
            "raw_output",
            "parsed",
            "correct",
            "option_logprobs",
            "fallback",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["parsed"], serde_json::json!([12.0]));
        let back: RunRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
