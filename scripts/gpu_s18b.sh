#!/usr/bin/env bash
# pre-tiles is off by default (TILES=1 runs it): the masked causal tiles were wrong on CUDA (session 18 call 2) and removed, so with TILES=1 causal prefill takes Burn's attention and only the image encode uses the tiling.
# Session 18 — written, not run: the second device call of the next session, after
# gpu_s18a.sh (its kernel cache returned and carried: fewer compilations). End to end on the
# phi3v-128k shapes (bf16), with the PyTorch peer in the same call (issue 6):
#     pre-burn, pre-scores, pre-tiles — prefill 1024/4096 and image encode at num_crops 16
#       (1344² image) under Burn's attention, `scores`, and the 4,2,2 tensor-core tiling with
#       causal attention through the materialised mask (PHI3V_KERNELS_ON=flash_tiles_causal;
#       use only if s18a's att/kernels showed it right: TILES=0 skips it);
#     gen — generation 1024 → 128 at 1 and 10 parallel, static and engine, the engine with
#       its paged rotary write (PHI3V_KERNELS_ON=rotary_write_paged);
#     peer — bench/peer_torch.py on the same prefill, image and generation points, then
#       `phi3v bench compare` for each of ours.
# Returns s18b.tgz and the kernel caches. Usage (device tool): bash scripts/gpu_s18b.sh (~480 s; PRE_S, GEN_S, PEER_S)
source scripts/gpu_env.sh
D=$W/bench; mkdir -p $D; RS=$OUT/s18b; mkdir -p $RS
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\n' > $D/cubecl.toml
[ -f .gpu/cache.tgz ] && tar xzf .gpu/cache.tgz -C $D
cd $D
P="--scenarios prefill,images --prompt-lengths 1024,4096 --prefill-batches 1 --images 1344x1344 --num-crops 16 --warmup 1 --runs 5"
PARTS=("pre-burn:PHI3V_FLASH_ATTENTION=burn:${PRE_S:-75}:$P" "pre-scores:PHI3V_FLASH_ATTENTION=scores:${PRE_S:-75}:$P")
[ "${TILES:-0}" != 0 ] && PARTS+=("pre-tiles:PHI3V_FLASH_ATTENTION=4,2,2 PHI3V_KERNELS_ON=flash_tiles_causal:${PRE_S:-75}:$P")
G="--scenarios generation --shapes 1024x128 --parallel 1,10 --batching static,engine --warmup 1 --generation-runs 2"
PARTS+=("gen:PHI3V_KERNELS_ON=rotary_write_paged:${GEN_S:-110}:$G")
bench_parts $RS "${PARTS[@]}"
cd $R
if [ "${PEER_S:-150}" != 0 ]; then
  s=$(date +%s)
  timeout ${PEER_S:-150} python3 bench/peer_torch.py --preset cli/presets/phi3v-128k.json --out $RS/peer.json --ours $RS/pre-burn/results.json \
    --scenarios prefill,images,generation --prompt-lengths 1024,4096 --prefill-batches 1 --parallel 1,10 --shapes 1024x128 --warmup 1 --runs 3 2>&1 | grep -v Warning | tail -12
  echo "=== peer rc=$? $(( $(date +%s) - s )) s"
  for name in pre-burn pre-scores pre-tiles gen; do
    [ -f $RS/$name/results.json ] && [ -f $RS/peer.json ] && $B/phi3v bench compare $RS/$name/results.json $RS/peer.json --bandwidth 4.8e12 > $RS/compare-$name.md
  done
  for name in pre-burn pre-tiles gen; do [ -f $RS/compare-$name.md ] && { echo "=== compare $name"; head -30 $RS/compare-$name.md; }; done
fi
(cd $OUT && tar czf s18b.tgz s18b && rm -rf s18b)
tar czf - -C $D . | split -b 15M - $OUT/cache.tgz.part-
ls -la $OUT
