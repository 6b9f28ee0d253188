#!/usr/bin/env bash
# Runs every fuzz target of lmi-agent for SECONDS each (default 30): the Runtime API's request handling
# (runtime_api), spec validation (spec), and the configuration layers and runtime catalog (config).
#
#   tests/fuzz/run.sh            # 30 s each (what tests/run.sh and CI run)
#   tests/fuzz/run.sh 3600       # an hour each, by hand
#   tests/fuzz/run.sh 60 spec    # one target
#
# cargo-fuzz builds with libFuzzer and AddressSanitizer, which need unstable compiler flags: the installed
# toolchain is used with RUSTC_BOOTSTRAP=1 (no nightly download needed). Seeds are in seeds/<target>/; the corpus
# grows in corpus/<target>/ and is kept between runs; an input that fails is written to artifacts/<target>/
# and the run fails. Reproduce one with: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz <target> <file>
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(runtime_api spec config)

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
# The sanitized build takes minutes from scratch: keep it outside the checkout so that later runs (and CI's
# fresh clones on the same machine) only rebuild what changed.
target_dir="${LMI_FUZZ_TARGET_DIR:-/var/cache/lmi-agent/fuzz-target}"
mkdir -p "$target_dir"

for t in "${targets[@]}"; do
  corpus="tests/fuzz/corpus/$t"
  mkdir -p "$corpus"
  echo "== fuzz $t for ${seconds}s (corpus $(find "$corpus" -type f | wc -l) inputs)"
  # -rss_limit_mb: a single input may not make the process grow past it; -timeout: nor run longer (s).
  log="$target_dir/$t.log"
  if ! cargo fuzz run --fuzz-dir tests/fuzz --target-dir "$target_dir" "$t" "$corpus" "tests/fuzz/seeds/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 80 "$log" >&2
    echo "fuzz $t failed (full log: $log; the failing input is in tests/fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  grep -E '^(#[0-9]+ +(INITED|DONE)|stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs)' "$log" || true
done
