#!/bin/bash
# Runs inside the VM booted by tests/vm/run.sh, as the oneshot lmi-test.service (systemd PID 1, cgroup v2 only).
# Installs the .deb, starts lmi-agent with systemctl and checks the installed product through lmictl, the Invoke
# API and the real cgroup files. One result line per check in $LMI_VM_OUT/results ("ok NAME", "FAIL NAME: why",
# "skip NAME: why"), echoed on the console as LMI-CHECK lines; "LMI-DONE" last. The VM powers off when this ends.
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
OUT=${LMI_VM_OUT:?}
REPO=${LMI_VM_REPO:?}
DEB=${LMI_VM_DEB:?}
FIX="$REPO/tests/fixtures"
RES="$OUT/results"
: >"$RES"
API=http://127.0.0.1:9001
SVC_CG=/sys/fs/cgroup/system.slice/lmi-agent.service

ok() { echo "ok $1" >>"$RES"; echo "LMI-CHECK ok $1"; }
fail() {
  local why
  why=$(echo "$2" | tr '\n' ' ' | tr -s ' ' | cut -c1-700)
  echo "FAIL $1: $why" >>"$RES"
  echo "LMI-CHECK FAIL $1: $why"
}
skip() { echo "skip $1: $2" >>"$RES"; echo "LMI-CHECK skip $1: $2"; }
info() { echo "LMI-INFO $*"; }
# check NAME COMMAND...: ok when COMMAND exits 0, else FAIL with its output's last line.
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then ok "$name"; else fail "$name" "$(echo "$out" | tail -n 3 | tr '\n' ' ')"; fi
}
finish() {
  journalctl -b --no-pager -o short-monotonic >"$OUT/journal.txt" 2>&1 || true
  echo "LMI-DONE" >>"$RES"
  echo "LMI-CHECK done"
  sync
}
trap finish EXIT

jget() { python3 -c 'import json,sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[int(k)] if isinstance(v, list) else (v or {}).get(k)
print("" if v is None else v)' "$1"; }
# Polls COMMAND until it succeeds, for at most $1 seconds (events here have no notification to wait on from a
# shell: systemd's restart, a process's exit).
wait_until() {
  local limit=$1 t=0
  shift
  while ! "$@" >/dev/null 2>&1; do
    [ "$t" -ge "$limit" ] && return 1
    sleep 1
    t=$((t + 1))
  done
}
create() { # function runtime handler code memory ratio [more lmictl flags]
  local f=$1 rt=$2 h=$3 code=$4 mem=$5 ratio=$6
  shift 6
  # Software emulation is slow: a generous invoke timeout (the default 3 s is too short for a JVM's first call).
  lmictl create --json --function "$f" --runtime "$rt" --handler "$h" --code "$code" --memory "$mem" \
    --ratio "$ratio" --timeout-seconds 120 --wait --wait-timeout 240 "$@" 2>/tmp/create.err || {
    cat /tmp/create.err
    return 1
  }
}
# lmictl invoke --json, again while the agent throttles it (a runtime that just started burns its CPU quota
# under software emulation, and admission refuses a saturated environment: reason CPU), for at most 120 s.
invoke_ok() { # function payload
  local out t=0
  while :; do
    out=$(lmictl invoke --json "$1" --payload "$2" 2>&1)
    [ "$(echo "$out" | jget outcome)" = THROTTLED ] && [ "$t" -lt 120 ] || break
    sleep 2
    t=$((t + 2))
  done
  echo "$out"
}
env_cg() { echo "/sys/fs/cgroup$(echo "$1" | jget cgroup)"; }
invoke_api() { # function payload → body on stdout, headers in /tmp/h
  curl -sS -m 300 -D /tmp/h -X POST --data-binary "$2" "$API/2015-03-31/functions/$1/invocations"
}

info "kernel $(uname -r), $(systemctl --version | head -1), cgroup $(stat -fc %T /sys/fs/cgroup), controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
check "host: cgroup v2 only, with cpu memory pids" bash -c '[ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] &&
  for c in cpu memory pids; do grep -qw $c /sys/fs/cgroup/cgroup.controllers || exit 1; done'
check "host: systemd is PID 1" bash -c '[ "$(cat /proc/1/comm)" = systemd ]'

# ---- the package
check "dpkg -i $(basename "$DEB")" dpkg -i "$DEB"
check "installed: java and dotnet bootstraps and the node entry point are executable (0755)" bash -c '
  for f in java/bootstrap dotnet/bootstrap node/bootstrap.mjs; do
    [ "$(stat -c %a /usr/share/lmi-agent/runtime-shims/$f)" = 755 ] || { echo "$f: $(stat -c %a /usr/share/lmi-agent/runtime-shims/$f)"; exit 1; }
  done'
check "installed: the unit is known to systemd and not enabled by the package" bash -c \
  '[ "$(systemctl show -p LoadState --value lmi-agent)" = loaded ] && ! systemctl is-enabled -q lmi-agent'

# A drop-in as docs/operations.md describes: the Invoke API on loopback, and a declared capacity (the VM has
# 2 vCPUs and 6 GiB; environments are limits, not reservations, so an 8:1 environment of 8 GiB fits in the plan).
mkdir -p /etc/systemd/system/lmi-agent.service.d
cat >/etc/systemd/system/lmi-agent.service.d/vm.conf <<'EOF'
[Service]
Environment=LMI_AGENT_INVOKE_API_LISTEN=127.0.0.1:9001
Environment=LMI_AGENT_CAPACITY_VCPUS=8
Environment=LMI_AGENT_CAPACITY_MEMORY_MIB=32768
Environment=LMI_AGENT_ENVIRONMENTS_DELETE_GRACE_SECONDS=20
Environment=LMI_AGENT_FAULT=wedge-registry
EOF
systemctl daemon-reload

# ---- start: active only after READY=1
t0=$(date +%s)
if systemctl start lmi-agent; then
  # systemctl start of a Type=notify unit returns when READY=1 arrived: the socket answers at once.
  if lmictl host >/tmp/host.txt 2>&1; then ok "systemctl start: active after READY=1, control socket answering ($(($(date +%s) - t0)) s)"; else fail "systemctl start" "active but lmictl host failed: $(cat /tmp/host.txt)"; fi
else
  fail "systemctl start lmi-agent" "$(systemctl status lmi-agent --no-pager 2>&1 | tail -n 5 | tr '\n' ' ')"
  journalctl -u lmi-agent --no-pager | tail -n 30
  exit 1
fi
check "unit: Type=notify, NotifyAccess=main, state active/running" bash -c \
  '[ "$(systemctl show -p Type --value lmi-agent)" = notify ] && [ "$(systemctl show -p NotifyAccess --value lmi-agent)" = main ] &&
   [ "$(systemctl show -p ActiveState --value lmi-agent)/$(systemctl show -p SubState --value lmi-agent)" = active/running ]'
info "$(tr '\n' ' ' </tmp/host.txt)"
check "lmictl host: cgroup v2" grep -Eq '^cgroup: +v2' /tmp/host.txt
main=$(systemctl show -p MainPID --value lmi-agent)
check "agent in its delegated cgroup (lmi-agent.service/lmi-agent.supervisor)" bash -c \
  "grep -qx '0::/system.slice/lmi-agent.service/lmi-agent.supervisor' /proc/$main/cgroup || { cat /proc/$main/cgroup; exit 1; }"
check "no internal processes: the unit's cgroup holds none, its subtree has cpu memory pids" bash -c "
  [ -z \"\$(cat $SVC_CG/cgroup.procs)\" ] || { echo procs: \$(cat $SVC_CG/cgroup.procs); exit 1; }
  for c in cpu memory pids; do grep -qw \$c $SVC_CG/cgroup.subtree_control || { echo no \$c in subtree_control; exit 1; }; done
  for c in cpu memory pids; do grep -qw \$c $SVC_CG/lmi-agent/cgroup.subtree_control || { echo no \$c below lmi-agent; exit 1; }; done"
check "delegation: systemd says Delegate=yes for the unit" bash -c '[ "$(systemctl show -p Delegate --value lmi-agent)" = yes ]'

# ---- an environment of each ratio: the real files
limits() { # name json vcpus memory_mib
  local name=$1 env=$2 vcpus=$3 mem=$4 cg want
  cg=$(env_cg "$env")
  want="$((vcpus * 100000)) 100000|$((mem * 1048576))|0|4096"
  got="$(cat "$cg/cpu.max")|$(cat "$cg/memory.max")|$(cat "$cg/memory.swap.max")|$(cat "$cg/pids.max")"
  if [ "$got" = "$want" ]; then ok "$name: cpu.max|memory.max|memory.swap.max|pids.max = $got"; else fail "$name limits" "want $want, got $got ($cg)"; fi
  local pid bad=0 n=0
  for pid in $(cat "$cg/cgroup.procs"); do
    n=$((n + 1))
    grep -qx "0::$(echo "$env" | jget cgroup)" "/proc/$pid/cgroup" || bad=1
  done
  if [ "$n" -gt 0 ] && [ "$bad" = 0 ] && grep -qw "$(echo "$env" | jget pid)" "$cg/cgroup.procs"; then
    ok "$name: its $n processes (runtime pid $(echo "$env" | jget pid)) are in $(echo "$env" | jget cgroup)"
  else fail "$name processes" "$n processes in $cg, runtime pid $(echo "$env" | jget pid) there: $(cat "$cg/cgroup.procs" | tr '\n' ' ')"; fi
}
for spec in "2 4096 2" "4 4096 1" "8 8192 1"; do
  set -- $spec
  # Two workers: enough to see every process in the cgroup, and quick to start under emulation.
  if env=$(create "ratio$1" python3.11 echo.handler "$FIX/python" "$2" "$1" --max-concurrency 2); then
    limits "ratio $1:1 ($2 MiB, $3 vCPU)" "$env" "$3" "$2"
    lmictl delete "$(echo "$env" | jget id)" >/dev/null 2>&1
  else
    fail "ratio $1:1 environment" "$env"
  fi
done

# ---- OOM: the kernel kills, the caller gets Runtime.OutOfMemory, the neighbour keeps serving
oom=$(create oom python3.11 oom.handler "$FIX/python" 2048 2) || fail "oom environment" "$oom"
nb=$(create neighbour python3.11 echo.handler "$FIX/python" 2048 2) || fail "neighbour environment" "$nb"
if [ -n "$oom" ] && [ -n "$nb" ]; then
  oomcg=$(env_cg "$oom")
  body=$(invoke_api oom '{"mb": 3072}')
  events=$(cat "$oomcg/memory.events" 2>/dev/null | tr '\n' ' ')
  if echo "$body" | grep -q '"Runtime.OutOfMemory"' && grep -qi '^x-amz-function-error: Unhandled' /tmp/h; then
    ok "OOM: 3 GiB in a 2 GiB environment answers Runtime.OutOfMemory over the Invoke API"
  else fail "OOM" "body $body"; fi
  journalctl -k --no-pager | grep -q "Memory cgroup out of memory" && ok "OOM: the kernel's memory cgroup OOM killer did it (kernel log)" ||
    fail "OOM kernel" "no memory cgroup OOM in the kernel log (memory.events: $events)"
  out=$(invoke_ok neighbour '{"n": 1}')
  [ "$(echo "$out" | jget outcome)" = SUCCESS ] && ok "OOM: the neighbour environment still serves" || fail "OOM neighbour" "$out"
  lmictl delete "$(echo "$nb" | jget id)" >/dev/null 2>&1
  lmictl delete "$(echo "$oom" | jget id)" >/dev/null 2>&1
fi

# ---- CPU quota: two CPU-bound invokes into a 1-vCPU environment on a 2-vCPU VM are throttled
if cpu=$(create cpu python3.11 cpu.handler "$FIX/python" 4096 4 --max-concurrency 3); then
  cg=$(env_cg "$cpu")
  before=$(awk '$1 == "nr_throttled" {print $2}' "$cg/cpu.stat")
  invoke_api cpu '{"ms": 15000}' >/tmp/cpu1 &
  p1=$!
  invoke_api cpu '{"ms": 15000}' >/tmp/cpu2 &
  p2=$!
  # While both burn, the sampler sees the environment at its quota and admission refuses a third invoke
  # (a free slot remains: the refusal is for CPU, and says to retry elsewhere).
  reason=
  for _ in $(seq 1 12); do
    sleep 1
    reason=$(lmictl invoke --json cpu --payload '{"ms": 1}' 2>&1 | jget throttle.reason 2>/dev/null)
    [ "$reason" = CPU ] && break
  done
  [ "$reason" = CPU ] && ok "CPU quota: while two invokes burn the 1-vCPU environment, a third is throttled for CPU (retry elsewhere)" ||
    fail "CPU throttle decision" "the third invoke was not throttled for CPU (last reason '$reason')"
  wait $p1 $p2
  after=$(awk '$1 == "nr_throttled" {print $2}' "$cg/cpu.stat")
  usage=$(awk '$1 == "usage_usec" {print $2}' "$cg/cpu.stat")
  if [ "$after" -gt "$before" ] && grep -q iterations /tmp/cpu1 && grep -q iterations /tmp/cpu2; then
    ok "CPU quota: cpu.stat nr_throttled $before -> $after (usage ${usage} us), both invokes answered"
  else fail "CPU quota" "nr_throttled $before -> $after; answers: $(cat /tmp/cpu1) $(cat /tmp/cpu2)"; fi
  [ -f "$cg/cpu.pressure" ] && info "PSI: $(head -1 "$cg/cpu.pressure")"
  lmictl delete "$(echo "$cpu" | jget id)" >/dev/null 2>&1
else
  fail "cpu environment" "$cpu"
fi

# ---- every runtime the VM has, from the installed shims
avail=$(lmictl host --json | python3 -c 'import json,sys
print(" ".join(r["id"] for r in json.load(sys.stdin)["runtimes"] if r["available"]))')
info "available runtimes: $avail"
runtime_case() { # runtime function handler code payload expect
  local rt=$1 f=$2 h=$3 code=$4 payload=$5 expect=$6 env out
  case " $avail " in *" $rt "*) ;; *) skip "runtime $rt" "not available in this VM"; return ;; esac
  if ! env=$(create "$f" "$rt" "$h" "$code" 2048 2); then
    # The runtime's own output says why it ended (a JVM's abort message, a traceback): the failure carries it.
    fail "runtime $rt" "create: $env; its log: $(lmictl logs "$f" 2>&1 | tail -n 40 | tr '\n' ' ')"
    return
  fi
  out=$(invoke_ok "$f" "$payload")
  if [ "$(echo "$out" | jget outcome)" = SUCCESS ] && echo "$out" | grep -q "$expect"; then
    ok "runtime $rt: created from /usr/share/lmi-agent/runtime-shims and served an invoke"
  else fail "runtime $rt" "$out"; fi
  lmictl delete "$(echo "$env" | jget id)" >/dev/null 2>&1
}
for rt in python3.11 python3.12 python3.13; do runtime_case $rt "py${rt#python3.}" echo.handler "$FIX/python" '{"hello":"vm"}' '"vm"'; done
runtime_case nodejs20.x node20 actions.handler "$FIX/node" '{"action":"echo","hello":"vm"}' '"vm"'
runtime_case nodejs22.x node22 actions.handler "$FIX/node" '{"action":"echo","hello":"vm"}' '"vm"'
for rt in java17 java21 java25; do runtime_case $rt "$rt" 'fixtures.Plain::echo' "$FIX/java/build/task" '{"hello":"vm"}' 'vm'; done
runtime_case dotnet8 dotnet8 'Fixtures::Fixtures.Plain::Echo' "$FIX/dotnet/build/task" '{"hello":"vm"}' 'vm'
runtime_case provided.al2023 provided "unused" "$FIX/provided/shell" '{"hello":"vm"}' '"vm"'

# ---- JSON logs in the journal
check "journal: the agent's log lines are JSON objects" bash -c \
  'journalctl -u lmi-agent -o cat --no-pager | grep "^{" | head -50 | python3 -c "import json,sys
n = 0
for l in sys.stdin: json.loads(l); n += 1
assert n > 0, \"no JSON lines\""'

# ---- upgrade: dpkg -i of version N+1 over N with environments running (docs/operations.md, "Upgrade": the
# package reloads systemd and does not restart the agent; the configuration edits are kept)
if up=$(create upgrade python3.11 echo.handler "$FIX/python" 2048 2); then
  echo "# edited by the operator" >>/etc/lmi-agent/agent.toml
  main_before=$(systemctl show -p MainPID --value lmi-agent)
  v=$(dpkg-deb -f "$DEB" Version)
  rm -rf /tmp/up && dpkg-deb -R "$DEB" /tmp/up && sed -i "s/^Version: .*/Version: ${v}+vm1/" /tmp/up/DEBIAN/control &&
    dpkg-deb -b /tmp/up /tmp/lmi-agent-next.deb >/dev/null
  if out=$(dpkg -i --force-confold /tmp/lmi-agent-next.deb 2>&1); then
    inv=$(invoke_ok upgrade '{"after":"upgrade"}')
    if [ "$(dpkg-query -W -f '${Version}' lmi-agent)" = "${v}+vm1" ] && [ "$(systemctl show -p MainPID --value lmi-agent)" = "$main_before" ] &&
      [ "$(echo "$inv" | jget outcome)" = SUCCESS ] && grep -q "edited by the operator" /etc/lmi-agent/agent.toml; then
      ok "upgrade: dpkg -i of ${v}+vm1 over $v keeps the running agent (pid $main_before) and its environments serving, and the edited agent.toml"
    else fail "upgrade" "version $(dpkg-query -W -f '${Version}' lmi-agent), pid $main_before -> $(systemctl show -p MainPID --value lmi-agent), invoke: $inv"; fi
  else fail "upgrade: dpkg -i" "$out"; fi
  lmictl delete "$(echo "$up" | jget id)" >/dev/null 2>&1
else
  fail "upgrade environment" "$up"
fi

# ---- systemctl kill -s KILL: restart, the previous life cleaned up before READY
if env=$(create survivor python3.11 echo.handler "$FIX/python" 2048 2); then
  old_id=$(echo "$env" | jget id)
  old_pid=$(echo "$env" | jget pid)
  old_cg=$(env_cg "$env")
  restarts=$(systemctl show -p NRestarts --value lmi-agent)
  old_main=$(systemctl show -p MainPID --value lmi-agent)
  systemctl kill -s KILL --kill-whom=main lmi-agent
  restarted() { [ "$(systemctl show -p NRestarts --value lmi-agent)" -gt "$restarts" ] && [ "$(systemctl show -p ActiveState --value lmi-agent)" = active ]; }
  if wait_until 60 restarted; then
    new_main=$(systemctl show -p MainPID --value lmi-agent)
    ok "systemctl kill -s KILL: systemd restarted the agent (pid $old_main -> $new_main)"
    if ! kill -0 "$old_pid" 2>/dev/null && [ ! -d "$old_cg" ]; then
      # (systemd itself SIGKILLs what is left in the unit's cgroup when the main process dies, KillMode=mixed;
      # the new agent then finds the records and any leftover env-* cgroup.)
      ok "restart: the previous life's runtime (pid $old_pid) and cgroup are gone once the new agent is active"
    else fail "restart cleanup" "runtime $old_pid alive: $(kill -0 "$old_pid" 2>/dev/null && echo yes || echo no); cgroup $old_cg there: $([ -d "$old_cg" ] && echo yes || echo no)"; fi
    lst=$(lmictl list --json 2>&1)
    got=$(echo "$lst" | python3 -c "import json,sys
for e in json.load(sys.stdin):
    if e['id'] == '$old_id': print(e['state'], (e.get('failure') or {}).get('error_type'))" 2>&1)
    if [ "$got" = "FAILED Agent.Restarted" ]; then
      ok "restart: the old environment is reported FAILED with Agent.Restarted"
    else fail "restart report" "old environment $old_id: '$got'"; fi
  else
    fail "systemctl kill -s KILL" "no restart within 60 s: $(systemctl status lmi-agent --no-pager | head -5 | tr '\n' ' ')"
  fi
else
  fail "survivor environment" "$env"
fi

# ---- watchdog: a wedged agent (LMI_AGENT_FAULT=wedge-registry, set off by SIGUSR2) is restarted
restarts=$(systemctl show -p NRestarts --value lmi-agent)
systemctl kill -s USR2 --kill-whom=main lmi-agent
restarted() { [ "$(systemctl show -p NRestarts --value lmi-agent)" -gt "$restarts" ] && [ "$(systemctl show -p ActiveState --value lmi-agent)" = active ]; }
if wait_until 120 restarted && journalctl -u lmi-agent --no-pager | grep -qi "watchdog timeout"; then
  ok "watchdog: a wedged agent is killed by systemd (Watchdog timeout) and restarted"
else fail "watchdog" "NRestarts $(systemctl show -p NRestarts --value lmi-agent) (was $restarts); $(journalctl -u lmi-agent --no-pager | grep -i watchdog | tail -2 | tr '\n' ' ')"; fi

# ---- systemctl stop drains in-flight invokes and leaves nothing
if env=$(create drain python3.11 cpu.handler "$FIX/python" 2048 2); then
  # Once the new runtime no longer saturates its quota (admission would refuse the invoke below for CPU).
  invoke_ok drain '{"ms": 1}' >/dev/null
  invoke_api drain '{"ms": 4000}' >/tmp/drain &
  inv=$!
  wait_until 20 bash -c "[ \"\$(lmictl list --json | grep -o '\"in_flight\": *[1-9]' | head -1)\" ]"
  t0=$(date +%s)
  systemctl stop lmi-agent
  stop_s=$(($(date +%s) - t0))
  wait $inv
  if grep -qi '^HTTP/1.1 200' /tmp/h && ! grep -qi 'x-amz-function-error' /tmp/h; then
    ok "systemctl stop: the in-flight invoke finished successfully during the drain (stop took ${stop_s} s)"
  else fail "stop drain" "answer: $(cat /tmp/h /tmp/drain | tr '\r\n' '  ')"; fi
  left=$(find "$SVC_CG" -name cgroup.procs -exec cat {} + 2>/dev/null | wc -l)
  if [ "$left" = 0 ] && [ ! -d "$SVC_CG/lmi-agent" ] && [ "$(systemctl show -p ActiveState --value lmi-agent)" = inactive ]; then
    ok "systemctl stop: no process and no environment cgroup left"
  else fail "stop leftovers" "$left processes under $SVC_CG; $(ls "$SVC_CG" 2>&1 | tr '\n' ' ')"; fi
else
  fail "drain environment" "$env"
fi

# ---- the library's cgroup tests on the real v2 hierarchy (built on the host)
if [ -n "${LMI_VM_LIBTESTS:-}" ] && [ -x "$LMI_VM_LIBTESTS" ]; then
  # In a service of its own with Delegate=yes, as the agent runs (its cgroup is its to manage; systemd marks it
  # with the trusted.delegate attribute, which the v2 tests require). A unit file, not systemd-run: the VM runs
  # no D-Bus.
  cat >/run/systemd/system/lmi-libtests.service <<UNIT
[Service]
Type=oneshot
Delegate=yes
WorkingDirectory=/tmp
ExecStart=$LMI_VM_LIBTESTS --test-threads=1 --nocapture
StandardOutput=file:/tmp/libtests.txt
StandardError=inherit
UNIT
  systemctl daemon-reload
  systemctl start lmi-libtests.service
  result=$(systemctl show -p Result --value lmi-libtests.service)
  out=$(cat /tmp/libtests.txt 2>&1)
  cp /tmp/libtests.txt "$OUT/libtests.txt" 2>/dev/null
  summary=$(echo "$out" | grep -E '^test result' | tail -1 | cut -d';' -f1-3)
  if [ "$result" = success ] && echo "$out" | grep -q '^test result: ok'; then
    ok "lmi-cgroup's tests (built on the host) on real cgroup v2: $summary; $(echo "$out" | grep -c 'skipping:') skipped themselves (written for v1 and hybrid hosts)"
  else
    fail "lmi-cgroup tests" "result $result: $(echo "$out" | grep -E 'FAILED|panicked|^test result' | head -5)"
  fi
  # The v2 real-hierarchy tests, named by the binary itself: each must have run here (a skip is a failure).
  v2tests=$("$LMI_VM_LIBTESTS" --list real_tests::v2:: 2>/dev/null | sed -n 's/^real_tests::v2::\(.*\): test$/\1/p')
  ran=0 missing=
  for t in $v2tests; do
    if echo "$out" | grep -q "$t: ran on cgroup v2 (pure, delegated"; then ran=$((ran + 1)); else missing="$missing $t"; fi
  done
  total=$(echo $v2tests | wc -w)
  where=$(echo "$out" | grep -o 'ran on cgroup v2 (pure[^)]*)' | head -1)
  if [ "$total" -gt 0 ] && [ -z "$missing" ] && echo "$out" | grep -q '^test result: ok'; then
    ok "cgroup v2 driver on the real hierarchy: $ran of $total tests ran and passed, $where"
  else
    fail "cgroup v2 driver on the real hierarchy" "$ran of $total ran; did not run:${missing:- (none)}; $(echo "$out" | grep -o 'skipping: [^(]*' | head -2)"
  fi
  # The tests removed what they created; systemd removed the unit's cgroup (with the leaf the test process was
  # moved into) when it ended.
  check "cgroup v2 tests left nothing: no lmi-libtests.service cgroup after the unit ended" bash -c \
    '[ ! -d /sys/fs/cgroup/system.slice/lmi-libtests.service ] || { find /sys/fs/cgroup/system.slice/lmi-libtests.service -type d; exit 1; }'
elif [ -z "${LMI_VM_LIBTESTS:-}" ]; then
  skip "lmi-cgroup tests and the cgroup v2 driver on the real hierarchy" "not built (LMI_VM_NO_LIBTESTS=1)"
else
  fail "lmi-cgroup tests" "test binary $LMI_VM_LIBTESTS not executable in the VM"
fi
