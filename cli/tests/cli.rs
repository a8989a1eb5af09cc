//! The `phi3v` binary end to end on the CPU with the shipped tiny checkpoints.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn phi3v(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_phi3v")).args(args).current_dir(root()).output().expect("run phi3v")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const IMAGE: &str = "tests/fixtures/images/chelsea.png";
const P3V: &str = "tests/fixtures/models/phi3v-tiny";

#[test]
fn generate_json_reproduces_the_fixture() {
    // text_only: the chat template around this prompt gives the fixture's ids.
    let o = phi3v(&["generate", "--model", P3V, "--prompt", "Write a haiku about GPUs and memory bandwidth.", "--max-new-tokens", "10", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    let ids: Vec<u64> = v["token_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(ids, [24109, 2835, 20548, 24252, 5028, 25947, 8826, 31716, 8258, 968]);
    assert_eq!(v["input_ids"].as_array().unwrap().len(), 20);
    for key in ["text", "num_image_tokens", "ttft_ms", "decode_tokens_per_s"] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
}

#[test]
fn generate_streams_text_with_an_image() {
    let o = phi3v(&["generate", "--image", IMAGE, "--prompt", "What animal is this?", "--max-new-tokens", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).trim().is_empty());
    assert!(stderr(&o).contains("757 image tokens"), "{}", stderr(&o));
}

#[test]
fn tokenize_prints_ids_sizes_and_counts() {
    let o = phi3v(&["tokenize", "--image", IMAGE, "--prompt", "Hi", "--num-crops", "16", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["image_sizes"], serde_json::json!([[1008, 1344]]));
    assert_eq!(v["num_image_tokens"], serde_json::json!([1921]));
    let ids = v["input_ids"].as_array().unwrap();
    assert_eq!(ids.iter().filter(|x| x.as_i64() == Some(-1)).count(), 1921);
}

#[test]
fn every_error_exits_non_zero_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["generate", "--prompt", "hi", "--device", "tpu"], "unknown device"),
        (&["generate", "--prompt", "hi", "--device", "cuda:7"], "cuda"),
        (&["generate", "--prompt", "hi", "--dtype", "bf16"], "not supported"),
        (&["generate", "--prompt", "hi", "--model", "/nonexistent"], "does not exist"),
        (&["generate", "--prompt", "hi", "--image", "Cargo.toml"], "Cargo.toml"),
        (&["generate", "--prompt", "hi", "--image", "missing.png"], "missing.png"),
        (&["generate", "--prompt", "<|image_2|> hi", "--image", IMAGE], "image_2"),
        (&["generate", "--prompt", "hi", "--top-p", "3"], "top_p"),
        (&["generate", "--prompt", "hi", "--temperature", "-1"], "temperature"),
        (&["generate", "--prompt", "hi", "--max-new-tokens", "0"], "max_new_tokens"),
        (&["generate", "--prompt", "hi", "--max-new-tokens", "2", "--min-new-tokens", "3"], "min_new_tokens"),
        (&["generate", "--prompt", "hi", "--max-new-tokens", "999999"], "context"),
        (&["generate", "--prompt-file", "/nonexistent.txt"], "nonexistent.txt"),
        (&["tokenize", "--raw", "--prompt", "<|image_1|> hi", "--image", IMAGE, "--image", IMAGE], "no <|image_2|> tag"),
        (&["mmmu", "compare", "/nonexistent-a.jsonl", "/nonexistent-b.jsonl"], "nonexistent"),
        (&["generate"], "--prompt"),
        (&["serve", "--device", "tpu", "--port", "0"], "unknown device"),
        (&["serve", "--model", "/nonexistent", "--port", "0"], "does not exist"),
        (&["serve", "--host", "not a host", "--port", "0"], "invalid listen address"),
    ];
    for (args, needle) in cases {
        let o = phi3v(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = stderr(&o);
        assert!(err.contains(needle), "{args:?}: message {err:?} lacks {needle:?}");
    }
}

#[test]
fn mmmu_sample_set_runs_resumes_and_compares() {
    let dir = std::env::temp_dir().join(format!("phi3v-mmmu-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let a = dir.join("a.jsonl");
    let b = dir.join("b.jsonl");
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec!["mmmu", "run", "--data", "tests/fixtures/mmmu_sample", "--out", out.to_str().unwrap(), "--num-crops", "1"];
        args.extend_from_slice(extra);
        let o = phi3v(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        o
    };
    run(&a, &["--limit", "12"]);
    // Resume: the 12 done items are skipped, the rest answered.
    run(&a, &[]);
    run(&b, &[]);
    let lines = std::fs::read_to_string(&a).unwrap().lines().count();
    assert_eq!(lines, 30, "every validation item once");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("a.summary.json")).unwrap()).unwrap();
    assert!(summary.to_string().contains("num_crops"));
    let report = dir.join("cmp.md");
    let o = phi3v(&["mmmu", "compare", a.to_str().unwrap(), b.to_str().unwrap(), "--out", report.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(&report).unwrap();
    // Same model, same device, greedy: identical answers.
    assert!(md.contains("30") && md.to_lowercase().contains("agree"), "{md}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The benchmark suite's smoke run (issue 6): the tiny preset on the CPU, every scenario at
/// small shapes; checks what it writes, never timings.
#[test]
fn bench_smoke_run_writes_card_graphs_and_results() {
    let out = std::env::temp_dir().join(format!("phi3v-bench-smoke-{}", std::process::id()));
    let o = phi3v(&[
        "bench", "run", "--preset", "tiny", "--device", "cpu", "--prompt-lengths", "16,48", "--prefill-batches", "1,2",
        "--parallel", "1,3", "--shapes", "24x6", "--images", "336x336", "--num-crops", "4", "--latency-shape", "24x6",
        "--warmup", "1", "--runs", "2", "--out", out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(r["prefill"].as_array().unwrap().len(), 4, "2 lengths × 2 batches");
    assert!(r["prefill"].as_array().unwrap().iter().all(|p| p["tokens_per_s"].as_f64().unwrap() > 0.0));
    let points = r["generation"].as_array().unwrap();
    assert_eq!(points.len(), 4, "2 parallel counts × static and engine batching");
    for mode in ["static", "engine"] {
        assert_eq!(points.iter().filter(|g| g["batching"] == mode).count(), 2, "{mode}");
    }
    assert!(points.iter().all(|g| g["per_request_tokens_per_s"]["p50"].as_f64().unwrap() > 0.0 && g["ttft_ms"]["p50"].as_f64().unwrap() > 0.0));
    let img = &r["images"][0];
    assert_eq!((img["crops"].as_u64(), img["image_tokens"].as_u64()), (Some(5), Some(757)), "336² at num_crops 4: 2×2 tiles + global view");
    assert_eq!(r["latency"]["runs"].as_u64(), Some(2));
    assert!(r["kv_cache"]["max_tokens"].as_u64().unwrap() > 0);
    // The kernel choices it ran with.
    let k = &r["settings"]["kernels"];
    assert!(["Host", "Stream", "Queued"].contains(&k["cublas_ordering"].as_str().unwrap_or("")) && k["blas_min_rows"].as_u64() >= Some(1), "{k}");
    assert!(k["attention"].is_string() && k["skinny_rows"].as_array().is_some_and(|r| r.len() == 2) && k["off"].is_array(), "{k}");
    for f in ["card.md", "results.csv", "prefill.png", "generation_24x6.png"] {
        assert!(std::fs::metadata(out.join(f)).map(|m| m.len() > 100).unwrap_or(false), "{f} missing");
    }
    let card = std::fs::read_to_string(out.join("card.md")).unwrap();
    assert!(card.contains("## Main metrics") && card.contains("generation_24x6.png"), "{card}");
    // The comparison reads two result files of the same schema.
    let cmp = phi3v(&["bench", "compare", out.join("results.json").to_str().unwrap(), out.join("results.json").to_str().unwrap()]);
    assert!(stdout(&cmp).contains("| prefill batch 1 × 16 |") && stdout(&cmp).contains("| 1.00 |"), "{}", stdout(&cmp));
    // Bad input is a clear error.
    let bad = phi3v(&["bench", "run", "--preset", "nope", "--device", "cpu"]);
    assert!(!bad.status.success() && stderr(&bad).contains("unknown preset"), "{}", stderr(&bad));
    let bad = phi3v(&["bench", "run", "--preset", "tiny", "--device", "cpu", "--shapes", "12", "--scenarios", "generation", "--out", out.to_str().unwrap()]);
    assert!(!bad.status.success() && stderr(&bad).contains("not of the form"), "{}", stderr(&bad));
    let _ = std::fs::remove_dir_all(&out);
}

/// `phi3v bench attention`: every choice on every problem, each output equal to the first
/// choice's (on the CPU every choice but `scores` is Burn's attention, and `scores` composes its
/// softmax there); `--parts` times scores' parts; bad problems and choices are messages.
#[test]
fn bench_attention_times_every_choice_and_compares_outputs() {
    let out = std::env::temp_dir().join(format!("phi3v-bench-attention-{}.json", std::process::id()));
    let o = phi3v(&[
        "bench", "attention", "--device", "cpu", "--shapes", "1,2,40,40,16,causal;2,3,9,20,8", "--flash", "burn;scores", "--warmup", "0",
        "--runs", "2", "--parts", "--out", out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let timings = r["timings"].as_array().unwrap();
    assert_eq!(timings.len(), 4, "{r}");
    for t in timings {
        assert!(t["us"].as_f64().unwrap() > 0.0, "{t}");
        assert!(t["rel_diff"].as_f64().unwrap() < 1e-5, "{t}");
    }
    assert_eq!(timings[1]["choice"], "Scores");
    assert!(stdout(&o).contains("| 1×2×40×40×16 causal | Scores |"), "{}", stdout(&o));
    // `--parts`: scores in one chunk and its three parts, per problem.
    let parts: Vec<&str> = r["parts"].as_array().unwrap().iter().map(|p| p["part"].as_str().unwrap()).collect();
    assert_eq!(parts, ["scores, one chunk", "q·kᵀ", "softmax", "p·v"].repeat(2), "{r}");
    assert!(r["parts"].as_array().unwrap().iter().all(|p| p["us"].as_f64().unwrap() > 0.0), "{r}");
    assert!(stdout(&o).contains("| 2×3×9×20×8 | softmax |"), "{}", stdout(&o));
    for (flag, value, message) in [("--shapes", "1,2,8,4,16,causal", "needs keys ≥ queries"), ("--shapes", "1,2,3", "is not batch,heads"), ("--flash", "fast", "`fast` is not auto, burn")] {
        let bad = phi3v(&["bench", "attention", "--device", "cpu", flag, value]);
        assert!(!bad.status.success() && stderr(&bad).contains(message), "{flag} {value}: {}", stderr(&bad));
    }
    let _ = std::fs::remove_file(&out);
}

/// `phi3v bench breakdown`: the decode, prefill and vision phases stage by stage (the vision
/// phase at the crop grid asked, its alternatives under `--flash` kept out of the step's sum),
/// the JSON and Markdown written; bad options are messages.
#[test]
fn bench_breakdown_times_decode_prefill_and_the_vision_tower() {
    let out = std::env::temp_dir().join(format!("phi3v-bench-breakdown-{}", std::process::id()));
    let o = phi3v(&[
        "bench", "breakdown", "--preset", "tiny", "--device", "cpu", "--decode-batches", "1", "--context", "8", "--prefill", "8",
        "--image-grid", "1x2", "--flash", "burn", "--warmup", "0", "--runs", "1", "--out", out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("breakdown.json")).unwrap()).unwrap();
    let phases: Vec<&str> = r["phases"].as_array().unwrap().iter().map(|p| p["phase"].as_str().unwrap()).collect();
    assert_eq!(phases, ["decode b=1 ctx=8", "prefill 8", "vision 1x2 grid, 3 crops"], "{r}");
    let vision = &r["phases"][2];
    let stages = vision["stages"].as_array().unwrap();
    for name in [
        "vision: q_proj + k_proj + v_proj",
        "vision: attention",
        "vision: attention with flash Burn",
        "vision: out_proj + residual",
        "vision: fc1",
        "vision: fc2 + residual",
        "vision: img_projection (HD layout excluded)",
    ] {
        let st = stages.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("{name} missing: {vision}"));
        assert!(st["us"].as_f64().unwrap() > 0.0, "{st}");
    }
    // The tiny tower's layers (`layer_idx` −2 of its stored layers) count the per-layer stages.
    let per_layer = stages.iter().find(|s| s["name"] == "vision: fc1").unwrap()["per_step"].as_u64().unwrap();
    // The residual adds are in `out_proj`'s and `fc2`'s rows; a pass of their own is listed
    // as an alternative, two per layer.
    let alone = stages.iter().find(|s| s["name"] == "vision: residual add (alternative: a pass of its own)").unwrap_or_else(|| panic!("{vision}"));
    assert!(per_layer >= 1 && alone["per_step"].as_u64().unwrap() == 2 * per_layer);
    assert!(vision["step_us"].as_f64().unwrap() > 0.0 && vision["layer_us"].as_f64().unwrap() > 0.0, "{vision}");
    let md = std::fs::read_to_string(out.join("breakdown.md")).unwrap();
    assert!(md.contains("## vision 1x2 grid, 3 crops") && md.contains("whole layer"), "{md}");
    let no_image = phi3v(&[
        "bench", "breakdown", "--preset", "tiny", "--device", "cpu", "--decode-batches", "1", "--context", "8", "--prefill", "0", "--no-image",
        "--warmup", "0", "--runs", "1", "--out", out.to_str().unwrap(),
    ]);
    assert!(no_image.status.success() && !stdout(&no_image).contains("## vision"), "{}", stderr(&no_image));
    for (flag, value, message) in [("--image-grid", "0x2", "`0x2` is not of the form"), ("--image-grid", "4", "`4` is not of the form"), ("--flash", "fast", "`fast` is not auto, burn")] {
        let bad = phi3v(&["bench", "breakdown", "--preset", "tiny", "--device", "cpu", flag, value, "--out", out.to_str().unwrap()]);
        assert!(!bad.status.success() && stderr(&bad).contains(message), "{flag} {value}: {}", stderr(&bad));
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// `phi3v bench matmul`: every choice on every product, each output equal to the first choice's
/// (on the CPU a tiling is Burn's matmul: the default `Kernels::tiled_matmul`), the peer's
/// column from its JSON; bad products, tilings and peer files are messages.
#[test]
fn bench_matmul_times_every_choice_beside_the_peer() {
    let dir = std::env::temp_dir().join(format!("phi3v-bench-matmul-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (out, peer) = (dir.join("matmul.json"), dir.join("peer.json"));
    std::fs::write(&peer, r#"{"device": "test GPU", "dtype": "bf16", "timings": [{"product": {"rows": 40, "d_in": 24, "d_out": 56}, "us": 1e9, "tflops": 0.0}]}"#).unwrap();
    let o = phi3v(&[
        "bench", "matmul", "--device", "cpu", "--shapes", "40,24,56;7,9,5", "--tilings", "burn;double-mma:4,4,2:2,2;model;blas", "--warmup", "0", "--runs", "2",
        "--peer", peer.to_str().unwrap(), "--out", out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let timings = r["timings"].as_array().unwrap();
    assert_eq!(timings.len(), 8, "{r}");
    for t in timings {
        assert!(t["us"].as_f64().unwrap() > 0.0, "{t}");
        assert!(t["rel_diff"].as_f64().unwrap() < 1e-5, "{t}");
    }
    assert_eq!(timings[1]["choice"], "double-mma:4,4,2:2,2");
    assert_eq!(timings[2]["choice"], "model");
    // The CPU has no vendor BLAS: Burn's matmul ran, marked refused.
    assert!(timings[3]["choice"] == "blas" && timings[3]["refused"] == true, "{}", timings[3]);
    let table = stdout(&o);
    assert!(table.contains("Peer: PyTorch `F.linear` on test GPU"), "{table}");
    // The peer took 1e9 µs for the first product and has no figure for the second.
    let row = table.lines().find(|l| l.starts_with("| 40 × 24 → 56 | burn |")).unwrap_or_else(|| panic!("{table}"));
    assert!(!row.contains("| – |"), "{row}");
    assert!(table.lines().any(|l| l.starts_with("| 7 × 9 → 5 | burn |") && l.contains("| – |")), "{table}");
    let bad_peer = dir.join("bad.json");
    std::fs::write(&bad_peer, "{}").unwrap();
    for (flag, value, message) in [
        ("--shapes", "1,2", "is not rows,d_in,d_out"),
        ("--tilings", "fast:1,1,1:1,1", "is neither `burn`, `blas`, `model` nor"),
        ("--tilings", "double:1,1,1:8,8", "is neither `burn`, `blas`, `model` nor"),
        ("--peer", bad_peer.to_str().unwrap(), "is not bench/peer_matmul.py's JSON"),
        ("--peer", "/nonexistent/peer.json", "cannot read"),
    ] {
        let bad = phi3v(&["bench", "matmul", "--device", "cpu", "--shapes", "4,4,4", flag, value]);
        assert!(!bad.status.success() && stderr(&bad).contains(message), "{flag} {value}: {}", stderr(&bad));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--shared-prefix`: the requests of a generation point share their first tokens; the engine
/// with prefix caching takes them from its cache (one prompt per pass, so the later requests
/// find the first one's blocks), the engine without it computes them every time.
#[test]
fn bench_shared_prefix_is_taken_from_the_engine_prefix_cache() {
    let out = std::env::temp_dir().join(format!("phi3v-bench-prefix-{}", std::process::id()));
    let o = phi3v(&[
        "bench", "run", "--preset", "tiny", "--device", "cpu", "--scenarios", "generation", "--parallel", "3", "--shapes", "40x4",
        "--shared-prefix", "32", "--max-batched-tokens", "40", "--batching", "engine,engine-no-prefix-caching", "--warmup", "0",
        "--out", out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let point = |mode: &str| r["generation"].as_array().unwrap().iter().find(|g| g["batching"] == mode).cloned().unwrap();
    let (cached, uncached) = (point("engine"), point("engine-no-prefix-caching"));
    assert_eq!(cached["shared_prefix"].as_u64(), Some(32));
    // Two later requests × the prefix's two full 16-token blocks.
    assert_eq!(cached["prefix_cached_tokens"].as_u64(), Some(64), "{cached}");
    assert_eq!(uncached["prefix_cached_tokens"].as_u64(), Some(0), "{uncached}");
    let card = std::fs::read_to_string(out.join("card.md")).unwrap();
    assert!(card.contains("40→4 (32 shared) | engine-no-prefix-caching"), "{card}");
    let bad = phi3v(&["bench", "run", "--preset", "tiny", "--device", "cpu", "--scenarios", "generation", "--batching", "paged", "--out", out.to_str().unwrap()]);
    assert!(!bad.status.success() && stderr(&bad).contains("unknown batching `paged`"), "{}", stderr(&bad));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_kernel_cache_flag_is_global_and_its_errors_are_messages() {
    let scratch = std::env::temp_dir().join(format!("phi3v-cli-kernel-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let dir = scratch.join("kernels");
    let dir_s = dir.to_str().unwrap();
    // The CPU compiles no kernels: the flag is accepted (before or after the command) and
    // nothing is created.
    for args in [
        vec!["--kernel-cache", dir_s, "generate", "--prompt", "hi", "--max-new-tokens", "1"],
        vec!["generate", "--prompt", "hi", "--max-new-tokens", "1", "--kernel-cache", "off"],
    ] {
        let o = phi3v(&args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    }
    assert!(!dir.exists(), "the CPU run created {}", dir.display());
    // A GPU device of this build and machine (CI: wgpu on lavapipe): a folder that cannot be
    // made is an error naming it, before the model loads.
    let devices = stdout(&phi3v(&["devices"]));
    if let Some(gpu) = ["wgpu:0", "cuda:0"].into_iter().find(|d| devices.contains(d)) {
        let file = scratch.join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let bad = file.join("kernels");
        let o = phi3v(&["generate", "--device", gpu, "--prompt", "hi", "--kernel-cache", bad.to_str().unwrap()]);
        assert!(!o.status.success(), "{gpu}: an unusable kernel cache folder was accepted");
        assert!(stderr(&o).contains("not usable") && stderr(&o).contains("a-file"), "{}", stderr(&o));
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
