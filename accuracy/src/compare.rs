//! Comparing two runs of the same items (e.g. two devices, or a port against the reference).
//!
//! Items are matched by id. Over the common items:
//! - **agreement**: the share of items whose parsed answers are the same (open answers compared as
//!   sets);
//! - **accuracy delta** `acc_B − acc_A` with a paired 95 % confidence interval: with
//!   `d_i = correct_B,i − correct_A,i ∈ {−1, 0, 1}`, `Δ = mean(d)`, `s² = Σ(d_i − Δ)² / (n − 1)`,
//!   `SE = s / √n`, CI = `Δ ± 1.96 · SE` (normal approximation; reliable when the number of
//!   discordant items is not tiny; no CI below two items). `a_only_correct`/`b_only_correct` are
//!   the discordant counts for an exact McNemar test if wanted;
//! - **option-letter distributions**: for items where both runs give log-probabilities for the
//!   same letters, each side is renormalised over the letters (`p = softmax(logprobs)`) and
//!   `KL(A‖B) = Σ p_A (ln p_A − ln p_B)` (nats) is averaged and maximised; `max |Δ logprob|` is
//!   reported on the raw log-probabilities and on the renormalised ones, and the share of items
//!   whose most likely letter agrees.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::scoring::{RunRecord, md, read_records};

/// One item the runs answered differently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disagreement {
    pub id: String,
    pub subject: String,
    pub gold: String,
    pub parsed_a: String,
    pub parsed_b: String,
    pub correct_a: bool,
    pub correct_b: bool,
    pub raw_a: String,
    pub raw_b: String,
}

/// Statistics of the option-letter distributions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogprobStats {
    /// Items with log-probabilities for the same letters on both sides.
    pub items: usize,
    /// Items with log-probabilities on both sides but different letter sets (not compared).
    pub letter_mismatch: usize,
    pub mean_kl: f64,
    pub max_kl: f64,
    pub max_kl_id: String,
    /// Largest |logprob_A − logprob_B| over all letters, raw values.
    pub max_abs_dlogprob: f64,
    pub max_abs_dlogprob_id: String,
    /// The same after renormalising over the letters.
    pub max_abs_dlogprob_renorm: f64,
    /// Items whose most likely letter is the same on both sides.
    pub argmax_agree: usize,
}

/// Per-subject accuracies over the common items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectDelta {
    pub subject: String,
    pub n: usize,
    pub accuracy_a: f64,
    pub accuracy_b: f64,
    pub agree: usize,
}

/// The comparison of run A and run B.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub run_a: String,
    pub run_b: String,
    pub items_a: usize,
    pub items_b: usize,
    pub common: usize,
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
    /// Items with the same parsed answer.
    pub agree: usize,
    pub agreement: f64,
    pub accuracy_a: f64,
    pub accuracy_b: f64,
    /// accuracy_b − accuracy_a.
    pub delta: f64,
    pub delta_se: Option<f64>,
    pub delta_ci95: Option<[f64; 2]>,
    pub both_correct: usize,
    pub a_only_correct: usize,
    pub b_only_correct: usize,
    pub both_wrong: usize,
    pub fallbacks_a: usize,
    pub fallbacks_b: usize,
    pub per_subject: Vec<SubjectDelta>,
    pub logprobs: Option<LogprobStats>,
    pub disagreements: Vec<Disagreement>,
}

type SubjectKey = (usize, String);
type Tally = (usize, usize, usize, usize);

/// z for a two-sided 95 % interval.
const Z95: f64 = 1.959_963_984_540_054;

/// Compares two sets of records (duplicated ids: the last record wins).
pub fn compare(name_a: &str, a: &[RunRecord], name_b: &str, b: &[RunRecord]) -> Comparison {
    let last_by_id = |rs: &[RunRecord]| -> (Vec<String>, HashMap<String, RunRecord>) {
        let mut order = Vec::new();
        let mut map = HashMap::new();
        for r in rs {
            if map.insert(r.id.clone(), r.clone()).is_none() {
                order.push(r.id.clone());
            }
        }
        (order, map)
    };
    let (order_a, map_a) = last_by_id(a);
    let (order_b, map_b) = last_by_id(b);
    let common: Vec<&String> = order_a
        .iter()
        .filter(|id| map_b.contains_key(*id))
        .collect();
    let only_in_a = order_a
        .iter()
        .filter(|id| !map_b.contains_key(*id))
        .cloned()
        .collect();
    let only_in_b = order_b
        .iter()
        .filter(|id| !map_a.contains_key(*id))
        .cloned()
        .collect();

    let n = common.len();
    let (mut agree, mut both, mut ao, mut bo, mut neither) = (0, 0, 0, 0, 0);
    let mut diffs = Vec::with_capacity(n);
    let mut disagreements = Vec::new();
    // (evaluation-order key, subject) -> (n, correct A, correct B, agree)
    let mut subj: BTreeMap<(SubjectKey, String), Tally> = BTreeMap::new();
    let mut lp = LogprobAcc::default();
    for id in &common {
        let (ra, rb) = (&map_a[*id], &map_b[*id]);
        let same = ra.parsed.same_as(&rb.parsed);
        agree += usize::from(same);
        match (ra.correct, rb.correct) {
            (true, true) => both += 1,
            (true, false) => ao += 1,
            (false, true) => bo += 1,
            (false, false) => neither += 1,
        }
        diffs.push(f64::from(u8::from(rb.correct)) - f64::from(u8::from(ra.correct)));
        let e = subj
            .entry((crate::subjects::order_key(&ra.subject), ra.subject.clone()))
            .or_default();
        e.0 += 1;
        e.1 += usize::from(ra.correct);
        e.2 += usize::from(rb.correct);
        e.3 += usize::from(same);
        if !same {
            disagreements.push(Disagreement {
                id: ra.id.clone(),
                subject: ra.subject.clone(),
                gold: ra.gold.to_string(),
                parsed_a: ra.parsed.to_string(),
                parsed_b: rb.parsed.to_string(),
                correct_a: ra.correct,
                correct_b: rb.correct,
                raw_a: ra.raw_output.clone(),
                raw_b: rb.raw_output.clone(),
            });
        }
        lp.add(&ra.id, &ra.option_logprobs, &rb.option_logprobs);
    }
    let frac = |k: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
    let delta = if n == 0 {
        0.0
    } else {
        diffs.iter().sum::<f64>() / n as f64
    };
    let delta_se = (n >= 2).then(|| {
        let var = diffs.iter().map(|d| (d - delta).powi(2)).sum::<f64>() / (n - 1) as f64;
        (var / n as f64).sqrt()
    });
    let per_subject = subj
        .into_iter()
        .map(|((_, name), (k, ca, cb, ag))| SubjectDelta {
            subject: name,
            n: k,
            accuracy_a: ca as f64 / k as f64,
            accuracy_b: cb as f64 / k as f64,
            agree: ag,
        })
        .collect();
    Comparison {
        run_a: name_a.into(),
        run_b: name_b.into(),
        items_a: order_a.len(),
        items_b: order_b.len(),
        common: n,
        only_in_a,
        only_in_b,
        agree,
        agreement: frac(agree),
        accuracy_a: frac(both + ao),
        accuracy_b: frac(both + bo),
        delta,
        delta_se,
        delta_ci95: delta_se.map(|se| [delta - Z95 * se, delta + Z95 * se]),
        both_correct: both,
        a_only_correct: ao,
        b_only_correct: bo,
        both_wrong: neither,
        fallbacks_a: common.iter().filter(|id| map_a[**id].fallback).count(),
        fallbacks_b: common.iter().filter(|id| map_b[**id].fallback).count(),
        per_subject,
        logprobs: lp.finish(),
        disagreements,
    }
}

#[derive(Default)]
struct LogprobAcc {
    items: usize,
    mismatch: usize,
    kl_sum: f64,
    max_kl: (f64, String),
    max_d: (f64, String),
    max_d_renorm: f64,
    argmax_agree: usize,
}

fn log_softmax(v: &[f64]) -> Vec<f64> {
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return v.to_vec();
    }
    let lse = m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
    v.iter().map(|x| x - lse).collect()
}

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

impl LogprobAcc {
    fn add(&mut self, id: &str, a: &BTreeMap<String, f32>, b: &BTreeMap<String, f32>) {
        if a.is_empty() || b.is_empty() {
            return;
        }
        if a.keys().ne(b.keys()) {
            self.mismatch += 1;
            return;
        }
        let va: Vec<f64> = a.values().map(|&x| f64::from(x)).collect();
        let vb: Vec<f64> = b.values().map(|&x| f64::from(x)).collect();
        let (la, lb) = (log_softmax(&va), log_softmax(&vb));
        let mut kl = 0.0;
        for (x, y) in la.iter().zip(&lb) {
            let p = x.exp();
            if p > 0.0 {
                kl += p * (x - y);
            }
        }
        let d = va
            .iter()
            .zip(&vb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        let dr = la
            .iter()
            .zip(&lb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        self.items += 1;
        self.kl_sum += kl;
        if self.items == 1 || kl > self.max_kl.0 {
            self.max_kl = (kl, id.into());
        }
        if self.items == 1 || d > self.max_d.0 {
            self.max_d = (d, id.into());
        }
        self.max_d_renorm = self.max_d_renorm.max(dr);
        self.argmax_agree += usize::from(argmax(&va) == argmax(&vb));
    }

    fn finish(self) -> Option<LogprobStats> {
        (self.items + self.mismatch > 0).then(|| LogprobStats {
            items: self.items,
            letter_mismatch: self.mismatch,
            mean_kl: if self.items == 0 {
                0.0
            } else {
                self.kl_sum / self.items as f64
            },
            max_kl: self.max_kl.0,
            max_kl_id: self.max_kl.1,
            max_abs_dlogprob: self.max_d.0,
            max_abs_dlogprob_id: self.max_d.1,
            max_abs_dlogprob_renorm: self.max_d_renorm,
            argmax_agree: self.argmax_agree,
        })
    }
}

/// Reads two run JSONL files and compares them (names = the paths).
pub fn compare_files(a: &Path, b: &Path) -> Result<Comparison> {
    let ra = read_records(a)?.records;
    let rb = read_records(b)?.records;
    Ok(compare(
        &a.display().to_string(),
        &ra,
        &b.display().to_string(),
        &rb,
    ))
}

impl Comparison {
    /// The Markdown report.
    pub fn to_markdown(&self) -> String {
        let mut o = String::new();
        o += "# MMMU run comparison\n\n";
        o += &format!(
            "- A: `{}` ({} items)\n- B: `{}` ({} items)\n",
            self.run_a, self.items_a, self.run_b, self.items_b
        );
        o += &format!(
            "- common items: {} (only in A: {}, only in B: {})\n\n",
            self.common,
            self.only_in_a.len(),
            self.only_in_b.len()
        );
        o += "| | value |\n|---|---|\n";
        o += &format!(
            "| parsed-answer agreement | {:.4} ({}/{}) |\n",
            self.agreement, self.agree, self.common
        );
        o += &format!(
            "| accuracy A | {:.4} |\n| accuracy B | {:.4} |\n",
            self.accuracy_a, self.accuracy_b
        );
        o += &format!(
            "| Δ accuracy (B − A) | {:+.4}{} |\n",
            self.delta,
            match self.delta_ci95 {
                Some([lo, hi]) => format!(", paired 95 % CI [{lo:+.4}, {hi:+.4}]"),
                None => String::new(),
            }
        );
        o += &format!(
            "| correct in both / A only / B only / neither | {} / {} / {} / {} |\n",
            self.both_correct, self.a_only_correct, self.b_only_correct, self.both_wrong
        );
        o += &format!(
            "| random fallbacks A / B | {} / {} |\n",
            self.fallbacks_a, self.fallbacks_b
        );
        if let Some(l) = &self.logprobs {
            o += &format!(
                "| option-letter items compared | {} (letter sets differ: {}) |\n",
                l.items, l.letter_mismatch
            );
            o += &format!("| mean KL(A‖B) | {:.3e} nats |\n", l.mean_kl);
            o += &format!(
                "| max KL(A‖B) | {:.3e} nats ({}) |\n",
                l.max_kl, l.max_kl_id
            );
            o += &format!(
                "| max abs Δ logprob (raw) | {:.3e} ({}) |\n",
                l.max_abs_dlogprob, l.max_abs_dlogprob_id
            );
            o += &format!(
                "| max abs Δ logprob (renormalised) | {:.3e} |\n",
                l.max_abs_dlogprob_renorm
            );
            o += &format!(
                "| same most likely letter | {}/{} |\n",
                l.argmax_agree, l.items
            );
        }
        if !self.per_subject.is_empty() {
            o += "\n## Per subject\n\n| subject | n | acc A | acc B | agree |\n|---|---:|---:|---:|---:|\n";
            for s in &self.per_subject {
                o += &format!(
                    "| {} | {} | {:.3} | {:.3} | {} |\n",
                    md(&s.subject),
                    s.n,
                    s.accuracy_a,
                    s.accuracy_b,
                    s.agree
                );
            }
        }
        if !self.disagreements.is_empty() {
            o += "\n## Disagreeing items\n\n| id | gold | A | B | A raw | B raw |\n|---|---|---|---|---|---|\n";
            for d in &self.disagreements {
                let mark = |c: bool| if c { " ✓" } else { "" };
                o += &format!(
                    "| {} | {} | {}{} | {}{} | {} | {} |\n",
                    d.id,
                    md(&d.gold),
                    md(&d.parsed_a),
                    mark(d.correct_a),
                    md(&d.parsed_b),
                    mark(d.correct_b),
                    md(&d.raw_a),
                    md(&d.raw_b)
                );
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::Gold;
    use crate::scoring::{Parsed, Scorer};

    fn rec(id: &str, gold: &str, raw: &str, lp: &[(&str, f32)]) -> RunRecord {
        let mc = gold.len() == 1;
        let mut r = RunRecord {
            id: id.into(),
            subject: crate::subjects::subject_from_id(id),
            question_type: if mc { "multiple-choice" } else { "open" }.into(),
            gold: Gold::One(gold.into()),
            options: if mc {
                ["w", "x", "y", "z"].map(String::from).into()
            } else {
                vec![]
            },
            image_tags: vec![1],
            prompt_tokens: 10,
            generated_tokens: None,
            raw_output: raw.into(),
            parsed: Parsed::Choice(String::new()),
            correct: false,
            fallback: false,
            match_kind: None,
            option_logprobs: lp.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        };
        Scorer::new(42).judge_record(&mut r);
        r
    }

    #[test]
    fn agreement_delta_and_ci() {
        let u = [("A", -0.1f32), ("B", -2.5), ("C", -4.0), ("D", -5.0)];
        let a = vec![
            rec("validation_Art_1", "A", "A", &u),
            rec("validation_Art_2", "B", "A", &u),
            rec("validation_Math_1", "C", "C", &u),
            rec("validation_Math_2", "12", "12", &[]),
            rec("validation_Math_3", "D", "D", &u),
            rec("validation_Math_9", "D", "D", &u),
        ];
        let v = [("A", -3.0f32), ("B", -0.1), ("C", -4.0), ("D", -5.0)];
        let b = vec![
            rec("validation_Art_1", "A", "A", &u),
            rec("validation_Art_2", "B", "B", &v),
            rec("validation_Math_1", "C", "B", &v),
            rec("validation_Math_2", "12", "12 apples", &[]),
            rec("validation_Math_3", "D", "D", &[("A", -0.1), ("B", -2.5)]),
            rec("validation_Custom_1", "A", "A", &u),
        ];
        let c = compare("a", &a, "b", &b);
        assert_eq!(
            (c.common, c.only_in_a.as_slice(), c.only_in_b.as_slice()),
            (
                5,
                &["validation_Math_9".to_string()][..],
                &["validation_Custom_1".to_string()][..]
            )
        );
        // Math_2: {12.0} vs {"12 apples", 12.0}: both correct, not the same answer.
        assert_eq!(c.agree, 2);
        assert_eq!(
            c.disagreements
                .iter()
                .map(|d| d.id.as_str())
                .collect::<Vec<_>>(),
            ["validation_Art_2", "validation_Math_1", "validation_Math_2"]
        );
        assert_eq!(
            (
                c.both_correct,
                c.a_only_correct,
                c.b_only_correct,
                c.both_wrong
            ),
            (3, 1, 1, 0)
        );
        assert!((c.accuracy_a - 0.8).abs() < 1e-12 && (c.accuracy_b - 0.8).abs() < 1e-12);
        // d = [0, 1, -1, 0, 0]: mean 0, s^2 = 2/4, SE = sqrt(0.5/5).
        let se = (0.5f64 / 5.0).sqrt();
        assert_eq!(c.delta, 0.0);
        assert!((c.delta_se.unwrap() - se).abs() < 1e-12);
        let [lo, hi] = c.delta_ci95.unwrap();
        assert!((hi - 1.959963984540054 * se).abs() < 1e-12 && (lo + hi).abs() < 1e-12);

        let l = c.logprobs.as_ref().unwrap();
        assert_eq!((l.items, l.letter_mismatch), (3, 1));
        assert_eq!(l.argmax_agree, 1);
        assert!((l.max_abs_dlogprob - 2.9).abs() < 1e-6);
        assert_eq!(l.max_abs_dlogprob_id, "validation_Art_2");
        // KL of identical distributions is 0; the two changed ones are equal, so mean = 2/3 max.
        assert!(l.max_kl > 1.0);
        assert!((l.mean_kl - l.max_kl * 2.0 / 3.0).abs() < 1e-9);
        let subjects: Vec<&str> = c.per_subject.iter().map(|s| s.subject.as_str()).collect();
        assert_eq!(subjects, ["Art", "Math"]);

        let md = c.to_markdown();
        assert!(
            md.contains("| parsed-answer agreement | 0.4000 (2/5) |"),
            "{md}"
        );
        assert!(md.contains("paired 95 % CI"), "{md}");
        assert!(md.contains("| validation_Art_2 | B | A | B ✓ |"), "{md}");
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Comparison>(&json).unwrap(), c);
    }

    #[test]
    fn kl_matches_a_hand_computation() {
        let a = vec![rec(
            "validation_Art_1",
            "A",
            "A",
            &[("A", (0.5f32).ln()), ("B", (0.5f32).ln())],
        )];
        // B's letters carry extra mass elsewhere: renormalised to 0.25 / 0.75.
        let b = vec![rec(
            "validation_Art_1",
            "A",
            "A",
            &[("A", (0.1f32).ln()), ("B", (0.3f32).ln())],
        )];
        let l = compare("a", &a, "b", &b).logprobs.unwrap();
        let want = 0.5 * (0.5f64 / 0.25).ln() + 0.5 * (0.5f64 / 0.75).ln();
        assert!((l.mean_kl - want).abs() < 1e-6, "{} vs {want}", l.mean_kl);
        assert!((l.max_abs_dlogprob - (5.0f64).ln()).abs() < 1e-6);
        assert!((l.max_abs_dlogprob_renorm - 2f64.ln()).abs() < 1e-6);
        // A single common item: no interval.
        assert!(compare("a", &a, "b", &b).delta_ci95.is_none());
    }
}
