//! The benchmark's result schema (shared with `bench/peer_torch.py`), statistics, and what is
//! written: results.json, results.csv, card.md and the graphs.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::CliResult;

/// Everything one benchmark run measured. Fields a run did not measure stay empty.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BenchReport {
    /// `burn-phi3v` or `pytorch`.
    pub engine: String,
    /// Versions of the engine and its framework.
    pub engine_version: String,
    /// Preset name or model folder.
    pub model: String,
    /// `random` or `checkpoint`.
    pub weights: String,
    /// Device string.
    pub device: String,
    /// Device name as the runtime reports it.
    pub device_name: String,
    /// Compute dtype.
    pub dtype: String,
    /// Day of the run (UTC), YYYY-MM-DD.
    pub date: String,
    /// Parameters of the model.
    pub parameters: u64,
    /// The options it ran with.
    pub settings: serde_json::Value,
    /// Scenario 1: prompt ingestion.
    pub prefill: Vec<PrefillPoint>,
    /// Scenario 2: generation against parallel requests.
    pub generation: Vec<GenerationPoint>,
    /// Scenario 3: images.
    pub images: Vec<ImagePoint>,
    /// Scenario 4: KV-cache capacity.
    pub kv_cache: Option<KvEstimate>,
    /// Scenario 5: memory.
    pub memory: MemoryReport,
    /// Scenario 6: batch-1 latency (optimum-benchmark style).
    pub latency: Option<LatencyReport>,
}

/// Prefill of `batch` prompts of `prompt_len` tokens up to the first token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PrefillPoint {
    pub batch: usize,
    pub prompt_len: usize,
    pub runs: usize,
    pub median_s: f64,
    pub tokens_per_s: f64,
    /// Why the point was not measured (memory, context, error).
    pub skipped: Option<String>,
}

/// Percentiles over requests (or over tokens for inter-token latency).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Percentiles {
    pub mean: f64,
    pub p25: f64,
    pub p50: f64,
    pub p75: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
}

/// `parallel` requests of (`prompt_len`, `output_len`) tokens at once.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerationPoint {
    pub prompt_len: usize,
    pub output_len: usize,
    pub parallel: usize,
    /// `static` (one left-padded batch, `generate`), `engine` (continuous batching over the
    /// paged KV cache, prefix caching on) or `engine-no-prefix-caching`.
    pub batching: String,
    /// Leading prompt tokens every request shares (`--shared-prefix`).
    pub shared_prefix: usize,
    /// Prompt tokens the engine took from its prefix cache, per run (mean over runs).
    pub prefix_cached_tokens: u64,
    pub runs: usize,
    /// Generated tokens of all requests per second of wall time.
    pub total_tokens_per_s: f64,
    /// Each request's decode speed (tokens after the first / time after the first).
    pub per_request_tokens_per_s: Percentiles,
    pub ttft_ms: Percentiles,
    /// Inter-token latency.
    pub itl_ms: Percentiles,
    /// Request latency end to end.
    pub e2e_s: Percentiles,
    pub skipped: Option<String>,
}

/// One image at one `num_crops`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ImagePoint {
    /// `WxH`.
    pub image: String,
    pub num_crops: usize,
    /// Crops actually encoded (global view included).
    pub crops: usize,
    pub image_tokens: usize,
    pub text_tokens: usize,
    /// CLIP + HD merge + projector, median.
    pub encode_ms: f64,
    /// Image encode plus prefill up to the first token, median.
    pub ttft_ms: f64,
    pub prefill_image_tokens_per_s: f64,
    pub prefill_text_tokens_per_s: f64,
    /// Decode speed of a 32-token answer.
    pub decode_tokens_per_s: f64,
    pub skipped: Option<String>,
}

/// How many tokens the KV cache can hold in `memory_fraction` of device memory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct KvEstimate {
    pub bytes_per_token: u64,
    pub device_memory_bytes: u64,
    pub weights_bytes: u64,
    pub memory_fraction: f64,
    pub max_tokens: u64,
}

/// Memory in use.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryReport {
    pub peak_host_rss_bytes: Option<u64>,
    pub peak_device_bytes: Option<u64>,
    pub device_bytes_after_load: Option<u64>,
}

/// Mean, standard deviation and tail percentiles.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    pub mean: f64,
    pub std: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
}

/// Batch-1 latency in the optimum-benchmark style (seconds).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencyReport {
    pub prompt_len: usize,
    pub output_len: usize,
    pub warmup: usize,
    pub runs: usize,
    /// Time to the first token.
    pub prefill_s: Stats,
    /// From the first token to the last.
    pub decode_s: Stats,
    /// Between consecutive tokens.
    pub per_token_s: Stats,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub per_token_tokens_per_s: f64,
}

/// Linear-interpolated percentile (numpy's default); 0 for no values.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() { 0.0 } else { values.iter().sum::<f64>() / values.len() as f64 }
}

impl Percentiles {
    /// Percentiles of `values`.
    pub fn of(values: &[f64]) -> Self {
        let p = |q| percentile(values, q);
        Self { mean: mean(values), p25: p(25.0), p50: p(50.0), p75: p(75.0), p90: p(90.0), p95: p(95.0), p99: p(99.0) }
    }
}

impl Stats {
    /// Statistics of `values` (population standard deviation).
    pub fn of(values: &[f64]) -> Self {
        let m = mean(values);
        let var = mean(&values.iter().map(|v| (v - m) * (v - m)).collect::<Vec<_>>());
        let p = |q| percentile(values, q);
        Self { mean: m, std: var.sqrt(), p50: p(50.0), p90: p(90.0), p95: p(95.0), p99: p(99.0) }
    }
}

impl PrefillPoint {
    /// One line for the progress log.
    pub fn describe(&self) -> String {
        match &self.skipped {
            Some(why) => format!("skipped ({why})"),
            None => format!("{:.1} ms, {:.0} tokens/s", self.median_s * 1e3, self.tokens_per_s),
        }
    }
}

impl GenerationPoint {
    /// One line for the progress log.
    pub fn describe(&self) -> String {
        match &self.skipped {
            Some(why) => format!("skipped ({why})"),
            None => format!(
                "{:.1} tokens/s total, {:.1} per request, TTFT p50 {:.0} ms, ITL p50 {:.1} ms{}",
                self.total_tokens_per_s,
                self.per_request_tokens_per_s.p50,
                self.ttft_ms.p50,
                self.itl_ms.p50,
                match self.prefix_cached_tokens {
                    0 => String::new(),
                    n => format!(", {n} prompt tokens from the prefix cache"),
                }
            ),
        }
    }
}

impl ImagePoint {
    /// One line for the progress log.
    pub fn describe(&self) -> String {
        match &self.skipped {
            Some(why) => format!("skipped ({why})"),
            None => format!("{} crops, {} image tokens, encode {:.1} ms, TTFT {:.1} ms", self.crops, self.image_tokens, self.encode_ms, self.ttft_ms),
        }
    }
}

/// Today's date (UTC) as YYYY-MM-DD, from the system clock.
pub fn today() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = (secs / 86_400) as i64;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Writes results.json, results.csv, card.md and the PNG graphs into `dir`.
pub fn write_all(r: &BenchReport, dir: &Path) -> CliResult<()> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let write = |name: &str, text: String| -> CliResult<()> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| format!("cannot write {}: {e}", p.display()).into())
    };
    write("results.json", serde_json::to_string_pretty(r)?)?;
    write("results.csv", csv(r))?;
    let graphs = super::plot::draw_all(r, dir)?;
    write("card.md", card(r, &graphs))?;
    Ok(())
}

/// Every figure as one CSV row: scenario, point, metric, value.
pub fn csv(r: &BenchReport) -> String {
    let mut s = String::from("scenario,point,metric,value\n");
    let mut row = |scenario: &str, point: &str, metric: &str, v: f64| {
        let _ = writeln!(s, "{scenario},{point},{metric},{v}");
    };
    for p in r.prefill.iter().filter(|p| p.skipped.is_none()) {
        let point = format!("batch{}_len{}", p.batch, p.prompt_len);
        row("prefill", &point, "median_s", p.median_s);
        row("prefill", &point, "tokens_per_s", p.tokens_per_s);
    }
    for g in r.generation.iter().filter(|p| p.skipped.is_none()) {
        let point = format!("{}x{}_parallel{}_{}", g.prompt_len, g.output_len, g.parallel, g.batching);
        row("generation", &point, "total_tokens_per_s", g.total_tokens_per_s);
        for (name, p) in [("per_request_tokens_per_s", &g.per_request_tokens_per_s), ("ttft_ms", &g.ttft_ms), ("itl_ms", &g.itl_ms), ("e2e_s", &g.e2e_s)] {
            for (q, v) in [("mean", p.mean), ("p25", p.p25), ("p50", p.p50), ("p75", p.p75), ("p90", p.p90), ("p95", p.p95), ("p99", p.p99)] {
                row("generation", &point, &format!("{name}_{q}"), v);
            }
        }
    }
    for i in r.images.iter().filter(|p| p.skipped.is_none()) {
        let point = format!("{}_crops{}", i.image, i.num_crops);
        row("images", &point, "image_tokens", i.image_tokens as f64);
        row("images", &point, "encode_ms", i.encode_ms);
        row("images", &point, "ttft_ms", i.ttft_ms);
        row("images", &point, "prefill_image_tokens_per_s", i.prefill_image_tokens_per_s);
        row("images", &point, "prefill_text_tokens_per_s", i.prefill_text_tokens_per_s);
        row("images", &point, "decode_tokens_per_s", i.decode_tokens_per_s);
    }
    if let Some(k) = &r.kv_cache {
        row("kv_cache", "", "max_tokens", k.max_tokens as f64);
        row("kv_cache", "", "bytes_per_token", k.bytes_per_token as f64);
    }
    if let Some(v) = r.memory.peak_host_rss_bytes {
        row("memory", "", "peak_host_rss_bytes", v as f64);
    }
    if let Some(v) = r.memory.peak_device_bytes {
        row("memory", "", "peak_device_bytes", v as f64);
    }
    if let Some(l) = &r.latency {
        let point = format!("{}x{}", l.prompt_len, l.output_len);
        for (name, st) in [("prefill_s", &l.prefill_s), ("decode_s", &l.decode_s), ("per_token_s", &l.per_token_s)] {
            for (q, v) in [("mean", st.mean), ("std", st.std), ("p50", st.p50), ("p90", st.p90), ("p95", st.p95), ("p99", st.p99)] {
                row("latency", &point, &format!("{name}_{q}"), v);
            }
        }
        row("latency", &point, "prefill_tokens_per_s", l.prefill_tokens_per_s);
        row("latency", &point, "decode_tokens_per_s", l.decode_tokens_per_s);
    }
    s
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// The measured point of that shape; `batching` `None` takes the first mode measured.
fn generation_at<'a>(r: &'a BenchReport, prompt: usize, output: usize, parallel: usize, batching: Option<&str>) -> Option<&'a GenerationPoint> {
    r.generation.iter().find(|g| {
        g.skipped.is_none() && (g.prompt_len, g.output_len, g.parallel) == (prompt, output, parallel) && batching.is_none_or(|b| g.batching == b)
    })
}

/// The batching modes a report measured, in first-seen order.
pub fn batching_modes(r: &BenchReport) -> Vec<String> {
    let mut modes: Vec<String> = Vec::new();
    for g in &r.generation {
        if !modes.contains(&g.batching) {
            modes.push(g.batching.clone());
        }
    }
    modes
}

fn prefill_at(r: &BenchReport, batch: usize, len: usize) -> Option<&PrefillPoint> {
    r.prefill.iter().find(|p| p.skipped.is_none() && (p.batch, p.prompt_len) == (batch, len))
}

/// The Markdown model card in the seeds' format: main metrics, graphs, tables, parameters.
pub fn card(r: &BenchReport, graphs: &[String]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# {} on {} — burn-phi3v benchmark card\n", r.model, r.device_name);
    let _ = writeln!(s, "{} · {} · {} ({}) · {} weights · {:.1} M parameters · {}\n", r.date, r.engine_version, r.device, r.dtype, r.weights, r.parameters as f64 / 1e6, r.engine);
    let _ = writeln!(s, "## Main metrics\n\n| metric | value |\n|---|---|");
    let mut main = |k: String, v: String| {
        let _ = writeln!(s, "| {k} | {v} |");
    };
    for p in r.prefill.iter().filter(|p| p.skipped.is_none() && matches!(p.prompt_len, 1024 | 4096)) {
        main(format!("prompt ingestion, batch {} × {} tokens", p.batch, p.prompt_len), format!("{:.0} tokens/s", p.tokens_per_s));
    }
    if let Some(l) = &r.latency {
        main(format!("single request {}→{}: decode", l.prompt_len, l.output_len), format!("{:.1} tokens/s", l.decode_tokens_per_s));
        main(format!("single request {}→{}: time to first token", l.prompt_len, l.output_len), format!("{:.1} ms", l.prefill_s.p50 * 1e3));
    }
    for mode in batching_modes(r) {
        for n in [10, 64] {
            if let Some(g) = generation_at(r, 1024, 128, n, Some(&mode)) {
                main(format!("{n} parallel 1024→128 ({mode} batching): per request / total"), format!("{:.1} / {:.1} tokens/s", g.per_request_tokens_per_s.p50, g.total_tokens_per_s));
            }
        }
    }
    if let Some(k) = &r.kv_cache {
        main(format!("KV-cache capacity at {:.0} % of {}", k.memory_fraction * 100.0, gib(k.device_memory_bytes)), format!("{} tokens", k.max_tokens));
    }
    if let Some(i) = r.images.iter().find(|i| i.skipped.is_none() && i.num_crops == 16) {
        main(format!("image encode, {} crops ({} at num_crops 16)", i.crops, i.image), format!("{:.1} ms", i.encode_ms));
    }
    if !graphs.is_empty() {
        let _ = writeln!(s, "\n## Graphs\n");
        for g in graphs {
            let _ = writeln!(s, "![{g}]({g})\n");
        }
    }
    if !r.prefill.is_empty() {
        let _ = writeln!(s, "\n## Prompt ingestion\n\n| batch | prompt tokens | median | tokens/s |\n|---|---|---|---|");
        for p in &r.prefill {
            match &p.skipped {
                None => { let _ = writeln!(s, "| {} | {} | {:.2} ms | {:.0} |", p.batch, p.prompt_len, p.median_s * 1e3, p.tokens_per_s); }
                Some(w) => { let _ = writeln!(s, "| {} | {} | skipped: {} | |", p.batch, p.prompt_len, w.lines().next().unwrap_or("")); }
            }
        }
    }
    if !r.generation.is_empty() {
        let _ = writeln!(s, "\n## Generation against parallel requests\n\n| prompt→output | batching | parallel | total tokens/s | per request tokens/s p25/p50/p75 | TTFT ms p25/p50/p75 | TTFT p90/p95/p99 | ITL ms p50/p90/p95/p99 |\n|---|---|---|---|---|---|---|---|");
        for g in &r.generation {
            let shape = match g.shared_prefix {
                0 => format!("{}→{} | {}", g.prompt_len, g.output_len, g.batching),
                n => format!("{}→{} ({n} shared) | {}", g.prompt_len, g.output_len, g.batching),
            };
            match &g.skipped {
                None => {
                    let (q, t, i) = (&g.per_request_tokens_per_s, &g.ttft_ms, &g.itl_ms);
                    let _ = writeln!(
                        s,
                        "| {shape} | {} | {:.1} | {:.1} / {:.1} / {:.1} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {:.1} / {:.1} / {:.1} / {:.1} |",
                        g.parallel, g.total_tokens_per_s, q.p25, q.p50, q.p75, t.p25, t.p50, t.p75, t.p90, t.p95, t.p99, i.p50, i.p90, i.p95, i.p99
                    );
                }
                Some(w) => { let _ = writeln!(s, "| {shape} | {} | skipped: {} | | | | |", g.parallel, w.lines().next().unwrap_or("")); }
            }
        }
    }
    if !r.images.is_empty() {
        let _ = writeln!(s, "\n## Images\n\n| image | num_crops | crops | image tokens | text tokens | encode ms | TTFT ms | image tokens/s | text tokens/s | decode tokens/s |\n|---|---|---|---|---|---|---|---|---|---|");
        for i in &r.images {
            match &i.skipped {
                None => { let _ = writeln!(s, "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.0} | {:.0} | {:.1} |", i.image, i.num_crops, i.crops, i.image_tokens, i.text_tokens, i.encode_ms, i.ttft_ms, i.prefill_image_tokens_per_s, i.prefill_text_tokens_per_s, i.decode_tokens_per_s); }
                Some(w) => { let _ = writeln!(s, "| {} | {} | skipped: {} | | | | | | | |", i.image, i.num_crops, w.lines().next().unwrap_or("")); }
            }
        }
    }
    if let Some(l) = &r.latency {
        let _ = writeln!(s, "\n## Batch-1 latency ({}→{}, {} warm-up, {} runs)\n\n| | mean | std | p50 | p90 | p95 | p99 | throughput |\n|---|---|---|---|---|---|---|---|", l.prompt_len, l.output_len, l.warmup, l.runs);
        for (name, st, tp) in [("prefill (s)", &l.prefill_s, l.prefill_tokens_per_s), ("decode (s)", &l.decode_s, l.decode_tokens_per_s), ("per token (s)", &l.per_token_s, l.per_token_tokens_per_s)] {
            let _ = writeln!(s, "| {name} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {tp:.1} tokens/s |", st.mean, st.std, st.p50, st.p90, st.p95, st.p99);
        }
    }
    let _ = writeln!(s, "\n## Memory\n");
    if let Some(k) = &r.kv_cache {
        let _ = writeln!(s, "- KV cache: {} bytes per token; weights {}; {} tokens fit in {:.0} % of {}", k.bytes_per_token, gib(k.weights_bytes), k.max_tokens, k.memory_fraction * 100.0, gib(k.device_memory_bytes));
    }
    if let Some(v) = r.memory.peak_host_rss_bytes {
        let _ = writeln!(s, "- peak host RSS: {}", gib(v));
    }
    if let Some(v) = r.memory.device_bytes_after_load {
        let _ = writeln!(s, "- device memory in use after loading: {}", gib(v));
    }
    if let Some(v) = r.memory.peak_device_bytes {
        let _ = writeln!(s, "- peak device memory in use (nvidia-smi, allocator pools included): {}", gib(v));
    }
    let _ = writeln!(s, "\n## Parameters\n\n```json\n{}\n```", serde_json::to_string_pretty(&r.settings).unwrap_or_default());
    s
}

/// Our figures against the peer's, with the ratio and the fraction of the hardware ceiling:
/// decode moves every weight once per step (bytes / `bandwidth`), prefill needs 2 × parameters
/// FLOP per token (/ `peak_flops`).
pub fn compare(ours: &BenchReport, peer: &BenchReport, bandwidth: f64, peak_flops: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| figure | {} | {} | ratio | ours / ceiling | ceiling |\n|---|---|---|---|---|---|", ours.engine, peer.engine);
    let params = ours.parameters.max(peer.parameters) as f64;
    let bytes_per_param = if ours.dtype == "f32" { 4.0 } else { 2.0 };
    let prefill_ceiling = peak_flops / (2.0 * params);
    let mut line = |name: String, a: Option<f64>, b: Option<f64>, ceiling: Option<f64>, unit: &str| {
        let f = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.1} {unit}"));
        let ratio = match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "–".into(),
        };
        let frac = match (a, ceiling) {
            (Some(a), Some(c)) if c > 0.0 => format!("{:.0} %", 100.0 * a / c),
            _ => "–".into(),
        };
        let _ = writeln!(s, "| {name} | {} | {} | {ratio} | {frac} | {} |", f(a), f(b), f(ceiling));
    };
    let mut lens: Vec<(usize, usize)> = ours.prefill.iter().chain(&peer.prefill).map(|p| (p.batch, p.prompt_len)).collect();
    lens.sort_unstable();
    lens.dedup();
    for (b, l) in lens {
        line(
            format!("prefill batch {b} × {l}"),
            prefill_at(ours, b, l).map(|p| p.tokens_per_s),
            prefill_at(peer, b, l).map(|p| p.tokens_per_s),
            Some(prefill_ceiling),
            "tokens/s",
        );
    }
    if let (Some(a), Some(b)) = (&ours.latency, &peer.latency) {
        let ceiling = bandwidth / (params * bytes_per_param);
        line(format!("batch-1 decode {}→{}", a.prompt_len, a.output_len), Some(a.decode_tokens_per_s), Some(b.decode_tokens_per_s), Some(ceiling), "tokens/s");
        line(format!("batch-1 TTFT {}→{} (ms; lower is better)", a.prompt_len, a.output_len), Some(a.prefill_s.p50 * 1e3), Some(b.prefill_s.p50 * 1e3), None, "ms");
    }
    let mut gens: Vec<(usize, usize, usize)> = ours.generation.iter().chain(&peer.generation).map(|g| (g.prompt_len, g.output_len, g.parallel)).collect();
    gens.sort_unstable();
    gens.dedup();
    let modes = batching_modes(ours);
    for (p, o, n) in gens {
        // Each step reads the weights once plus every request's KV cache (at its mean length).
        let kv = ours.kv_cache.as_ref().map_or(0.0, |k| k.bytes_per_token as f64) * n as f64 * (p + o / 2) as f64;
        let step = (params * bytes_per_param + kv) / bandwidth;
        let b = generation_at(peer, p, o, n, None);
        for mode in modes.iter().map(|m| Some(m.as_str())).chain(modes.is_empty().then_some(None)) {
            let a = generation_at(ours, p, o, n, mode);
            let tag = mode.map_or(String::new(), |m| format!(", ours {m}"));
            line(format!("{n} parallel {p}→{o}{tag}: total"), a.map(|g| g.total_tokens_per_s), b.map(|g| g.total_tokens_per_s), Some(n as f64 / step), "tokens/s");
            line(format!("{n} parallel {p}→{o}{tag}: per request p50"), a.map(|g| g.per_request_tokens_per_s.p50), b.map(|g| g.per_request_tokens_per_s.p50), Some(1.0 / step), "tokens/s");
        }
    }
    let mut imgs: Vec<(String, usize)> = ours.images.iter().chain(&peer.images).map(|i| (i.image.clone(), i.num_crops)).collect();
    imgs.sort();
    imgs.dedup();
    let image = |r: &BenchReport, im: &str, c: usize| r.images.iter().find(|i| i.skipped.is_none() && i.image == im && i.num_crops == c).map(|i| i.encode_ms);
    for (im, c) in imgs {
        line(format!("image encode {im} at num_crops {c} (ms; lower is better)"), image(ours, &im, c), image(peer, &im, c), None, "ms");
    }
    let _ = writeln!(
        s,
        "\nCeilings: prefill {:.0} tokens/s = {:.0} TFLOP/s / (2 × {:.2} B parameters); decode = {:.2} TB/s / bytes read per step (weights, plus the KV cache of every request).",
        prefill_ceiling,
        peak_flops / 1e12,
        params / 1e9,
        bandwidth / 1e12
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_match_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert!((percentile(&v, 25.0) - 1.75).abs() < 1e-12);
        assert_eq!(percentile(&v, 100.0), 4.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        let s = Stats::of(&v);
        assert!((s.std - 1.118_033_988_749_895).abs() < 1e-12);
    }

    #[test]
    fn today_is_a_plausible_date() {
        let d = today();
        assert_eq!(d.len(), 10);
        assert!(d.as_str() >= "2025-01-01", "{d}");
    }

    #[test]
    fn compare_lists_both_engines_and_ratios() {
        let mut a = BenchReport { engine: "burn-phi3v".into(), parameters: 4_000_000_000, dtype: "bf16".into(), ..Default::default() };
        a.prefill.push(PrefillPoint { batch: 1, prompt_len: 1024, tokens_per_s: 1000.0, ..Default::default() });
        let mut b = BenchReport { engine: "pytorch".into(), ..a.clone() };
        b.prefill[0].tokens_per_s = 2000.0;
        let md = compare(&a, &b, 3.35e12, 989e12);
        assert!(md.contains("| prefill batch 1 × 1024 | 1000.0 tokens/s | 2000.0 tokens/s | 0.50 |"), "{md}");
        let back: BenchReport = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back.prefill[0].tokens_per_s, 1000.0);
    }
}
