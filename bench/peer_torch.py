#!/usr/bin/env python3
"""The PyTorch peer of `phi3v bench run`: the same shapes with transformers' native
Phi3ForCausalLM and CLIPVisionModel (random bf16 weights, SDPA attention, `generate` with a
static cache), writing the same JSON schema (cli/src/bench/report.rs) so that
`phi3v bench compare` can put the two side by side.

Usage (GPU machine, same call as ours):
  python3 bench/peer_torch.py --preset cli/presets/phi3v-128k.json --out peer.json \
      [--ours ours/results.json]   # image scenario: the same images and crop counts as our run
"""
import argparse
import datetime
import json
import math
import resource
import statistics
import sys
import time

import torch
import transformers
from transformers import CLIPVisionConfig, CLIPVisionModel, Phi3Config, Phi3ForCausalLM


def percentile(values, q):
    if not values:
        return 0.0
    v = sorted(values)
    pos = q / 100 * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def percentiles(values):
    out = {f"p{q}": percentile(values, q) for q in (25, 50, 75, 90, 95, 99)}
    out["mean"] = statistics.fmean(values) if values else 0.0
    return out


def stats(values):
    m = statistics.fmean(values)
    return {"mean": m, "std": statistics.pstdev(values), **{f"p{q}": percentile(values, q) for q in (50, 90, 95, 99)}}


def sync():
    torch.cuda.synchronize()


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def text_config(preset):
    keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "original_max_position_embeddings",
            "rms_norm_eps", "rope_theta", "bos_token_id", "eos_token_id", "tie_word_embeddings"]
    kw = {k: preset[k] for k in keys if k in preset}
    rope = preset.get("rope_scaling")
    if rope:
        kw["rope_scaling"] = {"type": "longrope", "long_factor": rope["long_factor"], "short_factor": rope["short_factor"]}
    try:
        cfg = Phi3Config(**kw)
    except Exception as e:  # a transformers version that rejects the rope dict: plain RoPE (same cost)
        log(f"LongRoPE config rejected ({e}); using plain RoPE")
        kw.pop("rope_scaling", None)
        cfg = Phi3Config(**kw)
    cfg._attn_implementation = "sdpa"
    return cfg


class TokenClock(transformers.LogitsProcessor):
    """Records when each step's logits are ready (device synced)."""

    def __init__(self):
        self.times = []

    def __call__(self, input_ids, scores):
        sync()
        self.times.append(time.perf_counter())
        return scores


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ours", help="our results.json: image scenario reuses its images and crop counts")
    ap.add_argument("--prompt-lengths", default="128,256,512,1024,2048,4096,8192")
    ap.add_argument("--prefill-batches", default="1,8")
    ap.add_argument("--max-prefill-tokens", type=int, default=16384)
    ap.add_argument("--parallel", default="1,10,64")
    ap.add_argument("--shapes", default="1024x128")
    ap.add_argument("--latency-shape", default="1024x128")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--scenarios", default="prefill,generation,images,kv,latency")
    a = ap.parse_args()
    scen = set(a.scenarios.split(","))
    preset = json.load(open(a.preset))
    torch.manual_seed(0)
    dev = torch.device("cuda")
    cfg = text_config(preset)
    with dev:
        model = Phi3ForCausalLM._from_config(cfg, torch_dtype=torch.bfloat16).eval()
    params = sum(p.numel() for p in model.parameters())
    vision = None
    if "img_processor" in preset:
        vcfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
        vcfg._attn_implementation = "sdpa"
        with dev:
            vision = CLIPVisionModel._from_config(vcfg, torch_dtype=torch.bfloat16).eval()
            proj = torch.nn.Sequential(torch.nn.Linear(4096, 3072), torch.nn.GELU(), torch.nn.Linear(3072, 3072)).to(torch.bfloat16)
        params += sum(p.numel() for p in vision.parameters()) + sum(p.numel() for p in proj.parameters())
    sync()
    props = torch.cuda.get_device_properties(0)
    report = {
        "engine": "pytorch", "engine_version": f"torch {torch.__version__}, transformers {transformers.__version__} (SDPA, static cache)",
        "model": preset.get("_name_or_path", a.preset), "weights": "random", "device": "cuda:0", "device_name": props.name,
        "dtype": "bf16", "date": datetime.date.today().isoformat(), "parameters": params,
        "settings": {"warmup": a.warmup, "runs": a.runs, "parallel": a.parallel, "shapes": a.shapes},
        "prefill": [], "generation": [], "images": [], "kv_cache": None, "memory": {}, "latency": None,
    }
    vocab = cfg.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(1)

    def ids(b, n):
        return torch.randint(100, vocab - 100, (b, n), generator=gen).to(dev)

    @torch.inference_mode()
    def prefill_once(b, n):
        out = model(input_ids=ids(b, n), use_cache=True, logits_to_keep=1)
        out.logits.argmax(-1).cpu()

    if "prefill" in scen:
        for b in map(int, a.prefill_batches.split(",")):
            for n in map(int, a.prompt_lengths.split(",")):
                if b > 1 and b * n > a.max_prefill_tokens:
                    continue
                for _ in range(a.warmup):
                    prefill_once(b, n)
                times = []
                for _ in range(a.runs):
                    sync(); t = time.perf_counter(); prefill_once(b, n); sync()
                    times.append(time.perf_counter() - t)
                med = statistics.median(times)
                report["prefill"].append({"batch": b, "prompt_len": n, "runs": len(times), "median_s": med, "tokens_per_s": b * n / med})
                log(f"prefill {b} x {n}: {med * 1e3:.1f} ms, {b * n / med:.0f} tokens/s")

    @torch.inference_mode()
    def generate_timed(b, p, o):
        clock = TokenClock()
        x = ids(b, p)
        sync(); start = time.perf_counter()
        model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=o, min_new_tokens=o, do_sample=False,
                       cache_implementation="static", logits_processor=[clock], pad_token_id=0)
        sync()
        return [t - start for t in clock.times]

    if "latency" in scen:
        p, o = map(int, a.latency_shape.split("x"))
        runs = []
        for r in range(a.warmup + a.runs):
            t = generate_timed(1, p, o)
            if r >= a.warmup:
                runs.append(t)
        prefill = [t[0] for t in runs]
        decode = [t[-1] - t[0] for t in runs]
        per_token = [b - a_ for t in runs for a_, b in zip(t, t[1:])]
        report["latency"] = {
            "prompt_len": p, "output_len": o, "warmup": a.warmup, "runs": len(runs),
            "prefill_s": stats(prefill), "decode_s": stats(decode), "per_token_s": stats(per_token),
            "prefill_tokens_per_s": p / statistics.fmean(prefill), "decode_tokens_per_s": (o - 1) / statistics.fmean(decode),
            "per_token_tokens_per_s": 1 / statistics.fmean(per_token),
        }
        log(f"latency {p}x{o}: TTFT {statistics.median(prefill) * 1e3:.1f} ms, decode {report['latency']['decode_tokens_per_s']:.1f} tokens/s")

    if "generation" in scen:
        for shape in a.shapes.split(","):
            p, o = map(int, shape.split("x"))
            for n in map(int, a.parallel.split(",")):
                point = {"prompt_len": p, "output_len": o, "parallel": n}
                try:
                    # Warm-up at the timed shape: the static cache's length (prompt + output)
                    # is part of what torch compiles, so a shorter warm-up would leave the
                    # compilation inside the timed run. Then the run of median duration.
                    for _ in range(max(a.warmup, 1)):
                        generate_timed(n, p, o)
                    timed = sorted((generate_timed(n, p, o) for _ in range(max(a.runs, 1))), key=lambda t: t[-1])
                    t = timed[len(timed) // 2]
                except torch.cuda.OutOfMemoryError as e:
                    point["skipped"] = f"out of memory: {e}"
                    report["generation"].append(point)
                    torch.cuda.empty_cache()
                    break
                # Static batch: every request gets its tokens at the same steps.
                per_req = (o - 1) / (t[-1] - t[0])
                itl = [(b - a_) * 1e3 for a_, b in zip(t, t[1:])]
                point.update({"runs": len(timed), "total_tokens_per_s": n * o / t[-1],
                              "per_request_tokens_per_s": percentiles([per_req] * n), "ttft_ms": percentiles([t[0] * 1e3] * n),
                              "itl_ms": percentiles(itl), "e2e_s": percentiles([t[-1]] * n)})
                report["generation"].append(point)
                log(f"generation {shape}, {n} parallel: {point['total_tokens_per_s']:.1f} tokens/s total, {per_req:.1f} per request")

    if "images" in scen and vision is not None and a.ours:
        ours = json.load(open(a.ours))
        for im in ours.get("images", []):
            if im.get("skipped"):
                continue
            crops, tokens = im["crops"], im["image_tokens"]

            @torch.inference_mode()
            def encode():
                px = torch.randn(crops, 3, 336, 336, device=dev, dtype=torch.bfloat16)
                h = vision(pixel_values=px, output_hidden_states=True).hidden_states[-2][:, 1:]
                merged = h.reshape(-1, 4096)[:tokens] if h.numel() >= tokens * 4096 else h.reshape(-1, 4096)
                proj(merged).sum().item()

            for _ in range(a.warmup):
                encode()
            times = []
            for _ in range(a.runs):
                sync(); t = time.perf_counter(); encode(); sync()
                times.append(time.perf_counter() - t)
            report["images"].append({"image": im["image"], "num_crops": im["num_crops"], "crops": crops, "image_tokens": tokens,
                                     "text_tokens": im.get("text_tokens", 0), "encode_ms": statistics.median(times) * 1e3})
            log(f"image {im['image']} num_crops {im['num_crops']}: {crops} crops, encode {statistics.median(times) * 1e3:.1f} ms")

    if "kv" in scen:
        kv_bpt = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 2
        total = props.total_memory
        report["kv_cache"] = {"bytes_per_token": kv_bpt, "device_memory_bytes": total, "weights_bytes": params * 2,
                              "memory_fraction": 0.9, "max_tokens": int(max(0, 0.9 * total - params * 2) // kv_bpt)}
    report["memory"] = {"peak_host_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                        "peak_device_bytes": torch.cuda.max_memory_reserved()}
    json.dump(report, open(a.out, "w"), indent=2)
    log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
