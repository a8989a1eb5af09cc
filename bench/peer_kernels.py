#!/usr/bin/env python3
"""The PyTorch peer of `phi3v bench breakdown`: the same stages of a Phi-3 decoder layer at the
same shapes (random bf16 weights, torch eager ops as transformers' Phi3 modules compose them,
SDPA attention), timed the same way (warm-up calls, then `runs` calls between two
synchronisations, mean per call), and the whole step through transformers' Phi3ForCausalLM with
a DynamicCache. Writes the JSON of cli/src/bench/breakdown.rs.

Usage (GPU machine, same call as ours):
  python3 bench/peer_kernels.py --preset cli/presets/phi3v-128k.json --out peer_breakdown.json
  phi3v bench breakdown --peer peer_breakdown.json --out breakdown
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def timer(warmup, runs):
    def time_it(f):
        for _ in range(warmup):
            f()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(runs):
            f()
        torch.cuda.synchronize()
        return (time.perf_counter() - t) * 1e6 / runs
    return time_it


def rms_norm(x, w, eps):
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return w * x.to(dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rotary(x, cos, sin):
    return x * cos + rotate_half(x) * sin


def tables(inv_freq, positions, mscale, dtype):
    freqs = positions.float()[:, :, None] * inv_freq[None, None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * mscale).to(dtype)[:, None], (emb.sin() * mscale).to(dtype)[:, None]


def phase(cfg, W, time_it, b, s, ctx, dev, dtype):
    hidden, h = cfg["hidden_size"], cfg["num_attention_heads"]
    kvh = cfg.get("num_key_value_heads", h)
    hd, inter, eps = hidden // h, cfg["intermediate_size"], cfg["rms_norm_eps"]
    layers = cfg["num_hidden_layers"]
    rnd = lambda *shape: torch.randn(*shape, device=dev, dtype=dtype)
    inv_freq = 1.0 / (cfg.get("rope_theta", 10000.0) ** (torch.arange(0, hd, 2, device=dev).float() / hd))
    positions = torch.arange(ctx, ctx + s, device=dev)[None].expand(b, s)
    factor = cfg.get("max_position_embeddings", 1) / cfg.get("original_max_position_embeddings", cfg.get("max_position_embeddings", 1))
    mscale = math.sqrt(1 + math.log(factor) / math.log(cfg["original_max_position_embeddings"])) if factor > 1 else 1.0
    cos, sin = tables(inv_freq, positions, mscale, dtype)
    x = rnd(b, s, hidden)
    qkv = F.linear(x, W["qkv"])
    heads = lambda t, n: t.view(b, s, n, hd).transpose(1, 2)
    q = heads(qkv[..., : h * hd], h)
    k = heads(qkv[..., h * hd: (h + kvh) * hd], kvh)
    v = heads(qkv[..., (h + kvh) * hd:], kvh)
    ck, cv = (rnd(b, kvh, ctx, hd), rnd(b, kvh, ctx, hd)) if ctx else (None, None)
    keys = torch.cat((ck, k), 2) if ctx else k
    values = rnd(b, kvh, ctx + s, hd)
    causal = ctx == 0 and s > 1
    attn_out, gate_up, act = rnd(b, s, h * hd), rnd(b, s, 2 * inter), rnd(b, s, inter)
    stages = []

    def stage(name, per_layer, us):
        stages.append({"name": name, "us": us, "per_step": per_layer * layers if per_layer else 1})

    stage("input_layernorm", 1, time_it(lambda: rms_norm(x, W["ln"], eps)))
    stage("qkv_proj", 1, time_it(lambda: F.linear(x, W["qkv"])))
    stage("rotary (q and k)", 1, time_it(lambda: (rotary(q, cos, sin), rotary(k, cos, sin))))
    if ctx:
        stage("kv-cache append (k and v)", 1, time_it(lambda: (torch.cat((ck, k), 2), torch.cat((cv, v), 2))))
    stage("attention", 1, time_it(lambda: F.scaled_dot_product_attention(q, keys, values, is_causal=causal)))
    stage("o_proj", 1, time_it(lambda: F.linear(attn_out, W["o"])))
    stage("residual add", 2, time_it(lambda: x + x))
    stage("post_attention_layernorm", 1, time_it(lambda: rms_norm(x, W["ln"], eps)))
    stage("gate_up_proj", 1, time_it(lambda: F.linear(x, W["gate_up"])))
    stage("silu(gate)·up", 1, time_it(lambda: gate_up[..., inter:] * F.silu(gate_up[..., :inter])))
    stage("down_proj", 1, time_it(lambda: F.linear(act, W["down"])))
    # The projections as burn-phi3v's decoder layer runs them (each fused with the norm before
    # or the residual add / SiLU·mul after): the same work here in eager PyTorch, under the
    # names `phi3v bench breakdown` gives them (composites of the stages above: not to be
    # added to them).
    stage("input_layernorm + qkv_proj", 1, time_it(lambda: F.linear(rms_norm(x, W["ln"], eps), W["qkv"])))
    stage("o_proj + residual add", 1, time_it(lambda: x + F.linear(attn_out, W["o"])))

    def norm_gate_up_act():
        gu = F.linear(rms_norm(x, W["ln"], eps), W["gate_up"])
        return gu[..., inter:] * F.silu(gu[..., :inter])
    stage("post_attention_layernorm + gate_up_proj + silu(gate)·up", 1, time_it(norm_gate_up_act))
    stage("down_proj + residual add", 1, time_it(lambda: x + F.linear(act, W["down"])))
    stage("rotary tables (host)", 0, time_it(lambda: tables(inv_freq, positions, mscale, dtype)))
    last = x[:, -1:]
    stage("final norm", 0, time_it(lambda: rms_norm(last, W["ln"], eps)))
    stage("lm_head (last token)", 0, time_it(lambda: F.linear(last, W["lm_head"])))

    def layer():
        r = x
        y = rms_norm(x, W["ln"], eps)
        qkv = F.linear(y, W["qkv"])
        q = rotary(heads(qkv[..., : h * hd], h), cos, sin)
        k = rotary(heads(qkv[..., h * hd: (h + kvh) * hd], kvh), cos, sin)
        v = heads(qkv[..., (h + kvh) * hd:], kvh)
        if ctx:
            k, v = torch.cat((ck, k), 2), torch.cat((cv, v), 2)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).reshape(b, s, h * hd)
        r = r + F.linear(o, W["o"])
        y = rms_norm(r, W["ln"], eps)
        gu = F.linear(y, W["gate_up"])
        return r + F.linear(gu[..., inter:] * F.silu(gu[..., :inter]), W["down"])

    layer_us = time_it(layer)
    return {"phase": f"decode b={b} ctx={ctx}" if ctx else f"prefill {s}", "stages": stages, "layer_us": layer_us,
            "step_us": None}


def vision_phase(time_it, rows, cols, dev, dtype):
    """The image encoding of one image with a rows x cols crop grid: CLIP ViT-L/14-336 (23 of 24
    layers, as Phi-3-vision reads layer -2) stage by stage in eager ops as transformers'
    CLIPEncoderLayer composes them (SDPA attention), and the whole encoding through
    transformers' CLIPVisionModel plus the 2-layer projection (as bench/peer_torch.py)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel
    d, heads, inter, size, patch, eps = 1024, 16, 4096, 336, 14, 1e-5
    layers_used, crops = 23, 1 + rows * cols
    tokens = 1 + (size // patch) ** 2
    rnd = lambda *shape: torch.randn(*shape, device=dev, dtype=dtype) * 0.02
    Wv = {"patch": rnd(d, 3, patch, patch), "cls": rnd(d), "pos": rnd(tokens, d), "ln_w": rnd(d) + 1, "ln_b": rnd(d),
          "q": rnd(d, d), "k": rnd(d, d), "v": rnd(d, d), "o": rnd(d, d), "b": rnd(d), "fc1": rnd(inter, d),
          "fc1_b": rnd(inter), "fc2": rnd(d, inter), "p0": rnd(3072, 4 * d), "p0_b": rnd(3072), "p2": rnd(3072, 3072)}
    px = torch.randn(crops, 3, size, size, device=dev, dtype=dtype)
    x, hidden = rnd(crops, tokens, d) * 50, rnd(crops, tokens, inter) * 50
    split = lambda t: t.view(crops, tokens, heads, d // heads).transpose(1, 2)
    q, k, v = (split(F.linear(x, Wv[n], Wv["b"])) for n in ("q", "k", "v"))
    merged = rnd((crops * (tokens - 1)) // 4, 4 * d)
    stages = []

    def stage(name, per_step, us):
        stages.append({"name": "vision: " + name, "us": us, "per_step": per_step})

    def embeddings():
        e = F.conv2d(px, Wv["patch"], stride=patch).flatten(2).transpose(1, 2)
        e = torch.cat((Wv["cls"].expand(crops, 1, d), e), 1) + Wv["pos"]
        return F.layer_norm(e, (d,), Wv["ln_w"], Wv["ln_b"], eps)
    stage("embeddings + pre_layrnorm", 1, time_it(embeddings))
    stage("layer_norm1", layers_used, time_it(lambda: F.layer_norm(x, (d,), Wv["ln_w"], Wv["ln_b"], eps)))
    stage("q_proj + k_proj + v_proj", layers_used, time_it(lambda: [F.linear(x, Wv[n], Wv["b"]) for n in ("q", "k", "v")]))
    stage("attention", layers_used,
          time_it(lambda: F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(crops, tokens, d)))
    # As burn-phi3v's rows: each residual add with the product before it (the add listed alone too).
    stage("out_proj + residual", layers_used, time_it(lambda: x + F.linear(x, Wv["o"], Wv["b"])))
    stage("residual add (alternative: a pass of its own)", 2 * layers_used, time_it(lambda: x + x))
    stage("layer_norm2", layers_used, time_it(lambda: F.layer_norm(x, (d,), Wv["ln_w"], Wv["ln_b"], eps)))
    stage("fc1", layers_used, time_it(lambda: F.linear(x, Wv["fc1"], Wv["fc1_b"])))
    stage("quick_gelu", layers_used, time_it(lambda: hidden * torch.sigmoid(1.702 * hidden)))
    stage("fc2 + residual", layers_used, time_it(lambda: x + F.linear(hidden, Wv["fc2"], Wv["b"])))
    stage("img_projection (HD layout excluded)", 1,
          time_it(lambda: F.linear(F.gelu(F.linear(merged, Wv["p0"], Wv["p0_b"])), Wv["p2"], Wv["p0_b"])))
    vcfg = CLIPVisionConfig(hidden_size=d, intermediate_size=inter, num_hidden_layers=24, num_attention_heads=heads,
                            image_size=size, patch_size=patch, projection_dim=768, hidden_act="quick_gelu")
    vcfg._attn_implementation = "sdpa"
    with torch.device(dev):
        vision = CLIPVisionModel._from_config(vcfg, torch_dtype=dtype).eval()
        proj = torch.nn.Sequential(torch.nn.Linear(4 * d, 3072), torch.nn.GELU(), torch.nn.Linear(3072, 3072)).to(dtype)
    # The first encoder layer, wherever this transformers version keeps it.
    layer = next(m for m in vision.modules() if type(m).__name__ == "CLIPEncoderLayer")

    def run_layer():
        try:  # transformers 4.x: (hidden_states, attention_mask, causal_attention_mask)
            return layer(x, None, None)
        except TypeError:  # later versions dropped the causal mask argument
            return layer(x, attention_mask=None)
    layer_us = time_it(run_layer)

    def encode():
        h = vision(pixel_values=px, output_hidden_states=True).hidden_states[-2][:, 1:]
        return proj(h.reshape(-1, 4 * d))
    return {"phase": f"vision {rows}x{cols} grid, {crops} crops", "stages": stages, "layer_us": layer_us,
            "step_us": time_it(encode)}


def whole_steps(cfg, phases, time_it, dev, dtype, context, batches, prefill):
    """The whole step through transformers' Phi3ForCausalLM (DynamicCache cropped back after every call)."""
    from transformers import DynamicCache, Phi3Config, Phi3ForCausalLM
    keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "original_max_position_embeddings", "rms_norm_eps", "rope_theta"]
    pc = Phi3Config(**{k: cfg[k] for k in keys if k in cfg})
    pc._attn_implementation = "sdpa"
    with torch.device(dev):
        model = Phi3ForCausalLM(pc).to(dtype).eval()
    with torch.no_grad():
        for b in batches:
            ids = torch.randint(100, 30000, (b, context), device=dev)
            cache = DynamicCache()
            model(ids, past_key_values=cache, use_cache=True)
            nxt = torch.randint(100, 30000, (b, 1), device=dev)

            def step():
                model(nxt, past_key_values=cache, use_cache=True, logits_to_keep=1)
                cache.crop(context)

            phases[f"decode b={b} ctx={context}"]["step_us"] = time_it(step)
            del cache
        if prefill:
            ids = torch.randint(100, 30000, (1, prefill), device=dev)
            phases[f"prefill {prefill}"]["step_us"] = time_it(lambda: model(ids, use_cache=False, logits_to_keep=1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--decode-batches", default="1,10")
    ap.add_argument("--prefill", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--image-grid", default="4x4", help="crop grid of the vision phase (ROWSxCOLS); 'none' skips it")
    a = ap.parse_args()
    cfg = json.load(open(a.preset))
    dev, dtype = "cuda", torch.bfloat16
    hidden, h = cfg["hidden_size"], cfg["num_attention_heads"]
    kvh, hd, inter = cfg.get("num_key_value_heads", h), hidden // h, cfg["intermediate_size"]
    rnd = lambda *shape: torch.randn(*shape, device=dev, dtype=dtype) * 0.02
    W = {"ln": rnd(hidden) + 1, "qkv": rnd((h + 2 * kvh) * hd, hidden), "o": rnd(hidden, h * hd),
         "gate_up": rnd(2 * inter, hidden), "down": rnd(hidden, inter), "lm_head": rnd(cfg["vocab_size"], hidden)}
    time_it = timer(a.warmup, max(a.runs, 1))
    batches = [int(x) for x in a.decode_batches.split(",") if x]
    phases = {}
    with torch.no_grad():
        for b in batches:
            log(f"decode b={b} ctx={a.context}")
            p = phase(cfg, W, time_it, b, 1, a.context, dev, dtype)
            phases[p["phase"]] = p
        if a.prefill:
            log(f"prefill {a.prefill}")
            p = phase(cfg, W, time_it, 1, a.prefill, 0, dev, dtype)
            phases[p["phase"]] = p
        if a.image_grid != "none":
            rows, cols = (int(v) for v in a.image_grid.lower().split("x"))
            log(f"vision {rows}x{cols}")
            try:
                p = vision_phase(time_it, rows, cols, dev, dtype)
                phases[p["phase"]] = p
            except Exception as e:  # keep the decoder's figures when the vision phase fails
                log(f"vision phase not measured: {e!r}")
    del W
    try:
        whole_steps(cfg, phases, time_it, dev, dtype, a.context, batches, a.prefill)
    except Exception as e:  # keep the stage figures when the whole-model step fails
        log(f"whole step not measured: {e!r}")
    for p in phases.values():
        if p["step_us"] is None:
            p["step_us"] = 0.0  # not measured
    out = {"engine": f"torch {torch.__version__} (eager, SDPA)", "device": torch.cuda.get_device_name(),
           "dtype": "bf16", "preset": cfg.get("_name_or_path", a.preset), "phases": list(phases.values())}
    json.dump(out, open(a.out, "w"), indent=1)
    for p in phases.values():
        log(f"{p['phase']}: layer {p['layer_us']:.1f} us, step {p['step_us'] / 1e3:.2f} ms")


if __name__ == "__main__":
    main()
