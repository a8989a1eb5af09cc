#!/usr/bin/env bash
# Benchmarks on the GPU machine: `phi3v bench run` for the Phi-3-vision-128k shapes (random
# bf16 weights on CUDA), then the PyTorch peer on the same shapes, then `phi3v bench compare`.
# Results (card, graphs, JSON, CSV, comparison) come back as $OUT/bench.tgz.
# Usage (device tool, carry .gpu and .gl): [LOAD=seconds] bash scripts/gpu_bench.sh [ours-seconds] [peer-seconds]
# (0 seconds skips that part; LOAD > 0 adds the server load test on the real shapes; PEER_OURS names
# the part whose results.json gives the peer its images, default `ours`.)
source scripts/gpu_env.sh
OURS=${1:-300}; PEER=${2:-150}; D=$W/bench; mkdir -p $D
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\n' > $D/cubecl.toml
[ -f .gpu/cache.tgz ] && tar xzf .gpu/cache.tgz -C $D
# Compiled kernels from gpu_check.sh's bench-warm job (not its autotune results, measured
# under load: autotune runs again here, on a quiet GPU, but compiles nothing twice).
ls .gpu/bench-cache.tgz.part-* >/dev/null 2>&1 && cat .gpu/bench-cache.tgz.part-* | tar xzf - -C $D --exclude=./autotune
# Every new shape compiles and autotunes its kernels (minutes on a fresh machine); results are
# written after every point.
SHAPES=${SHAPES:-"$BENCH_SHAPES $BENCH_TIMING"}
# PARTS="name:seconds:args;…" runs several `bench run`s in turn (e.g. generation first, so that a
# time limit cuts the less wanted points); the default is one run `ours` of $SHAPES.
PARTS=${PARTS:-"ours:$OURS:$SHAPES"}
IFS=';' read -ra PART_LIST <<< "$PARTS"
for part in "${PART_LIST[@]}"; do
  name=${part%%:*}; rest=${part#*:}; secs=${rest%%:*}; args=${rest#*:}
  [ "$secs" != 0 ] && ( cd $D && timeout $secs $B/phi3v bench run --preset phi3v-128k --device cuda $args --out $D/$name 2>&1 | grep -v "^\s*$" | tail -40 )
done
if [ "${PEER}" != 0 ]; then
  timeout $PEER python3 bench/peer_torch.py --preset cli/presets/phi3v-128k.json --out $D/peer.json --ours $D/${PEER_OURS:-ours}/results.json \
    ${PEER_ARGS:-$(echo $SHAPES | sed 's/--images [^ ]*//; s/--num-crops [^ ]*//') --scenarios prefill,generation,images,kv,latency} 2>&1 | grep -v Warning | tail -25
  for part in "${PART_LIST[@]}"; do name=${part%%:*}
    [ -f $D/$name/results.json ] && [ -f $D/peer.json ] && $B/phi3v bench compare $D/$name/results.json $D/peer.json --bandwidth ${BANDWIDTH:-4.8e12} | tee $D/compare-$name.md
  done
fi
for part in "${PART_LIST[@]}"; do cat $D/${part%%:*}/card.md 2>/dev/null | head -40; done
# The OpenAI server under load on the real shapes (random weights of the preset's config, the
# tiny checkpoint's tokenizer): server/tests/load.rs built with the cuda feature, in .gpu/bin/load.
if [ -x $B/load ] && [ "${LOAD:-0}" != 0 ]; then
  M=/tmp/phi3v-128k-random; mkdir -p $M; cp tests/fixtures/models/phi3v-tiny/*.json $M/; rm -f $M/model.safetensors.index.json
  cp cli/presets/phi3v-128k.json $M/config.json
  ( cd $D && PHI3V_SERVER_TEST_DEVICE=cuda PHI3V_SERVER_LOAD_MODEL=$M PHI3V_SERVER_LOAD_NO_WEIGHTS=1 PHI3V_SERVER_LOAD_EXACT=0 \
    PHI3V_SERVER_LOAD_REQUESTS=${LOAD_REQUESTS:-200} PHI3V_SERVER_LOAD_TOKENS=32 PHI3V_SERVER_LOAD_LIMIT_S=$LOAD \
    timeout $(( LOAD + 90 )) $B/load --nocapture 2>&1 | grep -E "^load:|panicked|test result|error" | tee $D/server-load.txt )
fi
(cd $D && tar czf $OUT/bench.tgz $(for p in "${PART_LIST[@]}"; do echo ${p%%:*}; done) peer.json compare-*.md server-load.txt 2>/dev/null); rm -f $D/cubecl.toml
# Kernel caches for the next call, in parts under the 16 MB a returned file may have.
tar czf - -C $D --exclude=./peer.json --exclude='./compare-*' $(for p in "${PART_LIST[@]}"; do echo --exclude=./${p%%:*}; done) . | split -b 15M - $OUT/cache.tgz.part-; ls -la $OUT
