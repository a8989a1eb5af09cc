//! `run` end to end on the sample set with fake answerers: scoring, files, resume, comparison.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use phi3v_accuracy::compare::compare_files;
use phi3v_accuracy::dataset::{self, Dataset, Filter};
use phi3v_accuracy::error::Error;
use phi3v_accuracy::parse::Gold;
use phi3v_accuracy::runner::{Answer, Answerer, Query, meta_path, report_path, run, summary_path};
use phi3v_accuracy::scoring::{Parsed, RunMeta, Summary, read_records};

#[derive(Debug, thiserror::Error)]
#[error("fake model failure")]
struct Boom;

enum Mode {
    /// Answers the gold (as "(X)" for multiple choice).
    Gold,
    /// Always "(B)".
    AlwaysB,
    /// Something no rule parses.
    Unparseable,
}

struct Fake {
    mode: Mode,
    calls: usize,
    fail_at: Option<usize>,
    seen: Vec<String>,
}

impl Fake {
    fn new(mode: Mode) -> Self {
        Fake {
            mode,
            calls: 0,
            fail_at: None,
            seen: Vec::new(),
        }
    }
}

impl Answerer for Fake {
    type Error = Boom;
    fn answer(&mut self, q: &Query<'_>) -> Result<Answer, Boom> {
        self.calls += 1;
        if self.fail_at == Some(self.calls) {
            return Err(Boom);
        }
        self.seen.push(q.item.id.clone());
        // The query is consistent: one decoded image per placeholder, letters for MC only.
        assert_eq!(q.images.len(), q.prompt.image_tags.len());
        for j in 1..=q.images.len() {
            assert!(
                q.prompt.chat.contains(&format!("<|image_{j}|>\n")),
                "{}",
                q.prompt.chat
            );
        }
        assert!(
            q.prompt.chat.starts_with("<|user|>\n")
                && q.prompt.chat.ends_with("<|end|>\n<|assistant|>\n")
        );
        assert_eq!(q.option_letters.is_empty(), !q.item.is_multiple_choice());
        assert_eq!(q.max_new_tokens, 10);
        let gold = match &q.item.answer {
            Gold::One(a) => a.clone(),
            Gold::Many(v) => v[0].clone(),
        };
        let text = match self.mode {
            Mode::Gold if q.item.is_multiple_choice() => format!("({gold})"),
            Mode::Gold => gold.clone(),
            Mode::AlwaysB => "(B)".into(),
            Mode::Unparseable => "I don't know".into(),
        };
        let option_logprobs: BTreeMap<String, f32> = q
            .option_letters
            .iter()
            .map(|l| (l.clone(), if *l == gold { -0.1 } else { -3.0 }))
            .collect();
        Ok(Answer {
            text,
            prompt_tokens: q.prompt.chat.len() / 4,
            generated_tokens: Some(2),
            option_logprobs,
        })
    }
}

fn sample() -> Dataset {
    dataset::open(
        &common::sample_dir(),
        &Filter {
            split: Some("validation".into()),
            ..Filter::default()
        },
    )
    .unwrap()
}

fn meta() -> RunMeta {
    RunMeta {
        model: "fake".into(),
        num_crops: Some(4),
        dataset: "mmmu_sample".into(),
        ..RunMeta::default()
    }
}

fn run_fake(ds: &Dataset, fake: &mut Fake, out: &Path) -> Result<Summary, Error> {
    run(ds, fake, out, &meta(), |_| {})
}

#[test]
fn gold_answers_score_everything() {
    let ds = sample();
    let dir = common::temp_dir("gold");
    let out = dir.join("gold.jsonl");
    let mut progress = Vec::new();
    let s = run(&ds, &mut Fake::new(Mode::Gold), &out, &meta(), |p| {
        progress.push((p.done, p.total, p.eta.is_some(), p.last_resumed))
    })
    .unwrap();
    assert_eq!(
        (s.items, s.scores.overall.correct, s.scores.random_fallbacks),
        (30, 30, 0)
    );
    assert_eq!((s.generated, s.resumed), (30, 0));
    assert_eq!(s.scores.disciplines.len(), 3); // Art and Design, Science, Tech and Engineering
    assert_eq!(progress.len(), 30);
    assert_eq!(progress.last(), Some(&(30, 30, true, false)));
    // Files: JSONL (one line per item), summary, report, meta.
    let recs = read_records(&out).unwrap().records;
    assert_eq!(recs.len(), 30);
    assert!(recs.iter().all(|r| r.correct && !r.fallback));
    let cs4 = recs
        .iter()
        .find(|r| r.id == "validation_Computer_Science_4")
        .unwrap();
    assert_eq!(cs4.image_tags, [1, 2, 3, 4]);
    assert_eq!(cs4.option_logprobs.len(), 4);
    assert_eq!(cs4.parsed, Parsed::Choice("D".into()));
    let back: Summary =
        serde_json::from_str(&std::fs::read_to_string(summary_path(&out)).unwrap()).unwrap();
    assert_eq!(back.scores, s.scores);
    assert_eq!(back.meta.num_crops, Some(4));
    let md = std::fs::read_to_string(report_path(&out)).unwrap();
    assert!(
        md.contains("## Overall: 1.000 (30/30)") && md.contains("| num_crops | 4 |"),
        "{md}"
    );
    assert!(meta_path(&out).exists());
}

#[test]
fn always_b_and_the_random_fallback() {
    let ds = sample();
    let dir = common::temp_dir("b");
    let s = run_fake(&ds, &mut Fake::new(Mode::AlwaysB), &dir.join("b.jsonl")).unwrap();
    // Seven multiple-choice golds are B; "(b)" matches no open gold.
    assert_eq!(
        (
            s.scores.overall.correct,
            s.scores.multiple_choice.n,
            s.scores.random_fallbacks
        ),
        (7, 18, 0)
    );

    let out = dir.join("unparseable.jsonl");
    let s = run_fake(&ds, &mut Fake::new(Mode::Unparseable), &out).unwrap();
    assert_eq!(s.scores.random_fallbacks, 18);
    // CPython: random.seed(42); choice over each item's letters, in evaluation order.
    let preds: String = read_records(&out)
        .unwrap()
        .records
        .iter()
        .filter_map(|r| match &r.parsed {
            Parsed::Choice(c) => Some(c.clone()),
            Parsed::Open(_) => None,
        })
        .collect();
    assert_eq!(preds, "AACABBAACDAAABBABD");
    assert_eq!(s.scores.overall.correct, 6);
}

#[test]
fn resume_after_interruption_scores_like_one_run() {
    let ds = sample();
    let dir = common::temp_dir("resume");
    let whole = run_fake(
        &ds,
        &mut Fake::new(Mode::Unparseable),
        &dir.join("whole.jsonl"),
    )
    .unwrap();

    let out = dir.join("parts.jsonl");
    let mut first = Fake::new(Mode::Unparseable);
    first.fail_at = Some(10);
    match run_fake(&ds, &mut first, &out) {
        Err(Error::Answerer { item, .. }) => assert_eq!(item, ds.items[9].id),
        other => panic!("expected the answerer error, got {other:?}"),
    }
    assert_eq!(read_records(&out).unwrap().records.len(), 9);
    assert!(!summary_path(&out).exists());
    // An interrupted write leaves half a line.
    let mut text = std::fs::read_to_string(&out).unwrap();
    text.push_str("{\"id\": \"validation_Computer");
    std::fs::write(&out, text).unwrap();

    let mut second = Fake::new(Mode::Unparseable);
    let parts = run_fake(&ds, &mut second, &out).unwrap();
    assert_eq!(second.calls, 21);
    assert_eq!(second.seen.first(), Some(&ds.items[9].id));
    assert_eq!((parts.resumed, parts.generated), (9, 21));
    assert_eq!(parts.scores, whole.scores);
    let a = read_records(&dir.join("whole.jsonl")).unwrap().records;
    let b = read_records(&out).unwrap().records;
    assert_eq!(b.len(), 30);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (&x.id, &x.parsed, x.correct, x.fallback),
            (&y.id, &y.parsed, y.correct, y.fallback)
        );
    }

    // A third run has nothing to do; other settings are refused.
    let mut third = Fake::new(Mode::Unparseable);
    let again = run_fake(&ds, &mut third, &out).unwrap();
    assert_eq!(
        (third.calls, again.resumed, again.scores.clone()),
        (0, 30, whole.scores.clone())
    );
    let other = RunMeta {
        max_new_tokens: 16,
        ..meta()
    };
    match run(&ds, &mut third, &out, &other, |_| {}) {
        Err(Error::ResumeMismatch { field, .. }) => assert_eq!(field, "max_new_tokens"),
        other => panic!("{other:?}"),
    }
    // A narrower selection scores only its items; the other records are counted as ignored.
    let math = dataset::open(
        &common::sample_dir(),
        &Filter {
            split: Some("validation".into()),
            subjects: Some(vec!["math".into()]),
            ..Filter::default()
        },
    )
    .unwrap();
    let s = run_fake(&math, &mut third, &out).unwrap();
    assert_eq!((s.items, s.ignored_records, third.calls), (6, 24, 0));
}

#[test]
fn undecodable_image_is_skipped_at_run_time() {
    let mut ds = sample();
    // A PNG cut short: the header reads, the pixels do not.
    let art1 = &mut ds.items[0];
    assert_eq!(art1.id, "validation_Art_1");
    let bytes = &mut art1.images[0].bytes;
    bytes.truncate(bytes.len() / 2);
    let dir = common::temp_dir("trunc");
    let mut fake = Fake::new(Mode::Gold);
    let s = run_fake(&ds, &mut fake, &dir.join("t.jsonl")).unwrap();
    assert_eq!((s.items, fake.calls, s.skipped.len()), (29, 29, 1));
    assert_eq!(s.skipped[0].id.as_deref(), Some("validation_Art_1"));
    assert!(
        s.skipped[0]
            .reason
            .contains("image_1 is not a decodable image"),
        "{}",
        s.skipped[0].reason
    );
    assert!(
        std::fs::read_to_string(report_path(&dir.join("t.jsonl")))
            .unwrap()
            .contains("## Skipped rows")
    );
}

#[test]
fn compare_two_runs() {
    let ds = sample();
    let dir = common::temp_dir("cmp");
    let (a, b) = (dir.join("gold.jsonl"), dir.join("b.jsonl"));
    run_fake(&ds, &mut Fake::new(Mode::Gold), &a).unwrap();
    run_fake(&ds, &mut Fake::new(Mode::AlwaysB), &b).unwrap();
    let c = compare_files(&a, &b).unwrap();
    assert_eq!(c.common, 30);
    assert_eq!(
        (c.both_correct, c.a_only_correct, c.b_only_correct),
        (7, 23, 0)
    );
    assert_eq!(c.agree, 7);
    assert!((c.delta + 23.0 / 30.0).abs() < 1e-12);
    let [lo, hi] = c.delta_ci95.unwrap();
    assert!(lo < c.delta && c.delta < hi && hi < 0.0);
    // Both runs report the same letter distributions (the fake's), so KL is 0.
    let l = c.logprobs.as_ref().unwrap();
    assert_eq!((l.items, l.max_kl, l.max_abs_dlogprob), (18, 0.0, 0.0));
    assert_eq!(c.disagreements.len(), 23);
    assert!(c.to_markdown().contains("## Disagreeing items"));
}
