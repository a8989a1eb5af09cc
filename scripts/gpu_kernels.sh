#!/usr/bin/env bash
# Issue 10's "measure first" on the GPU machine: every stage of a decoder layer at the
# Phi-3-vision-128k shapes (bf16, random weights), batch-1 and 10-row decode after 1024 cached
# tokens and a 1024-token prefill, ours (`phi3v bench breakdown`) beside the PyTorch peer's
# (bench/peer_kernels.py) in the same call. Results come back as $OUT/breakdown.tgz.
# Usage (device tool, carry .gpu): bash scripts/gpu_kernels.sh [ours-seconds-per-variant] [peer-seconds]
source scripts/gpu_env.sh
OURS=${1:-200}; PEER=${2:-90}; D=$W/breakdown; mkdir -p $D
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\n' > $D/cubecl.toml
ls .gpu/bench-cache.tgz.part-* >/dev/null 2>&1 && cat .gpu/bench-cache.tgz.part-* | tar xzf - -C $D --exclude=./autotune
# PEER_JSON=FILE: a peer breakdown measured earlier on the same GPU kind, instead of running
# the peer again (saves its minute of device time).
if [ -n "${PEER_JSON:-}" ]; then cp "$PEER_JSON" $D/peer_breakdown.json; else
timeout $PEER python3 bench/peer_kernels.py --preset cli/presets/phi3v-128k.json --out $D/peer_breakdown.json 2>&1 | grep -v Warning | tail -8
fi
# Ours with the model's kernels (burn_phi3v::kernels), then with the same steps composed from
# Burn ops (--composed-kernels): the kernels' effect, measured in the same call.
# VARIANTS="ours" times only the first.
for variant in ${VARIANTS:-ours composed}; do
  ( cd $D && timeout $OURS $B/phi3v bench breakdown --preset phi3v-128k --device cuda --out $D/$variant \
      $( [ $variant = composed ] && echo --composed-kernels ) \
      $( [ -f $D/peer_breakdown.json ] && echo --peer $D/peer_breakdown.json ) 2>&1 | grep -v "^\s*$" | tail -80 )
done
# NOSKINNY=1: also the 10-row decode with the skinny product off (Burn's matmul for the
# projections, every other kernel on): the skinny kernel's own effect.
if [ -n "${NOSKINNY:-}" ]; then
  ( cd $D && PHI3V_KERNELS_OFF=skinny_linear timeout $OURS $B/phi3v bench breakdown --preset phi3v-128k --device cuda --out $D/noskinny \
      --decode-batches 10 --prefill 0 --peer $D/peer_breakdown.json 2>&1 | grep -v "^\s*$" | tail -30 )
fi
tar czf $OUT/breakdown.tgz -C $D ours composed noskinny peer_breakdown.json 2>/dev/null; rm -f $D/cubecl.toml
