#!/usr/bin/env python3
"""The agent at host scale (issue 16): many environments, many invokes in flight, start-up under load.
A private lmi-agent (release build) per scenario, built on benches/perf.py's Agent; prints markdown.

Usage (as root: the agent creates cgroups):

    benches/scale.py [--runs N] [--duration SECONDS] [--no-build] [--json FILE] [--no-python]
                     [--network-pool N] [--perf] [--rate R]... [--python-share S] SCENARIO...

Scenarios:
    host-scale          100 environments: 10 functions x 2 versions x 5 environments, 4 of the 20
                        function versions Python 3.11 (20 environments), the rest native echo. Invokes spread
                        over all 20 function versions by 20 `lmictl bench` processes at once (c=3 each), then
                        the same 20 processes against one native echo environment (the baseline). Agent CPU
                        per invoke (its /proc CPU time over the invokes its /metrics counted, in the middle
                        of the load), p99, RSS, the sampler's tick (lmi_sampler_*), the scaler's
                        UtilizationReport size (WatchUtilization read raw with the test tools' grpcio venv,
                        when present) and a /metrics scrape's time and size. --no-python: all 100
                        native echo.
    in-flight-1600      one native echo environment with max concurrency 1,600 and 1,600 invokes held
                        (each sleeps 1 s): the agent's peak RSS and CPU.
    startup-under-load  20 environments created at once, while another environment serves `lmictl bench`
                        at c=64, against 20 at once without load and 20 one after another: p50/p99
                        of the agent's start-up phases, the burst's wall time and the agent's CPU per
                        environment. --network-pool N sets the agent's ready network slots (default 2).
    env-count           the same load per environment (3 invokes in flight on each native echo environment,
                        max concurrency 8) on 1, 10 (1 function x 2 versions x 5) and 100 (10 x 2 x 5)
                        environments of one agent, one `lmictl bench` per function version at c=15 (a version's
                        5 environments, least loaded first, take 3 each); then the controls: 100 environments
                        held idle while one more carries the one-environment load (c=3), and that one again
                        after the 100 are deleted. Agent CPU and context switches per invoke, the loaded
                        runtimes' CPU per invoke (their cgroups), RSS, and how evenly the load spread (each
                        loaded environment's in-flight count, three `lmictl list` right after the window, and
                        its runtime's share of the window's CPU). Flat per-invoke cost across the columns means
                        holding or loading more environments costs nothing per invoke by itself.
    host-scale-rate     host-scale's Python mix at equal load: does the agent's CPU per invoke rise with the
                        environments or with the load's shape? In one agent, three windows per load, each the same
                        20 callers (one per function version of the 100): "baseline", the python3.11 versions'
                        callers on one python3.11 environment (max concurrency 12) and the others on one native
                        echo environment (64), nothing else held (host-scale's one-per-runtime baseline);
                        "spread", the 100 environments of host-scale loaded (the baseline's two held idle);
                        "held", the baseline's two loaded while the 100 are held idle (env-count's control: the
                        Python worker processes present, the load not spread over them). Loads: closed loop
                        (c=3 per caller, as host-scale) and, for each --rate R (default 2000), open loop at R
                        invokes/s in all (`lmictl bench --rate`), split evenly over the 20 callers (or the
                        python3.11 callers take --python-share S of it). --no-python: every environment
                        native echo (the baseline: one native echo environment). Runs alternate whether the
                        baseline is measured before the 100 are made or after they are deleted, and which of
                        spread and held goes first. Per window: the rate offered and answered (successes / offered,
                        throttles, lmictl's send lag: a load both windows sustain has 1.000, 0 and a lag of a
                        few ms), host-scale's agent figures (CPU, context switches and preemptions per
                        invoke; of that CPU, the log writer thread's, and its write system calls per invoke),
                        the host's busy vCPUs (/proc/stat), the python3.11 and native runtimes' CPU per invoke of
                        their kind (their cgroups), the idle environments' CPU, the python share and p50/p99.
    all                 every scenario above

--perf (host-scale, env-count, host-scale-rate): `perf record -e cpu-clock -F 499 --call-graph dwarf,8192` on
the agent, counting only over each measured window (perf's control FIFO), then, per window side by side and as
µs of agent CPU per invoke (samples / invokes x the 2.004 ms period): kernel vs user, the agent's parts
(benches/perf_split.py), the system call each sample is in, chosen kernel functions on the stack (wake-ups,
epoll, socket sends) and the kernel's leaf symbols. Data and `perf script` text stay in target/profile/scale-*.
perf's own cost (a dwarf stack copy per sample) is inside the agent CPU figures of a --perf run: compare those
with a run without it.

Nothing is asserted: it prints what it measured. Runs are short by default (a shared machine: look at the
load average printed with the results).
"""

import argparse
import atexit
import collections
import functools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf  # noqa: E402
from perf import Agent, REPO, fmt, log, machine, median, native_code_dir  # noqa: E402

SCENARIOS = ["host-scale", "in-flight-1600", "startup-under-load", "env-count", "host-scale-rate"]
PYTHON_CODE = REPO / "tests" / "fixtures" / "python"
GRPC_PYTHON = Path("/var/cache/lmi-agent/test-tools/grpc-python/bin/python")
METRICS_PORT = 19464 + os.getpid() % 1000
PROFILE_DIR = REPO / "target" / "profile"
PERF_HZ = 499
PERF_SPLIT = Path(__file__).resolve().parent / "perf_split.py"
# Kernel functions whose inclusive share (samples with the function anywhere on the stack) --perf prints: the
# wake-up and sleep path (sock_def_readable: a socket's reader woken), the readiness wait, and the socket sends
# and receives of both sides.
KERNEL_WATCH = ["try_to_wake_up", "sock_def_readable", "unix_write_space", "__schedule", "ep_poll",
                "ep_poll_callback", "futex_wake", "futex_wait",
                "tcp_sendmsg", "tcp_recvmsg", "unix_stream_sendmsg", "unix_stream_recvmsg",
                "__x64_sys_sched_yield", "irq_exit_rcu", "asm_sysvec_apic_timer_interrupt"]

# Reads `count` WatchUtilization messages raw (no deserializer: the bytes as sent) and prints their sizes.
WATCH_SIZES = """
import sys, grpc
channel = grpc.insecure_channel("unix:" + sys.argv[1])
call = channel.unary_stream("/lmi.agent.v1.Agent/WatchUtilization",
                            request_serializer=None, response_deserializer=None)
sizes = []
for message in call(b"", timeout=float(sys.argv[3])):
    sizes.append(len(message))
    if len(sizes) == int(sys.argv[2]):
        break
print(" ".join(map(str, sizes)))
"""


def percentile(values, q):
    values = sorted(values)
    if not values:
        return None
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def proc_cpu_s(stat):
    """User + system CPU seconds from a /proc stat file (a process's or a thread's)."""
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def agent_cpu_s(pid):
    return proc_cpu_s(f"/proc/{pid}/stat")


def agent_switches(pid, kinds=("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
    """Context switches of all the agent's threads so far (by default voluntary + involuntary: its wake-ups
    and its preemptions)."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith(kinds):
                    total += int(line.split()[1])
        except OSError:
            continue  # a thread that ended meanwhile
    return total


def log_writer(pid):
    """The agent's log writer thread (`lmi-log-writer`) so far: (CPU seconds, write system calls), or None."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            if (task / "comm").read_text().strip() != "lmi-log-writer":
                continue
            io = dict(l.split(": ") for l in (task / "io").read_text().splitlines())
            return proc_cpu_s(task / "stat"), int(io["syscw"])
        except (OSError, KeyError, ValueError):
            continue
    return None


def scrape():
    """One /metrics scrape: (seconds it took, bytes, parsed samples name{labels} -> value)."""
    started = time.perf_counter()
    body = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).read()
    took = time.perf_counter() - started
    samples = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return took, len(body), samples


def invocations(samples):
    return sum(v for k, v in samples.items() if k.startswith("lmi_invocations_total"))


def invocations_by_function(before, after):
    """Finished invokes per function name between two scrapes (every version and outcome)."""
    counts = collections.Counter()
    for k, v in after.items():
        m = re.match(r'lmi_invocations_total\{function="([^"]*)"', k)
        if m:
            counts[m[1]] += v - before.get(k, 0)
    return counts


def host_cpu_ticks():
    """(busy, total) clock ticks of every CPU so far, from /proc/stat's first eight fields (guest time is in
    user already); busy: user, nice, system, irq, softirq (not idle, iowait or steal)."""
    user, nice, system, idle, iowait, irq, softirq, steal = \
        [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return user + nice + system + irq + softirq, user + nice + system + idle + iowait + irq + softirq + steal


class Rate(float):
    """A caller's load given as invokes per second (`lmictl bench --rate`, open loop) instead of a
    concurrency (`-c`, closed loop)."""


def tick(before, after):
    n = after["lmi_sampler_ticks_total"] - before["lmi_sampler_ticks_total"]
    total = after["lmi_sampler_tick_seconds_total"] - before["lmi_sampler_tick_seconds_total"]
    cpu_key = "lmi_sampler_tick_cpu_seconds_total"
    cpu = after.get(cpu_key, 0) - before.get(cpu_key, 0)
    return {"ticks": n, "mean_ms": total / n * 1000 if n else None,
            "mean_cpu_ms": cpu / n * 1000 if n and cpu_key in after else None,
            "max_ms_since_start": after["lmi_sampler_tick_max_seconds"] * 1000}


def report_sizes(agent, count=3):
    if not GRPC_PYTHON.exists():
        log(f"  no {GRPC_PYTHON} (tests/setup.sh installs it): report size not measured")
        return None
    out = subprocess.run([str(GRPC_PYTHON), "-c", WATCH_SIZES, str(agent.socket), str(count), "30"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        log(f"  WatchUtilization failed: {out.stderr.strip()[-300:]}")
        return None
    return [int(x) for x in out.stdout.split()]


@functools.lru_cache(maxsize=None)
def cgroup_cpu_file(cgroup):
    """The file holding an environment's CPU time (v1 cpuacct.usage, or v2 cpu.stat), or None. The agent gives
    the path from the hierarchy's root; inside a container the mount shows a subtree of it, so leading
    components are dropped until the path exists."""
    parts = [c for c in cgroup.split("/") if c]
    for k in range(len(parts)):
        for path in (Path("/sys/fs/cgroup/cpuacct", *parts[k:], "cpuacct.usage"),
                     Path("/sys/fs/cgroup", *parts[k:], "cpu.stat")):
            if path.exists():
                return path
    return None


def environment_cpu_ns(cgroup):
    """CPU time so far of an environment's cgroup, nanoseconds; None if not found."""
    path = cgroup_cpu_file(cgroup)
    try:
        text = path.read_text() if path else ""
    except OSError:
        return None
    if path and path.name == "cpuacct.usage":
        return int(text)
    for line in text.splitlines():
        if line.startswith("usage_usec "):
            return int(line.split()[1]) * 1000
    return None


class Profile:
    """`perf record -e cpu-clock -F 499 --call-graph dwarf,8192` on the agent's process, started before a load
    window but counting only between start() and stop() (perf's control FIFO: events start disabled, and each
    enable/disable is acknowledged), so the samples cover the measured window and nothing else."""

    def __init__(self, pid, label):
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        self.pid, self.label = pid, label
        self.data = PROFILE_DIR / f"scale-{label}.data"
        self.fifo_dir = Path(tempfile.mkdtemp(prefix="lmi-scale-perf-"))
        ctl, ack = self.fifo_dir / "ctl", self.fifo_dir / "ack"
        os.mkfifo(ctl)
        os.mkfifo(ack)
        # Read-write opens never block, whether or not perf has opened its end yet.
        self.ctl = os.open(ctl, os.O_RDWR)
        self.ack = os.open(ack, os.O_RDWR)
        self.proc = subprocess.Popen(
            ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(PERF_HZ), "--call-graph", "dwarf,8192",
             "-D", "-1", "--control", f"fifo:{ctl},{ack}", "-o", str(self.data), "-p", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def _command(self, word):
        os.write(self.ctl, word.encode() + b"\n")
        ready, _, _ = select.select([self.ack], [], [], 60)
        if not ready:
            self.close()
            raise SystemExit(f"perf did not acknowledge '{word}': {self.proc.stderr.read().decode()[-300:]}")
        os.read(self.ack, 64)

    def start(self):
        self._command("enable")

    def stop(self):
        self._command("disable")

    def finish(self):
        """perf writes out its data and exits."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=120)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.ctl, self.ack):
            os.close(fd)
        shutil.rmtree(self.fifo_dir, ignore_errors=True)

    def analyze(self, invokes):
        """The window's samples: the agent's parts (benches/perf_split.py), kernel vs user, the system calls
        and kernel functions on the stacks and the kernel's leaf symbols, each as CPU per invoke (samples /
        invokes x the sampling period)."""
        script = PROFILE_DIR / f"scale-{self.label}.script"
        with open(script, "w") as out:
            subprocess.run(["perf", "script", "-i", str(self.data), "--pid", str(self.pid),
                            "-F", "comm,pid,tid,ip,sym,dso"], stdout=out, stderr=subprocess.DEVNULL, check=True)
        # perf script right-aligns short thread names: a sample's header line is any line not indented by a tab.
        text = Path(script).read_text(errors="replace")
        lines = [line if line.startswith("\t") or not line.strip() else line.lstrip() for line in text.splitlines()]
        Path(script).write_text("\n".join(lines) + "\n")
        samples, kernel_leaf, leaf, syscalls, watched = 0, 0, collections.Counter(), collections.Counter(), \
            collections.Counter()
        threads, irq_off = collections.Counter(), collections.Counter()
        stack, comm = None, None

        def flush(frames):
            nonlocal samples, kernel_leaf
            if frames is None:
                return
            samples += 1
            syms = [f.split(None, 1)[1].rsplit(" (", 1) if len(f.split(None, 1)) > 1 else ["?", ""] for f in frames]
            names = [re.sub(r"\+0x[0-9a-f]+$", "", sym[0]) for sym in syms]
            in_kernel = [len(sym) > 1 and "kernel" in sym[1] for sym in syms]
            if frames and in_kernel[0]:
                kernel_leaf += 1
                leaf[names[0]] += 1
                # cpu-clock cannot sample where interrupts are off: that work shows at the unlock that turns
                # them on again, so its caller says whose work it was.
                if names[0].startswith("_raw_spin_unlock_irq") and len(names) > 1:
                    irq_off[names[1]] += 1
            # The system call: the frame do_syscall_64 called (its __x64_sys_ wrapper is often inlined, so
            # this may be do_writev, __sys_recvfrom and so on); no do_syscall_64 means an interrupt or fault.
            if "do_syscall_64" in names:
                k = names.index("do_syscall_64")
                entry = re.sub(r"^(__x64_sys_|__do_sys_|__se_sys_|__sys_|ksys_|do_)", "", names[k - 1]) if k > 0 \
                    else "do_syscall_64 (entry and exit work)"
                syscalls[entry] += 1
            elif any(in_kernel):
                syscalls["(in the kernel outside a system call: interrupt, fault)"] += 1
            else:
                syscalls["(user space)"] += 1
            threads[comm] += 1
            for name in set(names) & set(KERNEL_WATCH):
                watched[name] += 1

        for line in lines:
            if not line.strip():
                continue
            if not line.startswith("\t"):
                flush(stack)
                stack, comm = [], line.split()[0]
            elif stack is not None:
                stack.append(line.strip())
        flush(stack)
        # perf_split.py over the tokio worker threads (its default): its parts would otherwise take in the log
        # writer's and other threads' samples through their lmi_agent_core frames.
        split = subprocess.run([sys.executable, str(PERF_SPLIT), str(script)], capture_output=True, text=True)
        parts = {}
        counted = re.match(r"(\d+) samples", split.stdout)
        split_samples = int(counted[1]) if counted else 0
        for line in split.stdout.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+\(kernel\s+([\d.]+)\)\s+(.*)", line)
            if m:
                parts[m[3]] = (float(m[1]), float(m[2]))
        per_invoke = lambda n: n / invokes * 1e6 / PERF_HZ if invokes else None  # noqa: E731
        return {"samples": samples, "invokes": invokes, "cpu_us_per_invoke": per_invoke(samples),
                "kernel_share": kernel_leaf / samples if samples else None,
                "parts_us": {k: (per_invoke(split_samples * pct / 100), per_invoke(split_samples * kpct / 100))
                             for k, (pct, kpct) in parts.items()},
                "split_text": split.stdout if not parts else None,
                "threads_us": {k: per_invoke(v) for k, v in threads.items()},
                "syscalls_us": {k: per_invoke(v) for k, v in syscalls.items()},
                "watched_us": {k: per_invoke(v) for k, v in watched.items()},
                "leaf_us": {k: per_invoke(v) for k, v in leaf.most_common(40)},
                "irq_off_us": {k: per_invoke(v) for k, v in irq_off.most_common(20)}}


def print_profiles(title, profiles):
    """Side by side: each window's profile (label -> Profile.analyze() result), CPU per invoke in µs."""
    labels = list(profiles)
    print(f"\n#### {title}: `perf record -e cpu-clock -F {PERF_HZ} --call-graph dwarf,8192` on the agent over "
          "the measured window, µs of agent CPU per invoke (samples / invokes x the sampling period)\n")
    print("| | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    row = lambda name, f, d=1: print(f"| {name} | " + " | ".join(  # noqa: E731
        fmt(f(profiles[l]), d) for l in labels) + " |")
    row("samples", lambda p: p["samples"], 0)
    row("invokes counted", lambda p: p["invokes"], 0)
    row("CPU per invoke from the samples, µs", lambda p: p["cpu_us_per_invoke"])
    row("kernel share (leaf frame in the kernel), %", lambda p: 100 * p["kernel_share"] if p["kernel_share"]
        is not None else None)
    row("user space per invoke, µs", lambda p: p["cpu_us_per_invoke"] * (1 - p["kernel_share"])
        if p["kernel_share"] is not None else None)
    row("kernel per invoke, µs", lambda p: p["cpu_us_per_invoke"] * p["kernel_share"]
        if p["kernel_share"] is not None else None)

    def section(heading, key, top=None):
        names = collections.Counter()
        for p in profiles.values():
            for k, v in p[key].items():
                names[k] = max(names[k], (v[0] if isinstance(v, tuple) else v) or 0)
        print(f"| **{heading}** |" + " |" * len(labels))
        for name, _ in names.most_common(top):
            cells = []
            for l in labels:
                v = profiles[l][key].get(name)
                if isinstance(v, tuple):
                    cells.append(f"{fmt(v[0], 1)} (kernel {fmt(v[1], 1)})" if v[0] is not None else "n/a")
                else:
                    cells.append(fmt(v or 0, 1))
            print(f"| {name.replace('|', '/')} | " + " | ".join(cells) + " |")

    section("thread (by name)", "threads_us")
    section("tokio worker threads, by part (benches/perf_split.py)", "parts_us")
    section("system call the sample is in (or none)", "syscalls_us", 14)
    section("kernel function anywhere on the stack", "watched_us")
    section("kernel leaf symbol (self)", "leaf_us", 15)
    section("interrupts-off work, by the caller of the _raw_spin_unlock_irq* it shows at", "irq_off_us", 8)
    for l in labels:
        if profiles[l]["split_text"]:
            print(f"\nperf_split.py for {l}:\n```\n{profiles[l]['split_text']}```")


def load_window(agent, targets, args, profile_label=None, watched=None):
    """`lmictl bench` per (function, version, concurrency) in parallel; agent CPU and invocations counted
    between two scrapes in the middle of the load. Returns the figures and the bench reports.

    profile_label: with --perf, the agent is profiled over that window (figures under "profile").
    watched: {"loaded": [environment], "idle": [environment]} (as `lmictl list` gives them): the CPU of their
    cgroups over the window and, right after it (the load still running), three snapshots of the loaded ones'
    in-flight counts, to see how dispatch spread the load (figures under "spread")."""
    # With watched, the load lasts 3 s longer, so that it still runs for the in-flight snapshots after the
    # window (a busy host starts 20 `lmictl` processes late).
    duration = args.duration + (5 if watched else 2)
    profile = None
    procs = [subprocess.Popen(
        [str(perf.LMICTL_BIN), "--socket", str(agent.socket), "--json", "bench", "invoke", f, "--version", v,
         *(["--rate", repr(float(c))] if isinstance(c, Rate) else ["-c", str(c)]), "-d", str(duration),
         "--warmup", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for f, v, c in targets]
    try:
        if profile_label and args.perf:
            profile = Profile(agent.pid, profile_label)
        time.sleep(2)  # the processes connect and warm up (the window below is what is measured)
        if profile:
            profile.start()
        _, _, m0 = scrape()
        env_cpu0 = {e["id"]: environment_cpu_ns(e["cgroup"]) for g in (watched or {}).values() for e in g}
        cpu0, t0, sw0 = agent_cpu_s(agent.pid), time.monotonic(), agent_switches(agent.pid)
        pre0, host0 = agent_switches(agent.pid, ("nonvoluntary_ctxt_switches",)), host_cpu_ticks()
        writer0 = log_writer(agent.pid)
        time.sleep(args.duration)
        cpu1, t1, sw1 = agent_cpu_s(agent.pid), time.monotonic(), agent_switches(agent.pid)
        pre1, host1 = agent_switches(agent.pid, ("nonvoluntary_ctxt_switches",)), host_cpu_ticks()
        writer1 = log_writer(agent.pid)
        env_cpu1 = {e["id"]: environment_cpu_ns(e["cgroup"]) for g in (watched or {}).values() for e in g}
        took, size, m1 = scrape()
        if profile:
            profile.stop()
        snapshots = [agent.lmictl("list") for _ in range(3)] if watched else []
        if profile:
            profile.finish()
        rss = agent.memory_kib()
    except BaseException:
        for p in procs:
            p.kill()
            p.wait()
        raise
    finally:
        if profile:
            profile.close()
    reports = []
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"lmictl bench failed ({p.returncode}): {stderr.strip()[-300:]}")
        reports.append(json.loads(stdout))
    n = invocations(m1) - invocations(m0)
    extra = {}
    if profile:
        extra["profile"] = profile.analyze(n)
    if watched:
        def cpu_s(e):
            a, b = env_cpu0.get(e["id"]), env_cpu1.get(e["id"])
            return (b - a) / 1e9 if a is not None and b is not None else None
        loaded = [cpu_s(e) for e in watched["loaded"]]
        idle = [cpu_s(e) for e in watched.get("idle", [])]
        known = [c for c in loaded if c is not None]
        ids = {e["id"] for e in watched["loaded"]}
        in_flight = {i: [] for i in ids}
        for snapshot in snapshots:
            for e in snapshot:
                if e["id"] in in_flight:
                    in_flight[e["id"]].append(e["in_flight"])
        per_env = [sum(v) / len(v) for v in in_flight.values() if v]
        mean_cpu = sum(known) / len(known) if known else None
        extra["spread"] = {
            "loaded_environments": len(ids),
            "in_flight_min": min(per_env) if per_env else None,
            "in_flight_mean": sum(per_env) / len(per_env) if per_env else None,
            "in_flight_max": max(per_env) if per_env else None,
            "runtime_cpu_us_per_invoke": sum(known) * 1e6 / n if n and known else None,
            "runtime_cpu_min_of_mean": min(known) / mean_cpu if mean_cpu else None,
            "runtime_cpu_max_of_mean": max(known) / mean_cpu if mean_cpu else None,
            "idle_environments": len(idle),
            "idle_cpu_share": sum(c for c in idle if c is not None) / (t1 - t0) if idle else None,
            "env_cpu_s": {e["id"]: cpu_s(e) for g in watched.values() for e in g},
        }
    return extra | {
        "invokes_per_s": n / (t1 - t0),
        "agent_cpu_us_per_invoke": (cpu1 - cpu0) * 1e6 / n if n else None,
        "agent_cpu_share": (cpu1 - cpu0) / (t1 - t0),
        "agent_switches_per_invoke": (sw1 - sw0) / n if n else None,
        "agent_preemptions_per_invoke": (pre1 - pre0) / n if n else None,
        # The log writer thread alone (its CPU is inside the agent's): the records' writes to the files.
        "writer_cpu_us_per_invoke": (writer1[0] - writer0[0]) * 1e6 / n if n and writer0 and writer1 else None,
        "writer_writes_per_invoke": (writer1[1] - writer0[1]) / n if n and writer0 and writer1 else None,
        "window_s": t1 - t0,
        "invokes_by_function": invocations_by_function(m0, m1),
        # The host's busy CPUs over the window, in vCPUs (2 = both saturated).
        "host_busy_vcpus": (host1[0] - host0[0]) / (host1[1] - host0[1]) * os.cpu_count()
        if host1[1] > host0[1] else None,
        "p99_us_median_of_processes": median([r["latency"]["p99_us"] for r in reports]),
        "p99_us_max_of_processes": max(r["latency"]["p99_us"] for r in reports),
        "p50_us_median_of_processes": median([r["latency"]["p50_us"] for r in reports]),
        "non_success": sum(r["invokes"] - r["outcomes"]["success"] for r in reports),
        "rss_mib": rss["VmRSS"] / 1024,
        "sampler": tick(m0, m1),
        "scrape_ms": took * 1000,
        "scrape_bytes": size,
    }, reports


# The agent's figures of a load window, as rows of the printed tables: (name, value of a window, digits).
AGENT_ROWS = [
    ("invokes/s", lambda r: r["invokes_per_s"], 0),
    ("agent CPU per invoke, µs", lambda r: r["agent_cpu_us_per_invoke"], 1),
    ("agent context switches per invoke (its wake-ups)", lambda r: r["agent_switches_per_invoke"], 2),
    ("agent CPU, share of one vCPU", lambda r: r["agent_cpu_share"], 2),
    ("of the agent's CPU per invoke, its log writer thread's, µs (10 ms ticks)",
     lambda r: r.get("writer_cpu_us_per_invoke"), 1),
    ("log writer's write system calls per invoke", lambda r: r.get("writer_writes_per_invoke"), 2),
]


def python_share(reports, is_python):
    """The share of the invokes that `lmictl bench` processes of python3.11 function versions made."""
    total = sum(r["invokes"] for r in reports)
    return sum(r["invokes"] for r, py in zip(reports, is_python) if py) / total if total else 0.0


def scenario_host_scale(args):
    functions, versions, per_version = 10, ["1", "2"], 5
    python_functions = set() if args.no_python else {"f8", "f9"}
    targets = [(f"f{i}", v, 3) for i in range(functions) for v in versions]
    results = []
    for i in range(args.runs):
        # 100 environments and the one-environment baseline in the same agent, so both see the same process.
        with Agent() as agent:
            code = native_code_dir(agent.dir)
            started = time.monotonic()
            create_host_scale_environments(agent, code, python_functions, functions, versions, per_version)
            created_s = time.monotonic() - started
            listed = agent.lmictl("list")
            ready = sum(1 for e in listed if e["state"] == "READY")
            log(f"  run {i + 1}/{args.runs}: {ready} environments READY in {created_s:.1f} s")
            # The idle window starts after the creations: ticks during them read every new environment's
            # slow files at first sight and share the CPUs with the creations.
            time.sleep(3)
            _, _, idle0 = scrape()
            time.sleep(10)
            _, _, idle1 = scrape()
            idle = tick(idle0, idle1)
            sizes = report_sizes(agent)
            many, many_reports = load_window(agent, targets, args, profile_label=f"host-scale-100-run{i + 1}")
            many["python_share"] = python_share(many_reports, [f in python_functions for f, _, _ in targets])
            log(f"    100 environments: {many['invokes_per_s']:.0f}/s, agent "
                f"{fmt(many['agent_cpu_us_per_invoke'])} µs/invoke, p99 {fmt(many['p99_us_median_of_processes'])} "
                f"µs, RSS {many['rss_mib']:.1f} MiB, tick {fmt(many['sampler']['mean_ms'], 3)} ms")
            for e in listed:
                agent.lmictl("delete", e["id"], "--grace", "0", check=False)
            agent.create("one", "provided.al2023", code, 64)
            time.sleep(3)
            _, _, one0 = scrape()
            time.sleep(3)
            _, _, one1 = scrape()
            one_idle = tick(one0, one1)
            one, _ = load_window(agent, [("one", "$LATEST", 3)] * len(targets), args,
                                 profile_label=f"host-scale-1-run{i + 1}")
            log(f"    one environment:  {one['invokes_per_s']:.0f}/s, agent "
                f"{fmt(one['agent_cpu_us_per_invoke'])} µs/invoke, p99 {fmt(one['p99_us_median_of_processes'])} "
                f"µs, RSS {one['rss_mib']:.1f} MiB, tick {fmt(one['sampler']['mean_ms'], 3)} ms")
            mixed = None
            if python_functions:
                # The same mix of invokes on one environment per runtime: the 100's python3.11 function
                # versions' callers on one python3.11 environment, the others' on the native one.
                py_callers = sum(1 for f, _, _ in targets if f in python_functions)
                agent.lmictl("create", "--function", "onepy", "--runtime", "python3.11", "--handler",
                             "echo.handler", "--code", str(PYTHON_CODE), "--max-concurrency", str(3 * py_callers),
                             "--timeout-seconds", "60", "--wait")
                time.sleep(3)
                mixed, mixed_reports = load_window(agent, [("one", "$LATEST", 3)] * (len(targets) - py_callers)
                                                   + [("onepy", "$LATEST", 3)] * py_callers, args,
                                                   profile_label=f"host-scale-mix-run{i + 1}")
                mixed["python_share"] = python_share(
                    mixed_reports, [False] * (len(targets) - py_callers) + [True] * py_callers)
                log(f"    one per runtime:  {mixed['invokes_per_s']:.0f}/s, agent "
                    f"{fmt(mixed['agent_cpu_us_per_invoke'])} µs/invoke")
            results.append({"environments_ready": ready, "create_all_s": created_s, "idle_tick_100": idle,
                            "idle_tick_1": one_idle, "report_sizes_100": sizes, "many": many, "one": one,
                            "mixed": mixed})
    pick = lambda f: median([f(r) for r in results])  # noqa: E731
    print(f"\n### host-scale: median of {len(results)} runs (20 `lmictl bench` processes, c=3 each)\n")
    mix = "100 native echo" if args.no_python else "80 native echo, 20 python3.11"
    print(f"| | 100 environments ({mix}) | 1 native echo environment |")
    print("|---|---|---|")
    rows = [
        *AGENT_ROWS,
        ("p50, µs (median of the 20 processes)", lambda r: r["p50_us_median_of_processes"], 0),
        ("p99, µs (median of the 20 processes)", lambda r: r["p99_us_median_of_processes"], 0),
        ("p99, µs (worst process)", lambda r: r["p99_us_max_of_processes"], 0),
        ("agent RSS after the load, MiB", lambda r: r["rss_mib"], 1),
        ("sampler tick under load, mean wall ms", lambda r: r["sampler"]["mean_ms"], 3),
        ("sampler tick under load, mean CPU ms", lambda r: r["sampler"]["mean_cpu_ms"], 3),
        ("`/metrics` scrape under load, ms", lambda r: r["scrape_ms"], 2),
        ("`/metrics` size, bytes", lambda r: r["scrape_bytes"], 0),
        ("non-success outcomes", lambda r: r["non_success"], 0),
    ]
    for name, f, d in rows:
        print(f"| {name} | {fmt(pick(lambda r: f(r['many'])), d)} | {fmt(pick(lambda r: f(r['one'])), d)} |")
    if all(r["mixed"] for r in results):
        # The same callers, python3.11 ones on one python3.11 environment: the baseline for the mix.
        print("\nThe same 20 callers on one environment per runtime (the python3.11 function versions' callers "
              "on one python3.11 environment, the others on the native one), the baseline for this mix:\n")
        print("| | 100 environments | 1 native echo + 1 python3.11 environment |")
        print("|---|---|---|")
        share = ("share of the invokes on python3.11, %", lambda r: 100 * r["python_share"], 1)
        preempted = ("agent context switches per invoke that were preemptions (involuntary)",
                     lambda r: r["agent_preemptions_per_invoke"], 2)
        for name, f, d in rows[:3] + [preempted] + rows[3:4] + [share] + rows[12:13]:
            print(f"| {name} | {fmt(pick(lambda r: f(r['many'])), d)} | "
                  f"{fmt(pick(lambda r: f(r['mixed'])), d)} |")
    for what, key in (("wall", "mean_ms"), ("CPU", "mean_cpu_ms")):
        print(f"| sampler tick idle, mean {what} ms | {fmt(pick(lambda r: r['idle_tick_100'][key]), 3)} | "
              f"{fmt(pick(lambda r: r['idle_tick_1'][key]), 3)} |")
    print(f"| longest sampler tick since start, ms | {fmt(pick(lambda r: r['many']['sampler']['max_ms_since_start']), 3)} | |")
    sizes = [s for r in results for s in (r["report_sizes_100"] or [])]
    print(f"| UtilizationReport size (WatchUtilization), bytes | {min(sizes) if sizes else 'n/a'}–"
          f"{max(sizes) if sizes else 'n/a'} | |")
    print(f"| environments READY / time to create all (4 at a time), s | {pick(lambda r: r['environments_ready'])}"
          f" / {fmt(pick(lambda r: r['create_all_s']))} | |")
    if args.perf:
        for i, r in enumerate(results):
            print_profiles(f"host-scale run {i + 1} (perf's own cost is in the agent CPU figures above)",
                           {f"100 environments ({mix})": r["many"]["profile"],
                            "1 native echo environment": r["one"]["profile"]})
    return results


HOST_SCALE_SHAPES = {  # host-scale-rate's windows: which environments exist and which carry the load
    "baseline": "1 native + 1 python3.11 environment (the 100 deleted or not yet made)",
    "spread": "100 environments (80 native echo, 20 python3.11) loaded",
    "held": "the same 2 loaded, the 100 held idle",
}


def create_host_scale_environments(agent, code, python_functions, functions=10, versions=("1", "2"),
                                   per_version=5):
    """host-scale's 100 environments: `functions` x `versions` x `per_version`, max concurrency 8 each, the
    ones of `python_functions` python3.11 (tests/fixtures/python), the rest native echo; 4 created at once."""
    def make(fv):
        f, v = fv
        for _ in range(per_version):
            if f in python_functions:
                agent.lmictl("create", "--function", f, "--version", v, "--runtime", "python3.11",
                             "--handler", "echo.handler", "--code", str(PYTHON_CODE),
                             "--max-concurrency", "8", "--timeout-seconds", "60", "--wait")
            else:
                agent.lmictl("create", "--function", f, "--version", v, "--runtime",
                             "provided.al2023", "--code", str(code), "--max-concurrency", "8",
                             "--timeout-seconds", "60", "--wait")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(make, [(f"f{i}", v) for i in range(functions) for v in versions]))


def scenario_host_scale_rate(args):
    """host-scale's load shapes at equal offered load (open loop) and closed loop, with the control that holds
    the 100 idle while the one-per-runtime baseline carries the load."""
    python_functions = set() if args.no_python else {"f8", "f9"}
    callers = [(f"f{i}", v) for i in range(10) for v in ("1", "2")]
    is_py = [f in python_functions for f, _ in callers]
    n_py = sum(is_py)
    if args.python_share is None or not n_py:
        shares = [1 / len(callers)] * len(callers)  # every caller the same rate, as closed loop gives c=3 each
    else:
        shares = [args.python_share / n_py if py else (1 - args.python_share) / (len(callers) - n_py)
                  for py in is_py]
    loads = [("closed loop, c=3 per caller", None)] + [(f"open loop, {r:g}/s offered", r) for r in args.rate]
    results = []
    for i in range(args.runs):
        with Agent() as agent:
            code = native_code_dir(agent.dir)
            agent.create("one", "provided.al2023", code, 64)
            if n_py:
                agent.create("onepy", "python3.11", PYTHON_CODE, 3 * n_py, handler="echo.handler")
            run = {}

            def window(shape, load_label, rate):
                listed = agent.lmictl("list")
                if any(e["state"] != "READY" for e in listed):
                    raise SystemExit(f"not every environment is READY: {[e['state'] for e in listed]}")
                pair = [e for e in listed if e["spec"]["function"]["name"] in ("one", "onepy")]
                hundred = [e for e in listed if e["spec"]["function"]["name"] not in ("one", "onepy")]
                per_caller = [3 if rate is None else Rate(rate * share) for share in shares]
                if shape == "spread":
                    targets = [(f, v, c) for (f, v), c in zip(callers, per_caller)]
                    watched = {"loaded": hundred, "idle": pair}
                else:
                    targets = [("onepy" if py else "one", "$LATEST", c) for py, c in zip(is_py, per_caller)]
                    watched = {"loaded": pair, "idle": hundred}
                load_tag = "closed" if rate is None else f"rate{rate:g}"
                r, reports = load_window(agent, targets, args, watched=watched,
                                         profile_label=f"host-scale-rate-{shape}-{load_tag}-run{i + 1}")
                python = {e["id"] for e in listed if e["spec"]["runtime"] == "python3.11"}
                env_cpu = r["spread"]["env_cpu_s"]
                by_fn = r["invokes_by_function"]
                py_invokes = sum(v for f, v in by_fn.items() if f in python_functions | {"onepy"})
                n = sum(by_fn.values())
                loaded_ids = {e["id"] for e in watched["loaded"]}

                def cpu(ids):
                    return sum(env_cpu[k] or 0 for k in ids)

                r |= {
                    "environments": len(listed),
                    "python_share": python_share(reports, is_py),
                    "python_share_agent": py_invokes / n if n else None,
                    "offered_per_s": sum(x["rate_per_s"] for x in reports) if rate is not None else None,
                    "offered": sum(x["rate_per_s"] * x["duration_s"] for x in reports)
                    if rate is not None else None,
                    "successes": sum(x["outcomes"]["success"] for x in reports),
                    "throttles": sum(x["outcomes"]["throttle"] for x in reports),
                    "skipped": sum(x["outcomes"]["skipped"] for x in reports),
                    "send_lag_p99_us_max": max((x["send_lag_p99_us"] or 0) for x in reports)
                    if rate is not None else None,
                    "python_cpu_vcpus": cpu(python) / r["window_s"],
                    "python_idle_cpu_vcpus": cpu(python - loaded_ids) / r["window_s"],
                    "python_cpu_us_per_python_invoke": cpu(python & loaded_ids) * 1e6 / py_invokes
                    if py_invokes else None,
                    "native_cpu_us_per_native_invoke": cpu(loaded_ids - python) * 1e6 / (n - py_invokes)
                    if n > py_invokes else None,
                }
                run[(shape, load_label)] = r
                log(f"  run {i + 1}/{args.runs}, {shape}, {load_label}: {r['invokes_per_s']:.0f}/s, agent "
                    f"{fmt(r['agent_cpu_us_per_invoke'])} µs/invoke, {fmt(r['agent_switches_per_invoke'], 2)} "
                    f"switches/invoke, python {100 * r['python_share']:.1f}%, host busy "
                    f"{fmt(r['host_busy_vcpus'], 2)} vCPUs, non-success {r['non_success']}, skipped {r['skipped']}")

            def hundred_windows():
                create_host_scale_environments(agent, code, python_functions)
                time.sleep(3)  # the sampler's first ticks over the new environments pass before the windows
                for label, rate in loads:
                    # spread and held alternate which goes first from run to run
                    for shape in (("spread", "held") if i % 2 == 0 else ("held", "spread")):
                        window(shape, label, rate)

            def baseline_windows():
                for e in agent.lmictl("list"):
                    if e["spec"]["function"]["name"] not in ("one", "onepy"):
                        agent.lmictl("delete", e["id"], "--grace", "0")
                time.sleep(3)
                for label, rate in loads:
                    window("baseline", label, rate)

            # Interleaved: even runs measure the baseline before the 100 are made, odd runs after they are
            # deleted.
            steps = (baseline_windows, hundred_windows) if i % 2 == 0 else (hundred_windows, baseline_windows)
            for step in steps:
                step()
            results.append(run)
    shapes = list(HOST_SCALE_SHAPES)
    print(f"\n### host-scale-rate: median of {len(results)} runs (20 `lmictl bench` processes, one per function "
          f"version of the 100, {n_py} of them python3.11; their share of an open-loop rate: "
          f"{'even (1/20 each)' if args.python_share is None or not n_py else args.python_share})\n")
    shapes_text = HOST_SCALE_SHAPES if n_py else {
        "baseline": "1 native echo environment (the 100 deleted or not yet made)",
        "spread": "100 native echo environments loaded", "held": "the same 1 loaded, the 100 held idle"}
    print("Windows: " + "; ".join(f"**{s}**: {d}" for s, d in shapes_text.items()) + ".\n")
    rows = [
        ("environments held", lambda r: r["environments"], 0),
        ("offered, invokes/s (lmictl)", lambda r: r["offered_per_s"], 0),
        *AGENT_ROWS[:3],
        ("agent context switches per invoke that were preemptions (involuntary)",
         lambda r: r["agent_preemptions_per_invoke"], 2),
        *AGENT_ROWS[3:],
        ("host CPU busy, vCPUs of 2", lambda r: r["host_busy_vcpus"], 2),
        ("python3.11 environments' CPU, vCPUs (loaded and idle)", lambda r: r["python_cpu_vcpus"], 3),
        ("… of it the idle python3.11 environments'", lambda r: r["python_idle_cpu_vcpus"], 3),
        ("idle environments' CPU, vCPUs", lambda r: r["spread"]["idle_cpu_share"], 3),
        ("python3.11 runtimes' CPU per python invoke, µs", lambda r: r["python_cpu_us_per_python_invoke"], 0),
        ("native runtimes' CPU per native invoke, µs", lambda r: r["native_cpu_us_per_native_invoke"], 1),
        ("share of the invokes on python3.11 (lmictl), %", lambda r: 100 * r["python_share"], 1),
        ("p50, µs (median of the 20 processes)", lambda r: r["p50_us_median_of_processes"], 0),
        ("p99, µs (median of the 20 processes)", lambda r: r["p99_us_median_of_processes"], 0),
        ("p99, µs (worst process)", lambda r: r["p99_us_max_of_processes"], 0),
        ("open loop: successes / offered in lmictl's windows", lambda r: r["successes"] / r["offered"]
         if r["offered"] else None, 3),
        ("open loop: lmictl's send lag p99, worst process, µs", lambda r: r["send_lag_p99_us_max"], 0),
        ("throttles", lambda r: r["throttles"], 0),
        ("skipped (open loop, max in flight)", lambda r: r["skipped"], 0),
        ("non-success outcomes", lambda r: r["non_success"], 0),
    ]
    for label, _ in loads:
        print(f"\n#### {label}\n")
        print("| | " + " | ".join(shapes) + " |")
        print("|---|" + "---|" * len(shapes))
        print("| agent CPU per invoke, µs, each run | " + " | ".join(
            ", ".join(fmt(r[(s, label)]["agent_cpu_us_per_invoke"]) for r in results) for s in shapes) + " |")
        for name, f, d in rows:
            print(f"| {name} | " + " | ".join(fmt(median([f(r[(s, label)]) for r in results]), d)
                                             for s in shapes) + " |")
    if args.perf:
        for i, run in enumerate(results):
            for label, _ in loads:
                print_profiles(f"host-scale-rate run {i + 1}, {label} (perf's own cost is in the figures above)",
                               {s: run[(s, label)]["profile"] for s in shapes})
    return [{f"{s} / {label}": r for (s, label), r in run.items()} for run in results]


def scenario_env_count(args):
    """The same load per environment (3 in flight on each) over 1, 10 and 100 native echo environments in one
    agent, and the control: 100 environments held idle while one more carries the one-environment load."""
    per_env, per_version, max_concurrency = 3, 5, 8
    windows = [  # label, functions (f0.. with 2 versions of 5 environments each) that exist, what is loaded
        ("1 environment", 0, "solo"),
        ("10 environments", 1, "spread"),
        ("100 environments", 10, "spread"),
        ("100 held idle, 1 loaded", 10, "solo"),
        ("1 environment again (the 100 deleted)", 0, "solo"),
    ]
    results = []
    for i in range(args.runs):
        with Agent() as agent:
            code = native_code_dir(agent.dir)

            def make(fv):
                f, v, n = fv
                for _ in range(n):
                    agent.lmictl("create", "--function", f, "--version", v, "--runtime", "provided.al2023",
                                 "--code", str(code), "--max-concurrency", str(max_concurrency),
                                 "--timeout-seconds", "60", "--wait")

            make(("solo", "1", 1))
            made, run = 0, {}
            for label, functions, load in windows:
                if functions > made:
                    with ThreadPoolExecutor(4) as pool:
                        list(pool.map(make, [(f"f{k}", v, per_version) for k in range(made, functions)
                                             for v in ("1", "2")]))
                    made = functions
                elif functions < made:
                    for e in agent.lmictl("list"):
                        if e["spec"]["function"]["name"] != "solo":
                            agent.lmictl("delete", e["id"], "--grace", "0")
                    made = functions
                listed = agent.lmictl("list")
                if any(e["state"] != "READY" for e in listed):
                    raise SystemExit(f"not every environment is READY: {[e['state'] for e in listed]}")
                time.sleep(2)  # the sampler's first ticks over the new environments pass before the window
                solo = [e for e in listed if e["spec"]["function"]["name"] == "solo"]
                others = [e for e in listed if e["spec"]["function"]["name"] != "solo"]
                if load == "solo":
                    targets, watched = [("solo", "1", per_env)], {"loaded": solo, "idle": others}
                else:
                    targets = [(f"f{k}", v, per_env * per_version) for k in range(functions) for v in ("1", "2")]
                    watched = {"loaded": others, "idle": solo}
                tag = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
                r, _ = load_window(agent, targets, args, profile_label=f"env-count-{tag}-run{i + 1}",
                                   watched=watched)
                r["environments"] = len(listed)
                r["lmictl"] = f"{len(targets)} x c={targets[0][2]}"
                run[label] = r
                sp = r["spread"]
                log(f"  run {i + 1}/{args.runs}, {label}: {r['invokes_per_s']:.0f}/s, agent "
                    f"{fmt(r['agent_cpu_us_per_invoke'])} µs/invoke, {fmt(r['agent_switches_per_invoke'], 2)} "
                    f"switches/invoke, in flight per loaded environment {fmt(sp['in_flight_min'])}-"
                    f"{fmt(sp['in_flight_max'])}")
            results.append(run)
    labels = [w[0] for w in windows]
    pick = lambda label, f: median([f(r[label]) for r in results])  # noqa: E731
    print(f"\n### env-count: median of {len(results)} runs ({per_env} invokes in flight per loaded native echo "
          f"environment, max concurrency {max_concurrency}; one agent)\n")
    print("| | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    rows = [
        ("environments held", lambda r: r["environments"], 0),
        ("loaded environments", lambda r: r["spread"]["loaded_environments"], 0),
        *AGENT_ROWS,
        ("loaded runtimes' CPU per invoke (their cgroups), µs", lambda r: r["spread"]["runtime_cpu_us_per_invoke"], 1),
        ("idle environments' CPU, share of one vCPU", lambda r: r["spread"]["idle_cpu_share"], 4),
        ("in flight per loaded environment after the window: min", lambda r: r["spread"]["in_flight_min"], 1),
        ("… mean", lambda r: r["spread"]["in_flight_mean"], 1),
        ("… max", lambda r: r["spread"]["in_flight_max"], 1),
        ("loaded runtime CPU in the window, least / mean", lambda r: r["spread"]["runtime_cpu_min_of_mean"], 2),
        ("loaded runtime CPU in the window, most / mean", lambda r: r["spread"]["runtime_cpu_max_of_mean"], 2),
        ("p50, µs (median of the `lmictl` processes)", lambda r: r["p50_us_median_of_processes"], 0),
        ("p99, µs (median of the `lmictl` processes)", lambda r: r["p99_us_median_of_processes"], 0),
        ("agent RSS after the load, MiB", lambda r: r["rss_mib"], 1),
        ("sampler tick under load, mean CPU ms", lambda r: r["sampler"]["mean_cpu_ms"], 3),
        ("non-success outcomes", lambda r: r["non_success"], 0),
    ]
    print("| `lmictl bench` processes x concurrency | " + " | ".join(results[0][l]["lmictl"] for l in labels) + " |")
    for name, f, d in rows:
        print(f"| {name} | " + " | ".join(fmt(pick(l, f), d) for l in labels) + " |")
    if args.perf:
        for i, run in enumerate(results):
            print_profiles(f"env-count run {i + 1} (perf's own cost is in the agent CPU figures above)",
                           {l: run[l]["profile"] for l in labels})
    return results


def scenario_in_flight_1600(args):
    held, hold_ms = 1600, 1000
    results = []
    for i in range(args.runs):
        with Agent() as agent:
            agent.create("hold", "provided.al2023", native_code_dir(agent.dir), held)
            observed = []

            def sample_in_flight():
                time.sleep(1 + args.duration / 2)  # mid-run: what the agent holds (the load's shape)
                observed.append(sum(e["in_flight"] for e in agent.lmictl("list", "--function", "hold")))

            t = threading.Thread(target=sample_in_flight)
            t.start()
            r = agent.lmictl("bench", "invoke", "hold", "-c", str(held), "--connections", "8",
                             "-d", str(args.duration), "--warmup", "1", "--agent-pid", str(agent.pid),
                             "--reset-peak-rss", "--payload", json.dumps({"native_echo": {"sleep_ms": hold_ms}}))
            t.join()
            cpu_s = (r["agent"]["cpu_user_s"] or 0) + (r["agent"]["cpu_system_s"] or 0)
            res = {"peak_rss_mib": r["agent"]["peak_rss_mib"], "in_flight_observed": observed[0] if observed else None,
                   "throughput_per_s": r["throughput_per_s"], "agent_cpu_us_per_invoke": r["agent"]["cpu_us_per_invoke"],
                   "agent_cpu_share": cpu_s / r["elapsed_s"], "p99_us": r["latency"]["p99_us"],
                   "non_success": r["invokes"] - r["outcomes"]["success"]}
            log(f"  run {i + 1}/{args.runs}: peak RSS {res['peak_rss_mib']:.1f} MiB with "
                f"{res['in_flight_observed']} in flight, {res['throughput_per_s']:.0f}/s, agent "
                f"{fmt(res['agent_cpu_us_per_invoke'])} µs/invoke")
            results.append(res)
    pick = lambda k: median([r[k] for r in results])  # noqa: E731
    print(f"\n### in-flight-1600: median of {len(results)} runs ({held} invokes held {hold_ms} ms each, "
          "one environment, 8 connections)\n")
    print("| agent peak RSS, MiB | in flight mid-run | invokes/s | agent CPU per invoke, µs | agent CPU, share of "
          "one vCPU | p99, ms | non-success |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {fmt(pick('peak_rss_mib'))} | {[r['in_flight_observed'] for r in results]} | "
          f"{fmt(pick('throughput_per_s'), 0)} | {fmt(pick('agent_cpu_us_per_invoke'))} | "
          f"{fmt(pick('agent_cpu_share'), 3)} | {fmt(pick('p99_us') / 1000)} | "
          f"{sum(r['non_success'] for r in results)} |")
    return results


PHASES = ["validate_us", "code_us", "sandbox_us", "runtime_api_us", "cgroup_us", "spawn_us", "agent_us",
          "runtime_init_us"]


def create_many(agent, code, n, at_once=True):
    """n native echo environments created at once (one lmictl each) or one after another; their start-up
    timings, the wall time from the first create to the last READY and the agent's CPU time meanwhile; then
    deleted."""
    def one(k):
        env = agent.lmictl("create", "--function", f"burst{k}", "--runtime", "provided.al2023", "--code", str(code),
                           "--max-concurrency", "4", "--timeout-seconds", "60", "--wait")
        return env["id"] if "id" in env else env["environment"]["id"]

    cpu0, t0 = agent_cpu_s(agent.pid), time.monotonic()
    if at_once:
        with ThreadPoolExecutor(n) as pool:
            ids = list(pool.map(one, range(n)))
    else:
        ids = [one(k) for k in range(n)]
    wall, cpu = time.monotonic() - t0, agent_cpu_s(agent.pid) - cpu0
    timings = [agent.lmictl("get", i)["startup"] for i in ids]
    for i in ids:
        agent.lmictl("delete", i, "--grace", "0")
    return timings, {"wall_ms": wall * 1000, "agent_cpu_ms": cpu * 1000}


def scenario_startup_under_load(args):
    burst = 20
    rows = {"one after another, no load": "sequential", "at once, no load": "quiet",
            "at once, c=64 load on another environment": "loaded"}
    samples = {k: [] for k in rows.values()}
    bursts = {k: [] for k in rows.values()}
    for i in range(args.runs):
        with Agent() as agent:
            code = native_code_dir(agent.dir)
            agent.create("load", "provided.al2023", code, 64)
            # In the same agent: one after another, at once, at once under load.
            for key, at_once in (("sequential", False), ("quiet", True)):
                t, b = create_many(agent, code, burst, at_once)
                samples[key] += t
                bursts[key].append(b)
                time.sleep(1)  # the network pool refills
            bench = subprocess.Popen(
                [str(perf.LMICTL_BIN), "--socket", str(agent.socket), "--json", "bench", "invoke", "load", "-c", "64",
                 "-d", "30", "--warmup", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(2)
            t, b = create_many(agent, code, burst)
            samples["loaded"] += t
            bursts["loaded"].append(b)
            bench.terminate()  # the load's own figures are not needed
            bench.communicate()
            log(f"  run {i + 1}/{args.runs}: agent share p50 one after another "
                f"{percentile([t['agent_us'] for t in samples['sequential'][-burst:]], 50) / 1000:.2f} ms, at once "
                f"{percentile([t['agent_us'] for t in samples['quiet'][-burst:]], 50) / 1000:.2f} ms, loaded "
                f"{percentile([t['agent_us'] for t in samples['loaded'][-burst:]], 50) / 1000:.2f} ms")
    print(f"\n### startup-under-load: {burst} native echo environments, {args.runs} run(s) "
          f"({burst * args.runs} environments per row), milliseconds\n")
    print("| created | | " + " | ".join(p.removesuffix("_us").replace("_", " ") for p in PHASES)
          + " | first create to last READY | agent CPU per environment |")
    print("|---|---|" + "---|" * (len(PHASES) + 2))
    for label, key in rows.items():
        wall = median([b["wall_ms"] for b in bursts[key]])
        cpu = median([b["agent_cpu_ms"] / burst for b in bursts[key]]) if key != "loaded" else None
        for q in (50, 99):
            cells = [fmt(percentile([t.get(p, 0) for t in samples[key]], q) / 1000, 2) for p in PHASES]
            extra = [fmt(wall, 0), fmt(cpu, 2) if cpu is not None else "(load's CPU mixed in)"] if q == 50 else ["", ""]
            print(f"| {label} | p{q} | " + " | ".join(cells + extra) + " |")
    return {"samples": samples, "bursts": bursts}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="+", choices=SCENARIOS + ["all"])
    p.add_argument("--runs", type=int, default=1, help="runs per scenario (default 1)")
    p.add_argument("--duration", type=float, default=4, help="measured seconds per load window (default 4)")
    p.add_argument("--no-build", action="store_true", help="use the existing release binaries")
    p.add_argument("--json", type=Path, help="also write every result to this file")
    p.add_argument("--no-python", action="store_true",
                   help="host-scale, host-scale-rate: every environment native echo (to set the Python "
                        "runtimes' share apart)")
    p.add_argument("--perf", action="store_true",
                   help="host-scale, env-count, host-scale-rate: profile the agent over each measured window "
                        "(perf record -e cpu-clock --call-graph dwarf; data in target/profile/scale-*) and print "
                        "where its CPU per invoke goes")
    p.add_argument("--rate", type=float, action="append", default=[],
                   help="host-scale-rate: a total open-loop rate, invokes per second, split over the 20 callers "
                        "(repeat for more rates; default 2000); with --no-python the 100 and the baseline are all "
                        "native echo")
    p.add_argument("--python-share", type=float,
                   help="host-scale-rate: the python3.11 callers' share of an open-loop rate (default: every "
                        "caller the same rate, so 4/20)")
    p.add_argument("--network-pool", type=int,
                   help="the agent's sandbox.network_pool (default: the agent's, 2); a burst of creates beyond "
                        "it makes network slots on the spot")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("scale.py needs root: the agent creates cgroups")
    if not 1 <= args.runs <= 20 or not 0 < args.duration <= 60:
        raise SystemExit("--runs must be 1-20 and --duration 0-60 seconds: keep runs short")
    if not args.rate:
        args.rate = [2000.0]
    if any(r <= 0 for r in args.rate) or (args.python_share is not None and not 0 < args.python_share < 1):
        raise SystemExit("--rate must be positive and --python-share between 0 and 1")
    if args.perf and not shutil.which("perf"):
        raise SystemExit("--perf needs perf (tests/setup.sh installs it)")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "lmi-agent", "-p", "lmi-native-echo",
                        "-p", "lmictl"], cwd=REPO, check=True)
    # Every agent of this run starts from a private copy of the binary just built: a rebuild in the shared
    # target/ meanwhile neither mixes two builds into one run's figures nor swaps the file perf resolves
    # the recorded samples' symbols against.
    bin_dir = Path(tempfile.mkdtemp(prefix="lmi-scale-bin-"))
    atexit.register(shutil.rmtree, bin_dir, ignore_errors=True)
    perf.AGENT_BIN = Path(shutil.copy2(perf.AGENT_BIN, bin_dir / "lmi-agent"))
    # perf.py's Agent passes its environment on: /metrics on loopback, and room for 100 environments'
    # uids and network slots (the defaults already allow that: 65,536 uids; capacity set by Agent).
    os.environ["LMI_AGENT_METRICS_LISTEN"] = f"127.0.0.1:{METRICS_PORT}"
    if args.network_pool is not None:
        os.environ["LMI_AGENT_SANDBOX_NETWORK_POOL"] = str(args.network_pool)
    print(f"network pool: {args.network_pool if args.network_pool is not None else 'default'}")
    scenarios = SCENARIOS if "all" in args.scenarios else args.scenarios
    results = {"machine_before": machine()}
    print(f"machine: {results['machine_before']}")
    for s in scenarios:
        log(f"== {s}")
        results[s] = globals()["scenario_" + s.replace("-", "_")](args)
    results["machine_after"] = machine()
    print(f"\nload average after: {results['machine_after']['loadavg']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
