#!/usr/bin/env bash
# The arm64 (Graviton) agent under emulation, against this machine's real cgroups and namespaces: cross-builds
# lmi-agent, lmictl and the native echo runtime for aarch64-unknown-linux-gnu (debug), then runs a chosen
# subset of the existing system tests with the harness pointed at those binaries (tests/support:
# LMI_TEST_AGENT_BIN, LMI_TEST_LMICTL_BIN, LMI_TEST_NATIVE_ECHO_BIN). The test programs themselves are the
# host's; every arm64 program they start, and the agent's own children (its re-executed PID namespace init,
# the arm64 native echo bootstrap), runs under qemu-aarch64 through binfmt_misc (packaging/cross-setup.sh).
# The Python, Node... runtimes the arm64 agent starts are the host's, native.
#
#   tests/arm64/run.sh [unit|system]   (default: both, unit first)
#
# unit:   `cargo test --target aarch64-unknown-linux-gnu --workspace --lib --bins`, every test binary under the
#         runner of .cargo/config.toml (qemu-aarch64), one test at a time, except the tests listed in UNIT_SKIPS
#         below with the reason each cannot run emulated. Ends with `arm64 unit tests: N passed, M failed`.
# system: the subset of the system tests below with the arm64 agent. Ends with
#         `arm64 emulated subset: N passed, M failed`.
#
# What differs from a Graviton host, and why:
#   - sandbox.seccomp = false (LMI_AGENT_SANDBOX_SECCOMP): qemu-user does not emulate seccomp (the seccomp
#     system call is ENOSYS under it), so an emulated agent cannot install its filter. The filter is compiled
#     for aarch64 and its table checked against the kernel's arm64 numbers by the arm64 unit tests.
#   - one test at a time (--test-threads=1): with several test threads forking at once, an emulated test
#     binary hung (lmi-agent's unit tests, qemu 10.0); one at a time they pass.
#   - nothing here measures time: emulation is 10-50x slower than the hardware; see docs/PERFORMANCE.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

TRIPLE=aarch64-unknown-linux-gnu
what=${1:-all}
packaging/cross-setup.sh
native=0
[ "$(uname -m)" = aarch64 ] && native=1

# Sums the `test result:` lines of a cargo test log: "<passed> <failed>".
tally() {
  sed -n 's/^test result: .* \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$1" |
    awk '{p += $1; f += $2} END {print p + 0, f + 0}'
}

# Unit tests that cannot run under qemu-user, each with its reason.
UNIT_SKIPS=(
  # qemu-user writes its own /proc/self/stat for the emulated program, with 0 in the resident-set field.
  metrics::process::tests::this_process_is_read_from_proc_self
  # qemu-user does not emulate seccomp: installing the filter fails (the filter's arm64 table is still
  # compiled and checked against the kernel's numbers by the other seccomp:: tests).
  seccomp::tests::an_installed_filter_refuses_listed_calls_and_allows_the_rest
)

unit() {
  local log skips=() t
  log=$(mktemp)
  for t in "${UNIT_SKIPS[@]}"; do skips+=(--skip "$t"); done
  echo "== arm64 unit tests: cargo test --target $TRIPLE --workspace --lib --bins (skipped under emulation: ${UNIT_SKIPS[*]})"
  local target=(--target "$TRIPLE")
  [ "$native" = 1 ] && target=() && skips=()
  local rc=0
  cargo test --locked --no-fail-fast "${target[@]}" --workspace --lib --bins -- --test-threads=1 "${skips[@]}" 2>&1 | tee "$log" || rc=$?
  read -r p f < <(tally "$log")
  if [ "$rc" != 0 ] && [ "$f" = 0 ]; then f=1; fi # did not build, or a binary died: not a pass
  rm -f "$log"
  echo "arm64 unit tests: $p passed, $f failed"
  [ "$f" = 0 ]
}

system() {
  local dir
  if [ "$native" = 1 ]; then
    dir=target/debug
    echo "== native aarch64 host: the subset runs on target/debug"
    cargo build --locked -p lmi-agent --bin lmi-agent -p lmictl --bin lmictl -p lmi-native-echo --bin native-echo
  else
    dir=target/$TRIPLE/debug
    echo "== cargo build --target $TRIPLE (lmi-agent, lmictl, native-echo)"
    cargo build --locked --target "$TRIPLE" \
      -p lmi-agent --bin lmi-agent -p lmictl --bin lmictl -p lmi-native-echo --bin native-echo
  fi
  export LMI_TEST_AGENT_BIN=$PWD/$dir/lmi-agent
  export LMI_TEST_LMICTL_BIN=$PWD/$dir/lmictl
  export LMI_TEST_NATIVE_ECHO_BIN=$PWD/$dir/native-echo
  [ "$native" = 1 ] || export LMI_AGENT_SANDBOX_SECCOMP=false
  "$LMI_TEST_AGENT_BIN" --version

  # test binary, then the exact test names: create of each ratio (Python shim) and delete leaving nothing,
  # delete draining in-flight invokes, the native echo runtime (byte-for-byte, max concurrency, lmictl
  # bench), throttling at max concurrency, a crash mid-invoke, a worker exit, an init timeout, a function
  # timeout (Sandbox.Timedout).
  local subset=(
    "environments cgroup_files_hold_the_limits_each_ratio_implies_and_the_runtime_runs_inside delete_drains_in_flight_invokes_and_refuses_new_ones"
    "native_echo native_echo_answers_byte_for_byte_and_reports_errors native_echo_holds_max_concurrency_invokes_at_once lmictl_bench_reports_every_invoke_and_the_agents_costs"
    "invokes the_fifth_invoke_at_max_concurrency_four_is_throttled_for_concurrency a_runtime_crash_mid_invoke_ends_every_in_flight_invoke_with_exit_error a_worker_exit_fails_the_environment_with_the_exit_status a_runtime_that_never_polls_times_out_its_init"
    "lifetime a_python_environment_lives_past_its_init_and_function_timeouts"
  )
  local passed=0 failed=0 entry test names log p f want
  for entry in "${subset[@]}"; do
    read -r test names <<<"$entry"
    echo "== arm64 agent: tests/$test.rs: $names"
    log=$(mktemp)
    # shellcheck disable=SC2086
    cargo test --locked -p lmi-system-tests --test "$test" -- --test-threads=1 --exact $names 2>&1 | tee "$log" || true
    read -r p f < <(tally "$log")
    want=$(wc -w <<<"$names")
    # A binary that did not build or run, or ran fewer tests than named, counts the missing ones as failed.
    [ $((p + f)) -lt "$want" ] && f=$((want - p))
    passed=$((passed + p))
    failed=$((failed + f))
    rm -f "$log"
  done
  echo "arm64 emulated subset: $passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}

case "$what" in
  unit) unit ;;
  system) system ;;
  all)
    rc=0
    unit || rc=1
    system || rc=1
    exit $rc
    ;;
  *) echo "usage: $0 [unit|system]" >&2; exit 2 ;;
esac
