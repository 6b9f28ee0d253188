#!/usr/bin/env bash
# Profiles the agent's invoke path: the release daemon under valgrind's callgrind (this machine's perf has no
# hardware counters, `perf stat -e instructions true` says <not supported>), driven by benches/perf.py's
# throughput scenario at a low rate. Installs valgrind from Debian when missing.
#
#   benches/profile.sh [SCENARIO] [extra perf.py flags]     (default scenario: throughput)
#   benches/profile.sh ingress count|perf|callgrind [--via http|unary|stream] ...   (benches/profile_ingress.py)
#
# Writes target/profile/callgrind.out.<pid> and prints the top functions by instructions (inclusive and
# exclusive). Instruction counts, not time: valgrind serialises threads and slows everything ~50x.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null 2>&1; then
  if [ ! -f /var/lib/apt/lists/.lmi-updated ]; then apt-get update -qq && touch /var/lib/apt/lists/.lmi-updated; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi

scenario="${1:-throughput}"
shift || true
# One ingress at a fixed number of invokes (HTTP Invoke API, unary or InvokeStream): counts, perf, callgrind.
if [ "$scenario" = ingress ]; then exec benches/profile_ingress.py "$@"; fi
out="$PWD/target/profile"
mkdir -p "$out"
rm -f "$out"/callgrind.out.*
cargo build --release --locked -p lmi-agent -p lmictl -p lmi-native-echo
benches/perf.py --no-build --runs 1 --duration 3 \
  --agent-wrapper "valgrind --tool=callgrind --callgrind-out-file=$out/callgrind.out.%p --separate-threads=no" \
  "$scenario" "$@"
file=$(ls -t "$out"/callgrind.out.* | head -1)
echo "== $file: inclusive"
callgrind_annotate --inclusive=yes "$file" 2>/dev/null | sed -n '1,60p'
echo "== exclusive"
callgrind_annotate "$file" 2>/dev/null | sed -n '1,60p'
