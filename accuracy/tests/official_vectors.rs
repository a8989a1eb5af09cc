//! Differential test against the official MMMU evaluator: `tests/data/official_vectors.json` holds
//! the outputs of `eval_utils.py` (CPython 3.11) on generated responses; see
//! `tests/data/gen_official_vectors.py`.

use phi3v_accuracy::parse::{
    Gold, Norm, choice_letters, eval_multi_choice, eval_open, extract_numbers, key_subresponses,
    parse_multi_choice_response, parse_open_response,
};
use phi3v_accuracy::pynum::{py_float, py_round2};
use phi3v_accuracy::pyrandom::PyRandom;
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/official_vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("read vectors"))
        .expect("parse vectors")
}

fn bits(v: &Value) -> Option<u64> {
    v.as_str()
        .filter(|s| *s != "nan")
        .map(|s| s.parse().expect("u64 bits"))
}

fn fmt_norm(n: &Norm) -> (String, String) {
    match n {
        Norm::Str(s) => ("s".into(), s.clone()),
        Norm::Num(x) if x.is_nan() => ("n".into(), "nan".into()),
        Norm::Num(x) => ("n".into(), x.to_bits().to_string()),
    }
}

fn gold(v: &Value) -> Gold {
    serde_json::from_value(v.clone()).expect("gold")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

#[test]
fn multiple_choice_matches_official_sequence() {
    let v = vectors();
    // One generator for the whole file, as eval_utils.py seeds once at import.
    let mut rng = PyRandom::new(42);
    let cases = v["multiple_choice"].as_array().unwrap();
    let mut fallbacks = 0;
    for (i, c) in cases.iter().enumerate() {
        let options = strings(&c["options"]);
        let letters = choice_letters(options.len());
        let index2ans: Vec<(String, String)> = letters
            .iter()
            .cloned()
            .zip(options.iter().cloned())
            .collect();
        let response = c["response"].as_str().unwrap();
        let got = parse_multi_choice_response(response, &letters, &index2ans, &mut rng);
        fallbacks += usize::from(got.is_fallback());
        assert_eq!(
            got.prediction,
            c["pred"].as_str().unwrap(),
            "case {i}: {response:?}"
        );
        let g = gold(&c["gold"]);
        assert_eq!(
            eval_multi_choice(&g, &got.prediction),
            c["correct"].as_bool().unwrap(),
            "case {i}"
        );
    }
    assert!(
        cases.len() >= 300 && fallbacks > 20,
        "the vectors must exercise the fallback ({fallbacks})"
    );
}

#[test]
fn open_questions_match_official() {
    let v = vectors();
    for (i, c) in v["open"].as_array().unwrap().iter().enumerate() {
        let response = c["response"].as_str().unwrap();
        let keys = key_subresponses(response);
        assert_eq!(keys, strings(&c["keys"]), "case {i}: keys of {response:?}");
        let numbers: Vec<Vec<String>> = keys.iter().map(|k| extract_numbers(k)).collect();
        let want_numbers: Vec<Vec<String>> = c["numbers"]
            .as_array()
            .unwrap()
            .iter()
            .map(strings)
            .collect();
        assert_eq!(numbers, want_numbers, "case {i}: numbers of {response:?}");

        let preds = parse_open_response(response);
        let mut got: Vec<(String, String)> = preds.iter().map(fmt_norm).collect();
        got.sort();
        let mut want: Vec<(String, String)> = c["preds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap().to_owned(),
                    p[1].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        want.sort();
        assert_eq!(got, want, "case {i}: preds of {response:?}");
        assert_eq!(
            eval_open(&gold(&c["gold"]), &preds),
            c["correct"].as_bool().unwrap(),
            "case {i}: {response:?}"
        );
    }
}

#[test]
fn round_and_float_match_cpython() {
    let v = vectors();
    for pair in v["round2"].as_array().unwrap() {
        let x = f64::from_bits(bits(&pair[0]).unwrap());
        assert_eq!(
            py_round2(x).to_bits(),
            bits(&pair[1]).unwrap(),
            "round({x:?}, 2)"
        );
    }
    for pair in v["float"].as_array().unwrap() {
        let s = pair[0].as_str().unwrap();
        let got = py_float(s);
        match &pair[1] {
            Value::Null => assert_eq!(got, None, "float({s:?}) must fail"),
            b if b.as_str() == Some("nan") => assert!(got.is_some_and(f64::is_nan), "float({s:?})"),
            b => assert_eq!(got.map(f64::to_bits), bits(b), "float({s:?})"),
        }
    }
}
