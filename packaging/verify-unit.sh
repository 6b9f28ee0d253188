#!/usr/bin/env bash
# Verifies systemd/lmi-agent.service with `systemd-analyze verify` (any warning fails), checks that its stop
# timeout covers the agent's default drain, and prints systemd's security exposure score.
#
#   packaging/verify-unit.sh [LMI_AGENT_BINARY]      (default: target/release/lmi-agent)
#
# `verify` requires ExecStart's program to exist, and /usr/bin/lmi-agent is not installed here: the unit is
# verified as a copy whose /usr/bin/lmi-agent is replaced by the built binary. Nothing else is changed.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$(realpath "${1:-target/release/lmi-agent}")
[ -x "$bin" ] || { echo "verify-unit: $bin is not built" >&2; exit 1; }
unit=systemd/lmi-agent.service
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s#/usr/bin/lmi-agent#$bin#g" "$unit" >"$tmp/lmi-agent.service"

if ! out=$(systemd-analyze verify "$tmp/lmi-agent.service" 2>&1) || [ -n "$out" ]; then
  echo "$out" >&2
  echo "verify-unit: systemd-analyze verify reported the above for $unit" >&2
  exit 1
fi
echo "systemd-analyze verify $unit: ok"

# ExecStart's arguments are accepted by the binary (check-config with the same global flags).
exec_args=$(sed -n 's#^ExecStart=/usr/bin/lmi-agent \(.*\) run$#\1#p' "$unit")
[ -n "$exec_args" ] || { echo "verify-unit: ExecStart must be '/usr/bin/lmi-agent <flags> run'" >&2; exit 1; }
# shellcheck disable=SC2086
"$bin" ${exec_args//\/etc\/lmi-agent\/agent.toml/packaging\/agent.toml} check-config >/dev/null

# TimeoutStopSec must cover the default drain: delete_grace_seconds + stop_timeout_ms + 5 s of cleanup.
defaults=$("$bin" --config packaging/agent.toml check-config)
grace=$(echo "$defaults" | sed -n 's/^delete_grace_seconds = \([0-9]*\).*/\1/p')
stop_ms=$(echo "$defaults" | sed -n 's/^stop_timeout_ms = \([0-9]*\).*/\1/p')
timeout=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s$/\1/p' "$unit")
need=$((grace + (stop_ms + 999) / 1000 + 5))
if [ -z "$timeout" ] || [ "$timeout" -lt "$need" ]; then
  echo "verify-unit: TimeoutStopSec=${timeout:-?}s is shorter than the default drain (${grace}s grace + ${stop_ms}ms stop + 5s)" >&2
  exit 1
fi
echo "TimeoutStopSec=${timeout}s covers the default drain (${need}s): ok"
systemd-analyze security --offline=true --no-pager "$tmp/lmi-agent.service" | tail -1
