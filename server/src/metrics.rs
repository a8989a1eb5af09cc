//! Live metrics in the Prometheus text format (`GET /metrics`): the server's counters and
//! latency histograms, and the engine's state (requests running and waiting, KV-cache blocks).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use burn_phi3v::EngineStats;

/// A Prometheus histogram with fixed bucket bounds (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Count per bucket (not cumulative; made cumulative when rendered).
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self.bounds.iter().position(|&b| s <= b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Time to first token buckets (seconds), as vLLM's.
const TTFT_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
/// Inter-token latency buckets (seconds).
const ITL_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5];
/// End-to-end request latency buckets (seconds).
const E2E_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0];

/// The server's own counters.
#[derive(Debug)]
pub struct Metrics {
    /// Requests that finished with a stop token or string.
    pub finished_stop: AtomicU64,
    /// Requests that reached their `max_tokens`.
    pub finished_length: AtomicU64,
    /// Requests whose client went away before the end.
    pub aborted: AtomicU64,
    /// Requests answered with an error (4xx or 5xx) by the completion endpoints.
    pub errors: AtomicU64,
    /// Prompt tokens of requests that ran (image tokens included).
    pub prompt_tokens: AtomicU64,
    /// Image tokens of requests that ran.
    pub image_tokens: AtomicU64,
    /// Tokens generated and streamed to clients.
    pub generation_tokens: AtomicU64,
    /// From the request's arrival to its first token.
    pub ttft: Histogram,
    /// Between consecutive tokens of a request.
    pub itl: Histogram,
    /// From the request's arrival to its last token.
    pub e2e: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            finished_stop: AtomicU64::new(0),
            finished_length: AtomicU64::new(0),
            aborted: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            image_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(E2E_BUCKETS),
        }
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

impl Metrics {
    /// Everything in the Prometheus text format (version 0.0.4).
    pub fn render(&self, engine: &EngineStats, http_in_flight: usize) -> String {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::with_capacity(8192);
        let o = &mut out;
        metric(o, "phi3v_num_requests_running", "gauge", "Requests running in the engine (holding KV-cache blocks).", engine.running);
        metric(o, "phi3v_num_requests_waiting", "gauge", "Requests waiting in the engine to start or resume.", engine.waiting);
        metric(o, "phi3v_http_requests_in_flight", "gauge", "Completion requests being answered by the HTTP server.", http_in_flight);
        metric(o, "phi3v_kv_cache_blocks_used", "gauge", "KV-cache blocks held.", engine.used_blocks);
        metric(o, "phi3v_kv_cache_blocks_free", "gauge", "KV-cache blocks free.", engine.num_blocks.saturating_sub(engine.used_blocks));
        metric(o, "phi3v_kv_cache_blocks_total", "gauge", "KV-cache blocks in the pool.", engine.num_blocks);
        metric(o, "phi3v_kv_cache_block_size", "gauge", "Tokens per KV-cache block.", engine.block_size);
        let usage = if engine.num_blocks == 0 { 0.0 } else { engine.used_blocks as f64 / engine.num_blocks as f64 };
        metric(o, "phi3v_kv_cache_usage_ratio", "gauge", "Fraction of the KV-cache blocks held.", usage);
        metric(o, "phi3v_kv_cache_peak_blocks_used", "gauge", "The most KV-cache blocks ever held at once.", engine.peak_used_blocks);
        metric(o, "phi3v_generation_tokens_total", "counter", "Tokens generated and streamed to clients.", load(&self.generation_tokens));
        metric(o, "phi3v_prompt_tokens_total", "counter", "Prompt tokens of requests that ran (image tokens included).", load(&self.prompt_tokens));
        metric(o, "phi3v_image_tokens_total", "counter", "Image tokens of requests that ran.", load(&self.image_tokens));
        let _ = writeln!(
            o,
            "# HELP phi3v_request_success_total Requests finished, by finish reason.\n# TYPE phi3v_request_success_total counter\n\
             phi3v_request_success_total{{finished_reason=\"stop\"}} {}\nphi3v_request_success_total{{finished_reason=\"length\"}} {}",
            load(&self.finished_stop),
            load(&self.finished_length)
        );
        metric(o, "phi3v_request_aborted_total", "counter", "Requests whose client disconnected before the end (cancelled in the engine).", load(&self.aborted));
        metric(o, "phi3v_request_error_total", "counter", "Completion requests answered with an error.", load(&self.errors));
        metric(o, "phi3v_engine_cancelled_total", "counter", "Requests the engine ended by cancellation.", engine.cancelled);
        metric(o, "phi3v_engine_finished_total", "counter", "Requests the engine finished normally.", engine.finished);
        metric(o, "phi3v_engine_preemptions_total", "counter", "Running sequences preempted for KV-cache blocks.", engine.preemptions);
        metric(o, "phi3v_engine_passes_total", "counter", "Forward passes run by the engine.", engine.passes);
        metric(o, "phi3v_engine_tokens_processed_total", "counter", "Tokens through the decoder (prefill, decode, recompute).", engine.tokens_processed);
        metric(o, "phi3v_prefix_cache_hit_tokens_total", "counter", "Prompt tokens taken from the prefix cache instead of computed.", engine.prefix_cached_tokens);
        metric(o, "phi3v_prefix_cache_blocks", "gauge", "KV-cache blocks registered in the prefix cache.", engine.cached_blocks);
        self.ttft.render(o, "phi3v_time_to_first_token_seconds", "Time from the request's arrival to its first token.");
        self.itl.render(o, "phi3v_inter_token_latency_seconds", "Time between consecutive tokens of a request.");
        self.e2e.render(o, "phi3v_e2e_request_latency_seconds", "Time from the request's arrival to its last token.");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.1\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"1\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count 3\n"), "{s}");
        assert!(s.contains("x_sum 5.55\n"), "{s}");
    }
}
