#!/usr/bin/env bash
# RUN in session 18 (call 2, docs/kernels.md); flash_tiles_causal, which it opts in, was removed after this call (wrong on CUDA): the name is now ignored.
# Session 18, third call (after gpu_s18a.sh, whose kernel cache it carries as
# .gpu/cache.tgz.part-aa): what s18a's compilation cut short, within ~400 s.
#   att — bench attention at the prefill 1024 (causal) and vision-tower shapes: Burn's, scores,
#         and the 4,2,2 tiling with the causal limit as a mask; each output's difference from
#         Burn's (bf16) says whether scores and the masked tiles are right on CUDA;
#   pbd — peer_kernels.py's vision phase alone (s18a's failed on transformers' module layout);
#   bdv — the vision breakdown beside it, with the LayerNorm kernel opted in
#         (PHI3V_KERNELS_ON=layer_norm; the breakdown also times Burn's composed norm);
#   kernels-f32 (background) — the kernels test on cuda f32 (the LayerNorm kernel's first
#         check on CUDA; bf16's compilation does not fit the call);
#   pre — prefill 1024 and image encode at num_crops 16 with PHI3V_FLASH_ATTENTION=scores.
source scripts/gpu_env.sh
D=$W/bench; mkdir -p $D; RS=$OUT/s18c; mkdir -p $RS
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\n' > $D/cubecl.toml
[ -f .gpu/cache.tgz ] && tar xzf .gpu/cache.tgz -C $D
[ "${TESTS_S:-330}" != 0 ] && LIMIT=${TESTS_S:-330} job kernels-f32 env PHI3V_TEST_DEVICES=cuda:0:f32 $B/kernels --nocapture
cd $D; export PHI3V_KERNELS_ON=flash_tiles_causal
s=$(date +%s); timeout ${ATT_S:-90} $B/phi3v bench attention --device cuda --dtype bf16 --flash "burn;scores;4,2,2" \
  --shapes "1,32,1024,1024,96,causal;17,16,577,577,64" --warmup 3 --runs 20 --out $RS/att.json > $RS/att.md 2> $RS/att.log
echo "=== att rc=$? $(( $(date +%s) - s )) s"; cat $RS/att.md | cut -c1-200
cd $R; s=$(date +%s)
timeout ${PBD_S:-60} python3 bench/peer_kernels.py --preset cli/presets/phi3v-128k.json --decode-batches 1 --prefill 0 --image-grid 4x4 \
  --warmup 2 --runs 10 --out $RS/peer_bd.json 2>&1 | grep -v Warning | tail -3
echo "=== pbd $(( $(date +%s) - s )) s"
cd $D; s=$(date +%s)
PEER=(); [ -s $RS/peer_bd.json ] && PEER=(--peer $RS/peer_bd.json)
PHI3V_KERNELS_ON=flash_tiles_causal,layer_norm timeout ${BDV_S:-150} $B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --decode-batches 1 --context 16 --prefill 0 \
  --image-grid 4x4 --flash "burn;scores;4,2,2" --warmup 2 --runs 10 "${PEER[@]}" --out $RS/bdv > $RS/bdv.log 2>&1
echo "=== bdv rc=$? $(( $(date +%s) - s )) s"; grep -A 24 "^## vision" $RS/bdv/breakdown.md | cut -c1-200
[ -f $RS/bdv/breakdown.md ] || grep "^  \|^vision" $RS/bdv.log | tail -22
unset PHI3V_KERNELS_ON
bench_parts $RS "pre-scores:PHI3V_FLASH_ATTENTION=scores:${PRE_S:-90}:--scenarios prefill,images --prompt-lengths 1024 --prefill-batches 1 --images 1344x1344 --num-crops 16 --warmup 1 --runs 3"
cd $R
wait; collect; cp /tmp/res/kernels-* $RS/ 2>/dev/null
echo "=== kernels-f32"; grep -E "test result|FAIL|panicked|rc=|layer_norm" $W/kernels-f32/out.txt $W/kernels-f32/err.txt | cut -c1-220
(cd $OUT && tar czf s18c.tgz s18c && rm -rf s18c)
tar czf - -C $D . | split -b 15M - $OUT/cache.tgz.part-
