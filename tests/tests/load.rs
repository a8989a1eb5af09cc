//! Load test of the serving engine (issue 11): many requests with random prompts, some with
//! images, random sampling parameters (seeded), from several client threads, some cancelled
//! mid-way, a few refused at submission, against one engine on its own thread with a KV-cache
//! pool too small for the load (so it preempts). Every request that is not cancelled completes
//! with the tokens `generate()` gives it alone; a cancelled one ends `Cancelled` with a prefix
//! of those tokens; the pool never holds more than its blocks and is empty at the end; nothing
//! panics.
//!
//! CI runs the reduced form (150 requests, 4 threads). The full form — 1000 requests, 8 threads
//! — runs with `PHI3V_LOAD_FULL=1 cargo test -p phi3v-tests --test load -- --nocapture`
//! (docs/robustness.md).

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use burn::backend::Flex;
use burn::tensor::DType;
use burn_phi3v::image_processor::load_image;
use burn_phi3v::{
    Engine, EngineConfig, FinishReason, GenerationParams, LoadedModel, Phi3VProcessor, Phi3vError, ProcessedPrompt, RequestEvent,
    SamplingParams, generate,
};
use phi3v_tests::rng::Rng;
use phi3v_tests::{fixtures_dir, model_dir};

type Cpu = Flex;

/// What the test does with one request.
#[derive(Clone)]
struct Plan {
    prompt: ProcessedPrompt,
    params: GenerationParams,
    /// Cancel after this many streamed tokens (0: right after submitting).
    cancel_after: Option<usize>,
    /// Submission must be refused with `PoolTooSmall`.
    refused: bool,
}

/// How a request ended.
struct Outcome {
    index: usize,
    tokens: Vec<u32>,
    reason: FinishReason,
    streamed_tokens: usize,
}

const WORDS: &[&str] = &[
    "cat", "the", "sea", "image", "describe", "why", "blue", "42", "über", "名前", "<|end|>", "quickly", "a", "of", "stars", "\n",
    "<|image_9|>", "emoji 🙂", "   ", "matrix",
];

fn random_text(rng: &mut Rng) -> String {
    let n = 1 + rng.below(24) as usize;
    (0..n).map(|_| WORDS[rng.below(WORDS.len() as u64) as usize]).collect::<Vec<_>>().join(" ")
}

fn random_params(rng: &mut Rng, stop: &[u32]) -> GenerationParams {
    let max_new_tokens = 1 + rng.below(16) as usize;
    let mut params = GenerationParams { max_new_tokens, ..Default::default() };
    match rng.below(4) {
        0 => {} // greedy
        1 => {
            params.sampling = SamplingParams { temperature: 0.3 + 1.2 * rng.unit(), seed: rng.below(1 << 32), ..Default::default() };
        }
        2 => {
            params.sampling = SamplingParams {
                temperature: 0.5 + rng.unit(),
                top_k: 1 + rng.below(50) as usize,
                top_p: 0.5 + 0.5 * rng.unit(),
                seed: rng.below(1 << 32),
                ..Default::default()
            };
        }
        _ => {
            params.sampling.repetition_penalty = 1.0 + rng.unit();
            params.stop_token_ids = stop.to_vec();
            params.min_new_tokens = rng.below(max_new_tokens as u64 + 1) as usize;
        }
    }
    params
}

fn plans(m: &LoadedModel<Cpu>, n: usize, capacity: usize, rng: &mut Rng) -> Vec<Plan> {
    // Images with one crop (313 image tokens each) keep a request well inside the pool.
    let processor = m.processor.clone().with_num_crops(1);
    let images: Vec<_> = ["tiny_rgba.png", "panorama.png", "chelsea.png"]
        .iter()
        .map(|f| load_image(&fixtures_dir().join("images").join(f), u64::MAX).expect("fixture image"))
        .collect();
    let stop = m.stop_token_ids();
    (0..n)
        .map(|_| {
            let text = random_text(rng);
            let with_images = rng.below(8) == 0;
            let chosen: Vec<_> = if with_images {
                // One image, or two (when the second is the small one).
                let mut v = vec![images[rng.below(3) as usize].clone()];
                if rng.below(2) == 0 {
                    v.push(images[0].clone());
                }
                v
            } else {
                Vec::new()
            };
            let user = burn_phi3v::with_image_tags(&text.replace("<|image_9|>", "image nine"), chosen.len());
            let prompt = processor
                .process(&format!("<|user|>\n{user}<|end|>\n<|assistant|>\n"), &chosen)
                .expect("prompt");
            let mut params = random_params(rng, &stop);
            let refused = rng.below(50) == 0;
            if refused {
                params.max_new_tokens = capacity; // prompt + max_new_tokens > the pool
            }
            let cancel_after = (rng.below(6) == 0).then(|| rng.below(4) as usize);
            Plan { prompt, params, cancel_after, refused }
        })
        .collect()
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One client thread: submits its plans, reads every stream, cancels where planned.
fn client_thread(client: burn_phi3v::EngineClient, plans: &[(usize, Plan)]) -> Vec<Outcome> {
    let mut handles = Vec::new();
    for (index, plan) in plans {
        match client.submit(plan.prompt.clone(), plan.params.clone()) {
            Ok(h) => {
                assert!(!plan.refused, "request {index} should have been refused");
                if plan.cancel_after == Some(0) {
                    h.cancel();
                }
                handles.push((*index, plan, h));
            }
            Err(Phi3vError::PoolTooSmall { requested, capacity }) => {
                assert!(plan.refused, "request {index} refused: {requested} > {capacity}");
            }
            Err(e) => panic!("request {index}: {e}"),
        }
    }
    handles
        .into_iter()
        .map(|(index, plan, h)| {
            let mut streamed_tokens = 0;
            loop {
                match h.recv().unwrap_or_else(|| panic!("request {index}: stream ended without an output")) {
                    RequestEvent::Token { .. } => {
                        streamed_tokens += 1;
                        if plan.cancel_after == Some(streamed_tokens) {
                            h.cancel();
                        }
                    }
                    RequestEvent::Finished(out) => {
                        let out = out.unwrap_or_else(|e| panic!("request {index}: {e}"));
                        return Outcome { index, tokens: out.token_ids, reason: out.finish_reason, streamed_tokens };
                    }
                }
            }
        })
        .collect()
}

#[test]
fn engine_under_load_with_cancellations_matches_solo_runs() {
    let full = std::env::var("PHI3V_LOAD_FULL").is_ok_and(|v| v == "1");
    let (n, threads) = if full { (1000, 8) } else { (150, 4) };
    let m = LoadedModel::<Cpu>::load(&model_dir("phi3v-tiny"), &Default::default(), DType::F32, None).expect("tiny checkpoint");
    // 48 blocks of 16 = 768 tokens: two image requests and a few text ones at a time, so the
    // scheduler queues and preempts.
    let config = EngineConfig { block_size: 16, num_blocks: 48, max_batched_tokens: 256, max_running: 12, prefix_caching: true };
    let capacity = config.capacity_tokens();
    let mut rng = Rng(0x5eed_1234_abcd_0011);
    let plans = plans(&m, n, capacity, &mut rng);
    let rss_before = rss_kib();
    let start = Instant::now();

    let engine = Engine::new(m.model.clone(), Phi3VProcessor::from_dir(&m.dir).expect("processor"), config.clone()).expect("engine");
    let running = engine.spawn();
    let done = AtomicBool::new(false);
    let indexed: Vec<(usize, Plan)> = plans.iter().cloned().enumerate().collect();
    let per_thread = indexed.len().div_ceil(threads);
    let (outcomes, peak_seen) = thread::scope(|s| {
        let monitor = s.spawn(|| {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                let stats = running.stats();
                assert!(stats.used_blocks <= config.num_blocks, "pool over capacity: {stats:?}");
                peak = peak.max(stats.used_blocks);
                thread::sleep(Duration::from_millis(5));
            }
            peak
        });
        let workers: Vec<_> = indexed
            .chunks(per_thread)
            .map(|chunk| {
                let client = running.client();
                s.spawn(move || client_thread(client, chunk))
            })
            .collect();
        let outcomes: Vec<Outcome> = workers.into_iter().flat_map(|w| w.join().expect("client thread")).collect();
        done.store(true, Ordering::Relaxed);
        (outcomes, monitor.join().expect("monitor"))
    });
    let engine = running.join();
    let served = start.elapsed();
    let stats = engine.stats();
    let rss_after = rss_kib();

    let refused = plans.iter().filter(|p| p.refused).count();
    assert_eq!(outcomes.len(), n - refused);
    assert_eq!(stats.used_blocks, 0, "blocks leaked: {stats:?}");
    assert!(stats.peak_used_blocks <= config.num_blocks && peak_seen <= config.num_blocks);
    assert_eq!(stats.finished + stats.cancelled, outcomes.len() as u64, "{stats:?}");

    let mut cancelled = 0;
    for o in &outcomes {
        let plan = &plans[o.index];
        assert_eq!(o.streamed_tokens, o.tokens.len(), "request {}: streamed and final tokens differ", o.index);
        let alone = generate(&m.model, &m.processor, &[&plan.prompt], std::slice::from_ref(&plan.params), |_| {})
            .expect("solo run")
            .remove(0)
            .token_ids;
        if o.reason == FinishReason::Cancelled {
            assert!(plan.cancel_after.is_some(), "request {} cancelled without being asked", o.index);
            assert!(alone.starts_with(&o.tokens), "request {}: cancelled run {:?} is not a prefix of {alone:?}", o.index, o.tokens);
            cancelled += 1;
        } else {
            assert_eq!(o.tokens, alone, "request {} ({} prompt tokens, {:?})", o.index, plan.prompt.input_ids.len(), plan.params.sampling);
        }
    }
    assert!(cancelled > 0, "no request was cancelled mid-way");
    eprintln!(
        "load: {n} requests ({refused} refused, {cancelled} cancelled, {} with images) from {threads} threads served in {served:.1?}; \
         {} passes, {} preemptions, peak {} of {} blocks; RSS {rss_before:?} -> {rss_after:?} KiB",
        plans.iter().filter(|p| !p.prompt.images.is_empty()).count(),
        stats.passes,
        stats.preemptions,
        stats.peak_used_blocks,
        stats.num_blocks
    );
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        // The pool is allocated once; serving must not grow the process by more than the
        // engine's working set (generous: 1 GiB).
        assert!(after.saturating_sub(before) < 1 << 20, "RSS grew from {before} to {after} KiB");
    }
}
