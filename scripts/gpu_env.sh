#!/usr/bin/env bash
# Source at the start of every device call (docs/GPU.md recipe): Vulkan loader from .gl, release
# binaries from .gpu/bin (xz), CubeCL's kernel and autotune caches from .gpu/cache.tgz so kernels
# compiled in an earlier call are not compiled again. `save_caches` puts them into $OUT.
if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
export VK_DRIVER_FILES=${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}
B=$PWD/.gpu/bin
# bins.tar.xz (scripts/build_gpu_bins.sh): all binaries in one xz stream with a 320 MiB
# dictionary, so the code they share is stored once (27 MB instead of 50 as separate .xz).
# Once per carried tar: a script that sources this again (or calls one that does) skips it.
for t in "$B"/*.tar.xz; do [ -f "$t" ] && [ ! "$B/.unpacked" -nt "$t" ] && tar xJf "$t" -C "$B" && find "$B" -type f ! -name "*.xz" -exec chmod +x {} + && touch "$B/.unpacked"; done
# Single .xz files (a binary rebuilt since the tar) replace the tar's copies.
for f in "$B"/*.xz; do [[ $f == *.tar.xz ]] && continue; [ -f "$f" ] && xz -dkf "$f" && chmod +x "${f%.xz}"; done
export PHI3V_FIXTURES=$PWD/tests/fixtures PYTHONUNBUFFERED=1
# Persist compiled kernels (PTX / SPIR-V) next to the autotune results, both under ./target.
printf '[compilation]\ncache = "target"\n' > cubecl.toml
mkdir -p target; ls .gpu/cache.tgz.part-* >/dev/null 2>&1 && cat .gpu/cache.tgz.part-* > .gpu/cache.tgz
[ -f .gpu/cache.tgz ] && tar xzf .gpu/cache.tgz -C target
save_caches() { tar czf "$OUT/cache.tgz" -C target . 2>/dev/null; ls -la "$OUT/cache.tgz"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# job NAME CMD...: runs CMD in the background in /tmp/w/NAME with its own CubeCL caches (seeded
# from .gpu/cache.tgz), stdout/stderr in out.txt/err.txt there, at most $LIMIT seconds.
W=/tmp/w; LIMIT=${LIMIT:-420}
# JOB_TOML='…' job …: that cubecl.toml instead (printf format, %s = the job's folder), no cache
# seeded (e.g. a compilation log of every kernel the job compiles).
job() {
  local d=$W/$1; shift; mkdir -p "$d"
  if [ -n "${JOB_TOML:-}" ]; then printf "$JOB_TOML" "$d" > "$d/cubecl.toml"; else
    printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\n' > "$d/cubecl.toml"
    # JOB_AUTOTUNE_LEVEL=minimal job …: fewer autotune candidates (each compiles its kernel).
    [ -n "${JOB_AUTOTUNE_LEVEL:-}" ] && printf 'level = "%s"\n' "$JOB_AUTOTUNE_LEVEL" >> "$d/cubecl.toml"
    [ -f "$R/.gpu/cache.tgz" ] && tar xzf "$R/.gpu/cache.tgz" -C "$d"
  fi
  (cd "$d" && t0=$(date +%s) && timeout "$LIMIT" "$@" > out.txt 2> err.txt; echo "rc=$? ($(( $(date +%s) - t0 )) s)" >> out.txt) &
}
# collect: every job's out.txt and err.txt into /tmp/res as NAME.txt and NAME.err.
collect() { mkdir -p /tmp/res; for d in "$W"/*/; do n=$(basename "$d"); [ -f "$d/out.txt" ] && cp "$d/out.txt" /tmp/res/$n.txt; [ -f "$d/err.txt" ] && cp "$d/err.txt" /tmp/res/$n.err; done; true; }
show() { for n in "$@"; do echo "=== $n"; cat $W/$n/out.txt; grep -v ": [0-9.]* s$" $W/$n/err.txt | grep -v "^\s*$" | tail -${TAIL:-4}; done; }
R=$PWD
# The benchmark points of scripts/gpu_bench.sh (issue 6); gpu_check.sh compiles their kernels
# ahead in a job of its own so that the benchmark call finds them compiled.
BENCH_SHAPES=${BENCH_SHAPES:-"--prompt-lengths 128,512,1024,2048,4096,8192 --prefill-batches 1,8 --max-prefill-tokens 8192 --parallel 1,10,64,128 --shapes 1024x128,32x16 --images 336x336,1344x1344,2688x336 --num-crops 4,16 --latency-shape 1024x128"}
BENCH_TIMING=${BENCH_TIMING:-"--warmup 1 --runs 3"}
# `phi3v generate` on the tiny checkpoint (the astronaut_describe fixture's image and prompt, 10
# tokens, JSON with the token ids): append --device/--dtype.
GEN_TINY=(generate --model $R/tests/fixtures/models/phi3v-tiny --image $R/tests/fixtures/images/astronaut.png
  --prompt "What is the content of this image in details?" --max-new-tokens 10 --json)
# `phi3v bench breakdown` of decode steps after 1024 tokens (bf16, phi3v-128k shapes, no prefill)
# beside the eager peer's breakdown: append --decode-batches and --out.
DECODE_BREAKDOWN=(bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --prefill 0 --warmup 3 --runs 20
  --peer $R/docs/bench/breakdown-h200-kernels/peer.json)
# parity_jobs CASE…: the bf16 fixture parity on cuda, one job per case (compilation is per
# process, so the cases compile side by side); parity_report: their table rows, exit codes and
# failures (after `wait`).
parity_job() { job parity-$1-$2 $B/phi3v-plugin-conformance --device cuda --parity-only --parity-dtype $1 --cases $2; }
parity_jobs() { for c in "$@"; do parity_job bf16 $c; done; }
# parity_report [DT]: the DT (default bf16) parity jobs' table rows, exit codes and failures.
parity_report() {
  local dt=${1:-bf16}
  echo "=== parity $dt (one job per case) at $SECONDS s"; cat $W/parity-$dt-*/out.txt | grep "^| [a-z]\|rc=" | sort -u | cut -c1-300
  grep -h "differs\|instead of\|rror\| s$" $W/parity-$dt-*/err.txt 2>/dev/null | cut -c1-250 | head
}
# fixture_cases: the fixture suite's case names (tests/fixtures/cases; not the vision probes,
# which every parity job runs and `--cases` does not name).
fixture_cases() { ls tests/fixtures/cases/*.safetensors | xargs -n1 basename | sed 's/\.safetensors$//' | grep -v "^vision_probe"; }
# parity_dtype DT CASE…: the DT fixture parity on cuda, one job per case ($LIMIT s each), waits
# for those jobs alone (others may run beside them), then reports them (parity_report).
parity_dtype() {
  local dt=$1 c; shift
  for c in "$@"; do parity_job $dt $c; done
  while [ $(ls -d $W/parity-$dt-*/ | wc -l) -gt $(grep -l "^rc=" $W/parity-$dt-*/out.txt 2>/dev/null | wc -l) ]; do sleep 5; done
  parity_report $dt
}
# parity_into_rs [SECONDS]: the fixture parity suite on cuda bf16 (one job per case, each limited
# to PARITY_S or SECONDS, 180 by default), its results copied into $RS; returns to the caller's
# folder.
parity_into_rs() {
  (cd $R && LIMIT=${PARITY_S:-${1:-180}} parity_dtype bf16 $(fixture_cases))
  collect; cp /tmp/res/parity-* $RS/ 2>/dev/null
  echo "parity done at $SECONDS s"
}
# bench_parts DIR PART…: one `phi3v bench run` (phi3v-128k shapes on cuda) per part
# "name:VAR=value …:seconds:args", the variables set for that run only (none: empty), its
# results in DIR/name and its log in DIR/name.log; prints the exit code, the time and the log's tail.
# A variable PHI3V_BIN=NAME among them runs $B/NAME instead of $B/phi3v (another build of it).
bench_parts() {
  local dir=$1; shift
  local part name rest vars secs args s rc bin
  for part in "$@"; do
    name=${part%%:*}; rest=${part#*:}; vars=${rest%%:*}; rest=${rest#*:}; secs=${rest%%:*}; args=${rest#*:}
    bin=$(echo " $vars " | sed -nE 's/.* PHI3V_BIN=([^ ]+) .*/\1/p'); bin=${bin:-phi3v}
    s=$(date +%s)
    # Another build runs in a folder of its own: CubeCL's cache key is a kernel's type and
    # settings, not its code, so in one folder a build would load another's kernels (session 37:
    # an older build read a newer flash kernel's arguments wrong, CUDA_ERROR_ILLEGAL_ADDRESS).
    local bd=$PWD
    if [ "$bin" != phi3v ]; then
      bd=$PWD/../bench-$bin; mkdir -p "$bd"
      printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\n' > "$bd/cubecl.toml"
    fi
    (cd "$bd" && env $vars timeout "$secs" $B/$bin bench run --preset phi3v-128k --device cuda $args --out "$dir/$name" > "$dir/$name.log" 2>&1); rc=$?
    echo "=== $name (${vars:-defaults}) rc=$rc $(( $(date +%s) - s )) s"
    grep -v "^\s*$" "$dir/$name.log" | grep -v "^kernel cache\|parameters on" | tail -${TAIL:-5} | cut -c1-220
  done
}
# alternate DIR NAME SECS "ARGS" A "A_VARS" B "B_VARS" [ROUNDS]: an A/B comparison through
# bench_parts (quietly): NAME-compile (A's settings: its kernels compiled and tuned), then
# NAME-A-i and NAME-B-i alternating for i = 1..ROUNDS (2), so that drift between runs falls on
# both settings alike. Prints each log's summary lines (image encode, prefill, generation), named
# by the log.
alternate() {
  local dir=$1 name=$2 secs=$3 args=$4 a=$5 a_vars=$6 b=$7 b_vars=$8 rounds=${9:-2} i
  local parts=("$name-compile:$a_vars:$secs:$args")
  for i in $(seq $rounds); do parts+=("$name-$a-$i:$a_vars:$secs:$args" "$name-$b-$i:$b_vars:$secs:$args"); done
  TAIL=1 bench_parts $dir "${parts[@]}" > /dev/null
  grep -HE "^(image|prefill|generation)" $dir/$name-*.log | sed 's|^[^:]*/||' | cut -c1-230
}
# peer_breakdown: in $D, bench/peer_kernels.py's b=1 decode step and vision tower (4x4 grid)
# stage by stage, then `bench breakdown` of the same beside them, with the host sampled over
# PROFILE_STEPS (1500; 0: not sampled, for a phi3v built without `profile`) b=1 steps. Results
# in $RS: peer_bd.json, bd/, bd.log, profile/. Limits PBD_S (90 s) and BD_S (120 s).
peer_breakdown() {
  local s=$(date +%s) peer=() prof=()
  (cd $D && timeout ${PBD_S:-90} python3 $R/bench/peer_kernels.py --preset $R/cli/presets/phi3v-128k.json --decode-batches 1 --prefill 0 \
    --image-grid 4x4 --warmup 2 --runs 10 --out $RS/peer_bd.json 2>&1 | grep -v Warning | tail -3)
  echo "=== peer breakdown $(( $(date +%s) - s )) s"
  [ -s $RS/peer_bd.json ] && peer=(--peer $RS/peer_bd.json)
  [ "${PROFILE_STEPS:-1500}" != 0 ] && prof=(--profile $RS/profile --profile-steps ${PROFILE_STEPS:-1500})
  s=$(date +%s)
  (cd $D && timeout ${BD_S:-120} $B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --decode-batches 1 --prefill 0 \
    --image-grid 4x4 --warmup 3 --runs 20 "${prof[@]}" "${peer[@]}" --out $RS/bd > $RS/bd.log 2>&1)
  echo "=== breakdown rc=$? $(( $(date +%s) - s )) s"
  grep -E "^\| vision|^\| [a-z]|Sum of|Host" $RS/bd/breakdown.md 2>/dev/null | cut -c1-160 | head -50
  for f in $RS/profile/*.top.md; do [ -f "$f" ] && { echo "=== $(basename $f)"; head -30 "$f" | cut -c1-200; }; done
  true
}
# merge_caches DEST DIR…: CubeCL's caches are append-only files (autotune results and the compiled
# kernels' table of contents as JSON lines, `*.json.log`; the kernels themselves as a sequence of
# CBOR entries, `chunk0.cbor`, which the table names), and a key read twice keeps one value, so the
# caches of several jobs merge by appending each file onto the one at the same path in DEST.
# (Session 20 merged the tables without the chunks: a cache whose table names a missing chunk
# panics when read.)
merge_caches() {
  local dest=$1 d f; shift; mkdir -p "$dest"
  for d in "$@"; do
    (cd "$d" && find . -type f \( -name "*.json.log" -o -name "*.cbor" \)) | while read -r f; do
      mkdir -p "$dest/$(dirname "$f")"; cat "$d/$f" >> "$dest/$f"
    done
  done
}
# timed_folders NAME: D=$W/bench, a folder for timed runs with its own CubeCL caches seeded from
# .gpu/cache.tgz without the autotune results (taken when the GPU was shared, they are tuned
# again), and RS=$OUT/NAME for the results; cuBLAS on LD_LIBRARY_PATH (gpu_cublas.sh).
timed_folders() {
  D=$W/bench; mkdir -p "$D"; RS=$OUT/$1; mkdir -p "$RS"
  printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\n' > "$D/cubecl.toml"
  [ -f .gpu/cache.tgz ] && tar xzf .gpu/cache.tgz -C "$D" --exclude=./autotune
  source scripts/gpu_cublas.sh
}
# plugin_launch_cost DIR PLUGIN [SECONDS]: issue 9's launch cost, batch-1 decode latency on the
# tiny preset (f32, launch-bound) on `cuda`, then through the plugin library PLUGIN, one after
# the other on a quiet GPU; results in DIR/launch-cuda and DIR/launch-plugin.
plugin_launch_cost() {
  local dir=$1 pl=$2 secs=${3:-60} d n rc s=$(date +%s)
  for d in cuda:0 plugin:$pl:0; do
    n=${d%%:*}; mkdir -p "$W/launch-$n"
    (cd "$W/launch-$n" && timeout "$secs" $B/phi3v bench run --preset tiny --device $d --dtype f32 --scenarios latency --latency-shape 128x64 \
      --warmup 2 --runs 10 --out "$dir/launch-$n" > "$dir/launch-$n.log" 2>&1); rc=$?
    echo "=== launch-$n rc=$rc $(( $(date +%s) - s )) s"; grep -i "latency\|error" "$dir/launch-$n.log" | cut -c1-200 | tail -4
  done
}
# attention_ab DIR: `phi3v bench attention --flash "scores;mma"` in bf16 then f16 on the quiet GPU
# (prefill 1024 and 4096, causal, 96-dim heads; CLIP's 17×16×577×64, ${ATT_S:-45} s each): each
# kernel's time and its output's relative difference against `scores`, in DIR/att-DTYPE.{json,log};
# then torch's SDPA at the same shapes (bench/peer_attention.py), in DIR/peer-att-DTYPE.json.
attention_ab() {
  local dir=$1 dt s shapes="1,32,1024,1024,96,causal;1,32,4096,4096,96,causal;17,16,577,577,64"
  for dt in bf16 f16; do
    s=$(date +%s)
    timeout ${ATT_S:-45} $B/phi3v bench attention --device cuda --dtype $dt --flash "scores;mma" --shapes "$shapes" \
      --warmup 2 --runs 10 --out $dir/att-$dt.json > $dir/att-$dt.log 2>&1
    echo "=== attention $dt rc=$? $(( $(date +%s) - s )) s"; grep "^|\|panicked\|refused\|rror" $dir/att-$dt.log | sort -u | head -12 | cut -c1-200
    timeout 40 python3 $R/bench/peer_attention.py --dtype $dt --shapes "$shapes" --out $dir/peer-att-$dt.json 2>&1 | tail -5
  done
}
# gen_args N: `bench run`'s arguments for generation through the engine, 1024 → 128 tokens, N
# parallel requests (the figures issue 10's decode goals are set in).
gen_args() { echo "--scenarios generation --shapes 1024x128 --warmup 1 --runs 8 --generation-runs 1 --batching engine --parallel $1"; }
# Every decoder product on cuBLAS(Lt), a decode step's included (the norms and SiLU·mul then by
# kernels of their own): the setting gpu_s37b.sh compares with the defaults.
BLAS_DECODE="PHI3V_BLAS_MIN_ROWS=1 PHI3V_SKINNY_MAX_ROWS=0"
# attention_variants DIR NAME:VARS…: `phi3v bench attention --flash "scores;mma"` in bf16 at
# attention_ab's shapes once per variant, its environment VARS set for that run only (none:
# empty), in DIR/att-NAME.{json,log} (${ATT_S:-60} s each); prints each table and any panic.
attention_variants() {
  local dir=$1 part name vars s; shift
  for part in "$@"; do
    IFS=: read -r name vars <<< "$part"
    s=$(date +%s)
    env $vars timeout ${ATT_S:-60} $B/phi3v bench attention --device cuda --dtype bf16 --flash "scores;mma" \
      --shapes "1,32,1024,1024,96,causal;1,32,4096,4096,96,causal;17,16,577,577,64" --warmup 3 --runs 20 --out $dir/att-$name.json > $dir/att-$name.log 2>&1
    echo "=== attention $name rc=$? $(( $(date +%s) - s )) s"; grep "^|\|panicked\|refused\|rror" $dir/att-$name.log | sort -u | head -12 | cut -c1-200
  done
}
# breakdown_variants UNTIL NAME:VARS…: the decode breakdown at ${BD_ROWS:-10} rows after 1024 tokens (bf16,
# phi3v-128k shapes, no prefill; ${BD_S:-40} s each) once per variant, its environment VARS set
# for that run only (none: empty), results in $RS/bd-NAME; skips the variants left when the
# call has run UNTIL seconds. Prints each run's stages and any panic.
breakdown_variants() {
  local until=$1 part name vars; shift
  for part in "$@"; do
    IFS=: read -r name vars <<< "$part"
    [ $SECONDS -gt $until ] && { echo "=== breakdown $name: no time left ($SECONDS s)"; continue; }
    env $vars timeout ${BD_S:-40} $B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --prefill 0 --no-image \
      --warmup 3 --runs 20 --decode-batches ${BD_ROWS:-10} --out $RS/bd-$name > $RS/bd-$name.log 2>&1
    echo "=== breakdown $name (${vars:-defaults}) rc=$? at $SECONDS s"
    grep -E "proj|attention \||whole" $RS/bd-$name/breakdown.md 2>/dev/null | grep -v "^# " | cut -c1-110 | head -7
    grep -E "panicked|rror" $RS/bd-$name.log | head -2 | cut -c1-200
  done
}
# Nsight Compute where the image has it (no Nsight Systems there): NCU, the sections a kernel's
# report takes (speed of light, occupancy, memory, warp states and their stall reasons, launch
# and scheduler statistics), and ncu_report FILE: the stall reasons above 0.5 cycles per
# instruction and the figures that decide a memory-bound kernel's next change.
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
NCU_SECTIONS="--section SpeedOfLight --section Occupancy --section MemoryWorkloadAnalysis --section WarpStateStats --section LaunchStats --section SchedulerStats --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio"
ncu_report() {
  grep -E "stalled_" "$1" | awk '$NF+0 > 0.5' | sed 's/smsp__average_warps_issue_stalled_//;s/_per_issue_active.ratio//' | awk '{print $1, $NF}' | paste -sd' ' | cut -c1-400
  grep -E "^  [a-z_]+.*\(|Duration|DRAM Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Grid Size|Block Limit Reg|Block Limit Shared|Warp Cycles Per Issued|No Eligible|L1/TEX Hit" "$1" | sed 's/  */ /g' | cut -c1-100 | head -60
}
