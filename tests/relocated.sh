#!/usr/bin/env bash
# The system tests that hand files under the checkout to functions (fixtures, shims, rendezvous directories,
# the README's example), run from a copy of the tracked tree under /tmp: a function has a /tmp of its own, so
# nothing under a checkout there is visible to it, and the tests must still pass (issue 18).
#
# The test binaries are the ones built here (no rebuild: building from the copy would recompile every
# workspace crate, see docs/operations.md); they run with the copy as their working directory and
# LMI_TEST_REPO pointing at it, so tests/support takes from the copy every file a test hands to the agent or a
# function, and puts its scratch directories in the copy's target/tmp. The copy is removed at the end.
#
#   tests/relocated.sh [TEST...]     default: awslambdaric streaming invokes runtime_node demo readme
set -euo pipefail
cd "$(dirname "$0")/.."

tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(awslambdaric streaming invokes runtime_node demo readme)

args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
# One executable per test target, as Cargo reports them (built now if the suite has not built them).
mapfile -t bins < <(cargo test --locked -p lmi-system-tests "${args[@]}" --no-run --message-format=json |
  python3 -c 'import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"] + "\t" + m["executable"])')
[ ${#bins[@]} -eq ${#tests[@]} ] || { echo "relocated: expected ${#tests[@]} test binaries, got ${#bins[@]}" >&2; exit 1; }

copy=$(mktemp -d /tmp/lmi-checkout.XXXX)
trap 'rm -rf "$copy"' EXIT
# The tracked tree as it is in this working tree (uncommitted edits included), not the target dir.
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$copy"
chmod 755 "$copy"
echo "== system tests from a checkout under /tmp: $copy (${#bins[@]} test binaries)"

failed=()
for entry in "${bins[@]}"; do
  name=${entry%%$'\t'*}
  exe=${entry#*$'\t'}
  echo "== relocated: $name"
  if ! (cd "$copy" && LMI_TEST_REPO=$copy "$exe" --test-threads=2 -q); then
    failed+=("$name")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "relocated: failed from $copy: ${failed[*]}" >&2
  exit 1
fi
echo "== relocated: ${#bins[@]} test binaries passed from a checkout under /tmp"
