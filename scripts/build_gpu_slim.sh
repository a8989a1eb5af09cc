#!/usr/bin/env bash
# Like scripts/build_gpu_bins.sh, but packs only the binaries a device call needs, so that the
# tree that travels stays under the device tool's 64 MiB with a kernel-cache part beside it
# (the full pack is 33 MB). Default: phi3v and the kernels and engine test binaries (19 MB).
# Usage: [TESTS="kernels engine"] [PROF=1] bash scripts/build_gpu_slim.sh   (~25 min after a library change)
set -euo pipefail
cd "$(dirname "$0")/.."
P="-p phi3v-cli -p phi3v-tests -p phi3v-plugin-cuda -p phi3v-plugin-iluvatar"
F=phi3v-cli/cuda,phi3v-cli/wgpu,phi3v-cli/plugin,phi3v-tests/cuda,phi3v-tests/wgpu,phi3v-tests/plugin
TESTS=${TESTS:-kernels engine}
cargo build --release $P --features $F
S=$(mktemp -d) && cp target/release/phi3v "$S/"
cargo test --release $P --features $F --no-run $(for t in $TESTS; do echo --test $t; done) --message-format=json 2>/dev/null \
  | python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], sys.argv[1] + "/" + m["target"]["name"])
        print("test binary", m["target"]["name"])' "$S"
# PROF=1: also phi3v with the host profiler (feature `profile`, symbols kept) as phi3v-prof, for
# `bench breakdown --profile` (only phi3v-cli recompiles; about 8 MB more).
if [ "${PROF:-0}" = 1 ]; then
  cargo rustc --release -p phi3v-cli --bin phi3v --features cuda,wgpu,plugin,profile -- -C strip=debuginfo
  cp target/release/phi3v "$S/phi3v-prof"
fi
mkdir -p .gpu/bin && rm -f .gpu/bin/*
(cd "$S" && tar cf - $(ls) | xz -T2 --lzma2=preset=9,dict=192MiB > "$OLDPWD/.gpu/bin/bins.tar.xz") && rm -rf "$S"
du -sh .gpu/bin
