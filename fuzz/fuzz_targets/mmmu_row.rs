//! MMMU rows: the `options` Python-literal reader, the official answer parsers on any response,
//! and a JSONL row read from disk (`dataset::read_jsonl`). Any input parses or is reported.
#![no_main]

use phi3v_accuracy::dataset::{Filter, read_jsonl};
use phi3v_accuracy::parse::{Gold, choice_letters, eval_multi_choice, eval_open, parse_multi_choice_response, parse_open_response};
use phi3v_accuracy::pyliteral::{parse_str_list, repr_str_list};
use phi3v_accuracy::pyrandom::PyRandom;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Options literal: a parse must survive a repr round trip.
    if let Ok(items) = parse_str_list(text) {
        assert_eq!(parse_str_list(&repr_str_list(&items)).as_ref(), Ok(&items));
    }
    // The response parsers, with the fixed options of a four-choice question.
    let options = ["a cat", "a dog", "12.5", "none"];
    let letters = choice_letters(options.len());
    let index2ans: Vec<(String, String)> = letters.iter().cloned().zip(options.iter().map(|s| s.to_string())).collect();
    let mut rng = PyRandom::new(42);
    let choice = parse_multi_choice_response(text, &letters, &index2ans, &mut rng);
    assert!(letters.contains(&choice.prediction));
    let _ = eval_multi_choice(&Gold::One("A".into()), &choice.prediction);
    let preds = parse_open_response(text);
    let _ = eval_open(&Gold::Many(vec!["12.5".into(), text.into()]), &preds);
    // A JSONL row.
    let dir = std::env::temp_dir().join(format!("phi3v-fuzz-mmmu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let path = dir.join("rows.jsonl");
    std::fs::write(&path, data).expect("write temp file");
    let _ = read_jsonl(&path, Some(&dir), &Filter::default());
});
