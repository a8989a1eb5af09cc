//! Generation on the CPU: cached greedy equals the fixtures, batches equal single runs, seeded
//! sampling is reproducible, stop conditions and streaming behave.

use burn::backend::Flex;
use burn::tensor::DType;
use burn_phi3v::image_processor::load_image;
use burn_phi3v::{FinishReason, GenerationParams, LoadedModel, ProcessedPrompt, SamplingParams, generate};
use phi3v_tests::parity::{greedy_by_recompute, pixel_tensor};
use phi3v_tests::{Case, model_dir};

type B = Flex;

fn load(model: &str) -> LoadedModel<B> {
    LoadedModel::load(&model_dir(model), &Default::default(), DType::F32, None).expect("tiny checkpoint")
}

/// A fixture case's prompt, with the reference-decoded pixels for JPEG inputs.
fn case_prompt(m: &LoadedModel<B>, case: &Case) -> ProcessedPrompt {
    let images: Vec<_> = case
        .images
        .iter()
        .map(|f| {
            let f = f.replace(".jpg", ".decoded.png");
            load_image(&Case::image_path(&f), u64::MAX).expect("image")
        })
        .collect();
    m.processor.process(&case.prompt, &images).expect("prompt")
}

fn greedy(n: usize) -> GenerationParams {
    GenerationParams { max_new_tokens: n, ..Default::default() }
}

#[test]
fn cached_greedy_reproduces_every_fixture() {
    for name in Case::names() {
        let case = Case::load(&name);
        let m = load(&case.model);
        let prompt = case_prompt(&m, &case);
        let want: Vec<u32> = case.tensor("greedy_ids").i64().iter().map(|&i| i as u32).collect();
        let out = generate(&m.model, &m.processor, &[&prompt], &[greedy(want.len())], |_| {}).expect("generate");
        assert_eq!(out[0].token_ids, want, "case {name}");
        assert_eq!(out[0].finish_reason, FinishReason::Length);
        assert_eq!(out[0].prompt_tokens, prompt.input_ids.len());
    }
}

#[test]
fn static_batch_equals_single_runs() {
    let m = load("phi35v-tiny");
    let cases = ["coffee_portrait", "two_images", "multi_turn", "tiny_rgba_upscaled"];
    let prompts: Vec<ProcessedPrompt> = cases.iter().map(|c| case_prompt(&m, &Case::load(c))).collect();
    let mut text = m.processor.process("<|user|>\nHello there<|end|>\n<|assistant|>\n", &[]).expect("text prompt");
    text.input_ids.truncate(9);
    let mut all: Vec<&ProcessedPrompt> = prompts.iter().collect();
    all.push(&text);
    let params = [greedy(8), greedy(5), greedy(8), greedy(3), greedy(8)];
    let batch = generate(&m.model, &m.processor, &all, &params, |_| {}).expect("batch");
    for (i, p) in all.iter().enumerate() {
        let alone = generate(&m.model, &m.processor, &[p], &params[i..i + 1], |_| {}).expect("single");
        assert_eq!(batch[i].token_ids, alone[0].token_ids, "row {i}");
        assert_eq!(batch[i].token_ids.len(), params[i].max_new_tokens);
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let m = load("phi3v-tiny");
    let prompt = m.processor.process("<|user|>\nTell me a story.<|end|>\n<|assistant|>\n", &[]).expect("prompt");
    let run = |seed| {
        let p = GenerationParams {
            max_new_tokens: 16,
            sampling: SamplingParams { temperature: 1.5, top_k: 50, top_p: 0.95, seed, ..Default::default() },
            ..Default::default()
        };
        generate(&m.model, &m.processor, &[&prompt], &[p], |_| {}).expect("generate")[0].token_ids.clone()
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11), run(12));
}

#[test]
fn stop_tokens_min_new_tokens_and_stop_strings() {
    let case = Case::load("text_only");
    let m = load(&case.model);
    let prompt = case_prompt(&m, &case);
    let want: Vec<u32> = case.tensor("greedy_ids").i64().iter().map(|&i| i as u32).collect();
    // Stop token: generation ends on it (it is included, as in HF).
    let p = GenerationParams { max_new_tokens: 10, stop_token_ids: vec![want[3]], ..Default::default() };
    let out = &generate(&m.model, &m.processor, &[&prompt], std::slice::from_ref(&p), |_| {}).expect("generate")[0];
    assert_eq!(out.token_ids, want[..4]);
    assert_eq!(out.finish_reason, FinishReason::Stop);
    // min_new_tokens suppresses it until then.
    let p = GenerationParams { min_new_tokens: 6, ..p };
    let out = &generate(&m.model, &m.processor, &[&prompt], &[p], |_| {}).expect("generate")[0];
    assert!(out.token_ids.len() >= 6, "{:?}", out.token_ids);
    assert!(!out.token_ids[..6].contains(&want[3]));
    assert_eq!(out.token_ids[..3], want[..3]);
    // A stop string cuts the text before it.
    let full = m.processor.decode(&want, true).expect("decode");
    let stop = full.split_whitespace().nth(2).expect("3 words").to_string();
    let p = GenerationParams { max_new_tokens: 10, stop_strings: vec![stop.clone()], ..Default::default() };
    let out = &generate(&m.model, &m.processor, &[&prompt], &[p], |_| {}).expect("generate")[0];
    assert_eq!(out.finish_reason, FinishReason::Stop);
    assert!(!out.text.contains(&stop));
    assert!(full.starts_with(out.text.trim_end()), "{:?} vs {full:?}", out.text);
}

#[test]
fn streamed_text_equals_final_text() {
    for name in ["text_only", "coffee_portrait", "two_images"] {
        let case = Case::load(name);
        let m = load(&case.model);
        let prompt = case_prompt(&m, &case);
        let mut streamed = String::new();
        let mut events = 0;
        let out = generate(&m.model, &m.processor, &[&prompt], &[greedy(10)], |e| {
            events += 1;
            streamed.push_str(e.text_delta);
        })
        .expect("generate");
        assert_eq!(streamed, out[0].text, "case {name}");
        assert_eq!(out[0].text, case.json["greedy_text"].as_str().expect("greedy_text"), "case {name}");
        assert!(events >= 10);
    }
}

/// A prompt of 4090 tokens generating 12 crosses original_max_position_embeddings (4096):
/// the cache is recomputed with the long factors, so cached generation equals recomputing
/// the whole sequence at every step.
#[test]
fn longrope_crossing_equals_full_recompute() {
    let m = load("phi3v-tiny");
    let base = m.processor.process("<|user|>\nThe quick brown fox jumps over the lazy dog. <|end|>\n<|assistant|>\n", &[]).expect("p");
    let mut ids = vec![1i64];
    while ids.len() < 4090 {
        ids.extend_from_slice(&base.input_ids[1..]);
    }
    ids.truncate(4090);
    let prompt = ProcessedPrompt { input_ids: ids.clone(), images: Vec::new() };
    let cached = generate(&m.model, &m.processor, &[&prompt], &[greedy(12)], |_| {}).expect("generate");
    let recomputed = greedy_by_recompute(&m.model, &ids, None, 12);
    assert_eq!(cached[0].token_ids, recomputed);
    assert_eq!(m.model.rope_regime(4095), burn_phi3v::model::RopeRegime::Short);
    assert_eq!(m.model.rope_regime(4096), burn_phi3v::model::RopeRegime::Long);
    let _ = pixel_tensor::<B>;
}

#[test]
fn invalid_requests_are_typed_errors() {
    let m = load("phi3v-tiny");
    let prompt = m.processor.process("<|user|>\nHi<|end|>\n<|assistant|>\n", &[]).expect("p");
    let too_long = GenerationParams { max_new_tokens: 200_000, ..Default::default() };
    assert!(matches!(
        generate(&m.model, &m.processor, &[&prompt], &[too_long], |_| {}),
        Err(burn_phi3v::Phi3vError::ContextOverflow { .. })
    ));
    let bad = GenerationParams { sampling: SamplingParams { top_p: 2.0, ..Default::default() }, ..Default::default() };
    assert!(matches!(
        generate(&m.model, &m.processor, &[&prompt], &[bad], |_| {}),
        Err(burn_phi3v::Phi3vError::InvalidParameter { name: "top_p", .. })
    ));
}

/// A prompt fed in two chunks over the KV cache (several queries after a cached prefix) gives
/// the logits of one pass: the causal mask is aligned to the end of the keys.
#[test]
fn chunked_prefill_equals_one_pass() {
    let case = Case::load("text_only");
    let m = load(&case.model);
    let ids = case.tensor("input_ids").i64().to_vec();
    let n = ids.len();
    let regime = [m.model.rope_regime(n - 1)];
    let one = {
        let mut cache = m.model.new_cache();
        let e = m.model.embed_inputs(std::slice::from_ref(&ids), None).unwrap();
        m.model.forward(e, &[(0..n).collect()], &regime, &mut cache, None, false).last_hidden_state
    };
    let mut cache = m.model.new_cache();
    let split = 7;
    let e = m.model.embed_inputs(&[ids[..split].to_vec()], None).unwrap();
    m.model.forward(e, &[(0..split).collect()], &regime, &mut cache, None, false);
    let e = m.model.embed_inputs(&[ids[split..].to_vec()], None).unwrap();
    let two = m.model.forward(e, &[(split..n).collect()], &regime, &mut cache, None, false).last_hidden_state;
    let a = one.narrow(1, split, n - split).into_data().to_vec::<f32>().unwrap();
    let b = two.into_data().to_vec::<f32>().unwrap();
    let err = phi3v_tests::tolerance::max_abs_diff(&a, &b);
    assert!(err <= phi3v_tests::Tolerance::F32.hidden, "chunked prefill differs by {err}");
}
