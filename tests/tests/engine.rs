//! The serving engine on the CPU: concurrent requests produce what each produces alone through
//! `generate`, a few hundred requests against a small block pool complete (with preemption)
//! and match their solo runs, cancellation frees a request at once, requests that can never
//! run are refused with typed errors, and a sequence crossing LongRoPE's 4096 is recomputed.

use burn_phi3v::kernels::Kernels;
use std::thread;

use burn::backend::Flex;
use burn::tensor::DType;
use burn_phi3v::device::{DeviceInfo, dtype_name};
use burn_phi3v::image_processor::load_image;
use burn_phi3v::{
    Engine, EngineConfig, FinishReason, GenerationParams, LoadedModel, Phi3VProcessor, Phi3vError, ProcessedPrompt, RequestEvent,
    SamplingParams, generate,
};
use phi3v_devices::DeviceFn;
use phi3v_tests::devices::test_targets;
use phi3v_tests::rng::Rng;
use phi3v_tests::{Case, model_dir};

type Cpu = Flex;

fn load_on<B: Kernels>(model: &str, device: &B::Device, dtype: DType) -> LoadedModel<B> {
    LoadedModel::load(&model_dir(model), device, dtype, None).expect("tiny checkpoint")
}

fn load(model: &str) -> LoadedModel<Cpu> {
    load_on(model, &Default::default(), DType::F32)
}

fn engine<B: Kernels>(m: &LoadedModel<B>, config: EngineConfig) -> Engine<B> {
    Engine::new(m.model.clone(), processor(m), config).expect("engine")
}

/// A second processor for the engine (the test keeps `m.processor` for the solo runs).
fn processor<B: Kernels>(m: &LoadedModel<B>) -> Phi3VProcessor {
    Phi3VProcessor::from_dir(&m.dir).expect("processor")
}

/// What `generate` produces for this request alone.
fn solo<B: Kernels>(m: &LoadedModel<B>, prompt: &ProcessedPrompt, params: &GenerationParams) -> Vec<u32> {
    generate(&m.model, &m.processor, &[prompt], std::slice::from_ref(params), |_| {}).expect("solo")[0]
        .token_ids
        .clone()
}

fn greedy(n: usize) -> GenerationParams {
    GenerationParams { max_new_tokens: n, ..Default::default() }
}

fn text_prompt<B: Kernels>(m: &LoadedModel<B>, text: &str) -> ProcessedPrompt {
    m.processor.process(&format!("<|user|>\n{text}<|end|>\n<|assistant|>\n"), &[]).expect("prompt")
}

/// A fixture case's prompt with its images.
fn case_prompt<B: Kernels>(m: &LoadedModel<B>, name: &str) -> ProcessedPrompt {
    let case = Case::load(name);
    let images: Vec<_> = case.images.iter().map(|f| load_image(&Case::image_path(f), u64::MAX).expect("image")).collect();
    m.processor.process(&case.prompt, &images).expect("prompt")
}

/// Prompts with images (several hundred to ~1500 image tokens, prefilled in chunks that cut
/// through the image spans) and text prompts of different lengths, submitted from several
/// threads to an engine on its own thread; every request's tokens equal its solo run, and its
/// streamed text equals its final text. Runs on every test device (`PHI3V_TEST_DEVICES`).
#[test]
fn concurrent_greedy_requests_equal_solo_runs() {
    let mut failures = Vec::new();
    for (spec, dtype) in test_targets() {
        let f = phi3v_devices::with_device(&spec, Some(dtype_name(dtype)), ConcurrentJob).unwrap_or_else(|e| panic!("{e}"));
        failures.extend(f.into_iter().map(|f| format!("{spec} {}: {f}", dtype_name(dtype))));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

struct ConcurrentJob;

impl DeviceFn for ConcurrentJob {
    type Output = Vec<String>;
    fn run<B: Kernels>(self, device: &B::Device, _: &DeviceInfo, dtype: DType) -> Vec<String> {
        let sets: [(&str, &[&str]); 2] = [
            ("phi35v-tiny", &["coffee_portrait", "two_images", "multi_turn", "tiny_rgba_upscaled"]),
            ("phi3v-tiny", &["panorama"]),
        ];
        let mut failures = Vec::new();
        for (model, cases) in sets {
            let m = load_on::<B>(model, device, dtype);
            failures.extend(concurrent_requests(&m, cases).into_iter().map(|f| format!("{model} {f}")));
        }
        failures
    }
}

/// The requests of [`concurrent_greedy_requests_equal_solo_runs`] on one model (the image
/// prompts of `cases`, and text prompts); the failures.
fn concurrent_requests<B: Kernels>(m: &LoadedModel<B>, cases: &[&str]) -> Vec<String> {
    let mut requests: Vec<(ProcessedPrompt, GenerationParams)> = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        requests.push((case_prompt(m, case), greedy(3 + 2 * i)));
    }
    let texts = ["Hi", "What is the capital of France?", "Write a long poem about the sea, the wind and the stars above them all."];
    for (i, t) in texts.iter().enumerate() {
        requests.push((text_prompt(m, t), greedy(12 - 3 * i)));
    }
    // One request stops on the model's stop tokens and uses the repetition penalty.
    requests.push((
        text_prompt(m, "Count to ten."),
        GenerationParams {
            max_new_tokens: 10,
            stop_token_ids: m.stop_token_ids(),
            sampling: SamplingParams { repetition_penalty: 1.3, ..Default::default() },
            ..Default::default()
        },
    ));

    let config = EngineConfig { num_blocks: 512, max_batched_tokens: 96, max_running: 8, ..Default::default() };
    let running = engine(m, config).spawn();
    let client = running.client();
    let per_thread = requests.len().div_ceil(3);
    let outputs: Vec<(usize, Vec<u32>, String, String)> = thread::scope(|s| {
        let workers: Vec<_> = requests
            .chunks(per_thread)
            .enumerate()
            .map(|(t, chunk)| {
                let client = client.clone();
                s.spawn(move || {
                    let handles: Vec<_> = chunk.iter().map(|(p, params)| client.submit(p.clone(), params.clone()).expect("submit")).collect();
                    handles
                        .into_iter()
                        .enumerate()
                        .map(|(i, h)| {
                            let mut streamed = String::new();
                            while let Some(event) = h.recv() {
                                match event {
                                    RequestEvent::Token { text_delta, .. } => streamed.push_str(&text_delta),
                                    RequestEvent::Finished(out) => {
                                        let out = out.expect("request");
                                        return (t * per_thread + i, out.token_ids, out.text, streamed);
                                    }
                                }
                            }
                            panic!("stream ended without an output");
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
    });
    let engine = running.join();
    let mut failures = Vec::new();
    if outputs.len() != requests.len() {
        failures.push(format!("{} outputs for {} requests", outputs.len(), requests.len()));
    }
    for (i, tokens, text, streamed) in outputs {
        let (prompt, params) = &requests[i];
        let want = solo(m, prompt, params);
        if tokens != want {
            failures.push(format!("request {i} ({} prompt tokens): engine {tokens:?}, alone {want:?}", prompt.input_ids.len()));
        }
        if streamed != text {
            failures.push(format!("request {i}: streamed {streamed:?}, final {text:?}"));
        }
    }
    let stats = engine.stats();
    if stats.finished != requests.len() as u64 || stats.used_blocks != 0 || stats.max_pass_tokens > 96 {
        failures.push(format!("engine state after the run: {stats:?}"));
    }
    failures
}

/// 300 requests of random lengths against a pool of 12 blocks (192 tokens; the largest request
/// needs 91): everything completes with its solo tokens, sequences were preempted and resumed
/// by recompute (or from their own blocks still in the prefix cache), a third of them share a
/// 35-token prefix, and the pool never holds more than its blocks.
#[test]
fn stress_small_pool_preempts_and_matches_solo() {
    let m = load("phi3v-tiny");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let requests: Vec<(ProcessedPrompt, GenerationParams)> = (0..300)
        .map(|i| {
            let len = 1 + rng.below(40) as usize;
            let mut ids = vec![1i64];
            if i % 3 == 0 {
                ids.extend((0..34).map(|k| 500 + 7 * k));
            }
            ids.extend((1..len).map(|_| 100 + rng.below(31_000) as i64));
            let mut params = greedy(1 + rng.below(16) as usize);
            if i % 7 == 0 {
                // The host-side path of the sampler: penalty, stop tokens held back.
                params.sampling.repetition_penalty = 1.2;
                params.stop_token_ids = m.stop_token_ids();
                params.min_new_tokens = params.max_new_tokens / 2;
            }
            (ProcessedPrompt { input_ids: ids, images: Vec::new() }, params)
        })
        .collect();
    let config = EngineConfig { block_size: 16, num_blocks: 12, max_batched_tokens: 48, max_running: 16, prefix_caching: true };
    let mut engine = engine(&m, config.clone());
    assert_eq!(engine.capacity_tokens(), 192);
    let handles: Vec<_> = requests.iter().map(|(p, params)| engine.submit(p.clone(), params.clone()).expect("submit")).collect();
    let mut passes = 0;
    while engine.step().expect("step") {
        let stats = engine.stats();
        assert!(stats.used_blocks <= config.num_blocks);
        passes += 1;
        assert!(passes < 100_000, "the engine does not converge");
    }
    let stats = engine.stats();
    assert!(stats.preemptions > 0, "the pool was meant to be too small for the load: {stats:?}");
    assert!(stats.prefix_cached_tokens > 0, "no prompt took a cached prefix: {stats:?}");
    assert!(stats.peak_used_blocks <= config.num_blocks);
    assert_eq!(stats.finished, 300);
    assert_eq!(stats.used_blocks, 0);
    for (i, (h, (prompt, params))) in handles.into_iter().zip(&requests).enumerate() {
        let out = h.wait().expect("output");
        assert_eq!(out.token_ids, solo(&m, prompt, params), "request {i}");
    }
}

/// Three questions about the same image, and the same text prompt twice: with prefix caching
/// the later requests take the blocks of the image and of the shared text from the cache (the
/// first chunk they compute may start inside the image's tokens), and every answer equals its
/// solo run; without it, nothing is taken and more tokens are computed.
#[test]
fn shared_prefixes_are_computed_once_and_answers_are_unchanged() {
    let m = load("phi35v-tiny");
    let case = Case::load("coffee_portrait");
    let images: Vec<_> = case.images.iter().map(|f| load_image(&Case::image_path(f), u64::MAX).expect("image")).collect();
    let ask = |q: &str| m.processor.process(&format!("<|user|>\n<|image_1|>\n{q}<|end|>\n<|assistant|>\n"), &images).expect("prompt");
    let questions = [ask("What is in the cup?"), ask("Describe the colours."), ask("Is anyone there?")];
    let text = text_prompt(&m, "Write a short story about a lighthouse keeper and a storm at sea.");
    let image_tokens: usize = questions[0].images.iter().map(|i| i.num_img_tokens).sum();
    let run = |prefix_caching: bool| {
        let config = EngineConfig { num_blocks: 512, max_batched_tokens: 256, prefix_caching, ..Default::default() };
        let mut engine = engine(&m, config);
        let mut outputs = Vec::new();
        // One after the other, so that each finds the blocks of those before it.
        for prompt in questions.iter().chain([&text, &text]) {
            let h = engine.submit(prompt.clone(), greedy(5)).expect("submit");
            engine.run_until_idle().expect("run");
            outputs.push(h.wait().expect("output").token_ids);
        }
        (outputs, engine.stats())
    };
    let (cached, with) = run(true);
    let (plain, without) = run(false);
    for (i, prompt) in questions.iter().chain([&text, &text]).enumerate() {
        assert_eq!(cached[i], solo(&m, prompt, &greedy(5)), "request {i} with prefix caching");
        assert_eq!(plain[i], cached[i], "request {i}");
    }
    // Each later question takes at least the blocks before the end of the image; the second
    // copy of the text all but its last token's block.
    let block = with.block_size;
    let floor = |n: usize| n / block * block;
    let at_least = 2 * floor(image_tokens) + floor(text.input_ids.len() - 1);
    assert!(with.prefix_cached_tokens as usize >= at_least, "{} cached tokens, expected ≥ {at_least}", with.prefix_cached_tokens);
    assert_eq!(without.prefix_cached_tokens, 0);
    assert_eq!(with.tokens_processed + with.prefix_cached_tokens, without.tokens_processed);
    assert!(with.cached_blocks > 0 && without.cached_blocks == 0);
    assert_eq!(with.used_blocks, 0, "cached blocks nobody holds count as free");
}

/// Image requests admitted in the same pass share vision-tower launches (their images
/// encoded together, then split per request): each answer equals its solo run.
#[test]
fn image_requests_of_one_pass_are_encoded_together_and_split_right() {
    let m = load("phi35v-tiny");
    let prompts: Vec<ProcessedPrompt> = ["coffee_portrait", "two_images", "tiny_rgba_upscaled"].iter().map(|c| case_prompt(&m, c)).collect();
    let tokens: usize = prompts.iter().map(|p| p.input_ids.len()).sum();
    // Every prompt whole in the first pass.
    let config = EngineConfig { num_blocks: 512, max_batched_tokens: tokens, ..Default::default() };
    let mut engine = engine(&m, config);
    let handles: Vec<_> = prompts.iter().map(|p| engine.submit(p.clone(), greedy(4)).expect("submit")).collect();
    assert!(engine.step().expect("first pass"));
    assert_eq!(engine.stats().max_pass_tokens, tokens, "all three prefilled in one pass");
    engine.run_until_idle().expect("run");
    for (i, (h, p)) in handles.into_iter().zip(&prompts).enumerate() {
        assert_eq!(h.wait().expect("output").token_ids, solo(&m, p, &greedy(4)), "request {i}");
    }
}

/// A running request is cancelled after a few tokens and a waiting one before it starts: both
/// end with `Cancelled` and free their blocks; the others are unaffected.
#[test]
fn cancelled_requests_end_and_free_their_blocks() {
    let m = load("phi3v-tiny");
    let config = EngineConfig { num_blocks: 64, max_running: 2, ..Default::default() };
    let mut engine = engine(&m, config);
    let long = text_prompt(&m, "Tell me everything.");
    let short = text_prompt(&m, "Hi");
    let a = engine.submit(long.clone(), greedy(500)).expect("a");
    let b = engine.submit(short.clone(), greedy(6)).expect("b");
    let c = engine.submit(short.clone(), greedy(6)).expect("c"); // waits: two running at most
    for _ in 0..4 {
        assert!(engine.step().expect("step"));
    }
    assert_eq!(engine.stats().waiting, 1);
    c.cancel();
    a.canceller().cancel();
    engine.run_until_idle().expect("run");
    let a = a.wait().expect("a");
    assert_eq!(a.finish_reason, FinishReason::Cancelled);
    assert!(!a.token_ids.is_empty() && a.token_ids.len() < 10, "{} tokens", a.token_ids.len());
    assert_eq!(a.token_ids, solo(&m, &long, &greedy(a.token_ids.len())));
    let c = c.wait().expect("c");
    assert_eq!(c.finish_reason, FinishReason::Cancelled);
    assert!(c.token_ids.is_empty());
    assert_eq!(b.wait().expect("b").token_ids, solo(&m, &short, &greedy(6)));
    let stats = engine.stats();
    assert_eq!((stats.cancelled, stats.finished, stats.used_blocks), (2, 1, 0));
}

/// `warm_up` runs decode passes of 1 to `rows` sequences and the prefill chunk sizes, then
/// leaves the engine as it found it: counters at zero, every block free; a request after it
/// gives what it gives alone, and a request already queued is refused the warm-up (an error,
/// not a lost request).
#[test]
fn warm_up_runs_the_pass_shapes_and_leaves_the_engine_empty() {
    let m = load("phi3v-tiny");
    let config = EngineConfig { num_blocks: 64, max_running: 3, max_batched_tokens: 64, ..Default::default() };
    let mut engine = engine(&m, config);
    let passes = engine.warm_up(5).expect("warm-up");
    // Rows 1..=3 (capped by max_running): a prefill and a decode pass each; chunks of 16, 32, 64.
    assert!(passes >= 3 * 2 + 3, "{passes} passes");
    let stats = engine.stats();
    assert_eq!((stats.finished, stats.used_blocks, stats.running, stats.waiting), (0, 0, 0, 0));
    assert_eq!((stats.peak_used_blocks, stats.preemptions), (0, 0));
    let prompt = text_prompt(&m, "Describe a cat.");
    let h = engine.submit(prompt.clone(), greedy(6)).expect("submit");
    engine.run_until_idle().expect("run");
    assert_eq!(h.wait().expect("request").token_ids, solo(&m, &prompt, &greedy(6)));
    // With a request waiting, warm-up would run it among its own: refused.
    let waiting = engine.submit(prompt.clone(), greedy(2)).expect("submit");
    assert!(matches!(engine.warm_up(2), Err(Phi3vError::InvalidInput(_))));
    engine.run_until_idle().expect("run");
    assert_eq!(waiting.wait().expect("request").token_ids, solo(&m, &prompt, &greedy(2)));
}

/// Requests that could never run are refused when submitted, with typed errors; the engine
/// stays idle and serves a valid request after them.
#[test]
fn impossible_requests_are_typed_errors() {
    let m = load("phi3v-tiny");
    assert!(matches!(
        Engine::new(m.model.clone(), processor(&m), EngineConfig { num_blocks: 0, ..Default::default() }),
        Err(Phi3vError::InvalidParameter { name: "num_blocks", .. })
    ));
    let mut engine = engine(&m, EngineConfig { block_size: 16, num_blocks: 4, ..Default::default() });
    let prompt = text_prompt(&m, "Hi");
    let n = prompt.input_ids.len();
    match engine.submit(prompt.clone(), greedy(64 - n + 1)) {
        Err(Phi3vError::PoolTooSmall { requested, capacity }) => assert_eq!((requested, capacity), (65, 64)),
        other => panic!("expected PoolTooSmall, got {other:?}"),
    }
    assert!(matches!(engine.submit(prompt.clone(), greedy(200_000)), Err(Phi3vError::ContextOverflow { .. })));
    let bad = GenerationParams { sampling: SamplingParams { top_p: 2.0, ..Default::default() }, ..Default::default() };
    assert!(matches!(engine.submit(prompt.clone(), bad), Err(Phi3vError::InvalidParameter { name: "top_p", .. })));
    let out_of_vocab = ProcessedPrompt { input_ids: vec![1, 40_000], images: Vec::new() };
    assert!(matches!(engine.submit(out_of_vocab, greedy(2)), Err(Phi3vError::TokenOutOfRange { id: 40_000, position: 1, .. })));
    let orphan_slots = ProcessedPrompt { input_ids: vec![1, -1, -1], images: Vec::new() };
    assert!(matches!(engine.submit(orphan_slots, greedy(2)), Err(Phi3vError::InvalidInput(_))));
    assert!(!engine.step().expect("idle"), "refused requests leave nothing to do");
    let fits = engine.submit(prompt.clone(), greedy(64 - n)).expect("exactly the pool");
    engine.run_until_idle().expect("run");
    assert_eq!(fits.wait().expect("fits").token_ids, solo(&m, &prompt, &greedy(64 - n)));

    // Sizing from memory: 2 (K, V) × 2 layers × 2 kv heads × 16 dims × 4 bytes = 512 bytes a token.
    let text = &m.model.config.text;
    assert_eq!(EngineConfig::kv_bytes_per_token(text, DType::F32), 512);
    let sized = EngineConfig::default().with_memory_budget(1 << 20, text, DType::F32);
    assert_eq!((sized.num_blocks, sized.capacity_tokens()), (128, 2048));
}

/// A 4090-token prompt generating 12 crosses original_max_position_embeddings (4096) while a
/// short request runs beside it: the engine prefills the long one again with the long factors,
/// and both equal their solo runs.
#[test]
fn longrope_crossing_is_recomputed_per_sequence() {
    let m = load("phi3v-tiny");
    let base = text_prompt(&m, "The quick brown fox jumps over the lazy dog. ");
    let mut ids = vec![1i64];
    while ids.len() < 4090 {
        ids.extend_from_slice(&base.input_ids[1..]);
    }
    ids.truncate(4090);
    let long = ProcessedPrompt { input_ids: ids, images: Vec::new() };
    let short = text_prompt(&m, "Hello there");
    let mut engine = engine(&m, EngineConfig { num_blocks: 300, max_batched_tokens: 1024, ..Default::default() });
    let a = engine.submit(long.clone(), greedy(12)).expect("long");
    let b = engine.submit(short.clone(), greedy(20)).expect("short");
    engine.run_until_idle().expect("run");
    assert_eq!(engine.stats().rope_recomputes, 1);
    assert_eq!(a.wait().expect("long").token_ids, solo(&m, &long, &greedy(12)));
    assert_eq!(b.wait().expect("short").token_ids, solo(&m, &short, &greedy(20)));
}
