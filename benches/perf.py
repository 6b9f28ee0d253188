#!/usr/bin/env python3
"""Reproduces the figures of docs/PERFORMANCE.md: a private lmi-agent (release build) per scenario, the
native echo runtime, `lmictl bench`, several runs, medians.

Usage (as root: the agent creates cgroups):

    benches/perf.py [--runs N] [--duration SECONDS] [--no-build] [--json FILE] SCENARIO...

Scenarios:
    latency      invoke round trip at concurrency 1 (one native echo environment, max concurrency 64)
    throughput   invokes/s and CPU per invoke at concurrency 64 in that one environment
    stream-latency, stream-throughput
                 the same two over InvokeStream (one stream, each invoke a message) instead of unary Invoke
    idle-rss     the agent's RSS right after start, no environment
    loaded-rss   the agent's peak RSS with 20 environments and 1,000 invokes held in flight
    startup      environment start-up split into the agent's phases and the runtime's init, per runtime
    all          every scenario above

--favordynmods mounts a throwaway cgroup v1 hierarchy with the `favordynmods` option for the run (and
unmounts it after). That option is global to the kernel: it takes the RCU grace-period wait out of every
cgroup migration (see docs/PERFORMANCE.md, start-up). --agent-wrapper runs the agent under a command, for
example `valgrind --tool=callgrind` (benches/profile.sh does that).

Each run is short (the machine may be shared: look at the load average printed with the results).
Nothing is asserted: this prints what it measured.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RELEASE = REPO / "target" / "release"
AGENT_BIN = RELEASE / "lmi-agent"
LMICTL_BIN = RELEASE / "lmictl"
ECHO_BIN = RELEASE / "native-echo"
SCENARIOS = ["latency", "throughput", "stream-latency", "stream-throughput", "idle-rss", "loaded-rss", "startup"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Agent:
    """A private daemon: its own socket, state directory and cgroup parent; stopped (and cleaned) on exit."""

    counter = 0
    wrapper = []

    def __init__(self):
        Agent.counter += 1
        self.dir = Path(tempfile.mkdtemp(prefix="lmi-perf-"))
        self.socket = self.dir / "agent.sock"
        cgroup_parent = f"lmi-perf-{os.getpid()}-{Agent.counter}"
        config = self.dir / "agent.toml"
        config.write_text(
            f'socket = "{self.socket}"\n'
            f'state_dir = "{self.dir / "state"}"\n'
            f'cgroup_parent = "{cgroup_parent}"\n'
            f'shims_dir = "{REPO / "runtime-shims"}"\n'
            'log_format = "json"\n'
            "[capacity]\nvcpus = 128\nmemory_mib = 524288\nreserved_memory_mib = 0\n"
        )
        notify_path = self.dir / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify.settimeout(120 if Agent.wrapper else 30)
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
        env.setdefault("LMI_AGENT_LOG", "info")
        self.log_file = open(self.dir / "agent.log", "wb")
        self.proc = subprocess.Popen(
            [*Agent.wrapper, str(AGENT_BIN), "--config", str(config)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=self.log_file,
        )
        try:
            msg = notify.recv(256)
        except socket.timeout:
            self.stop()
            raise SystemExit(f"the agent did not become ready; see {self.dir / 'agent.log'}")
        finally:
            notify.close()
        if msg != b"READY=1":
            self.stop()
            raise SystemExit(f"unexpected first notification {msg!r}")
        self.pid = self.proc.pid

    def lmictl(self, *args, check=True):
        out = subprocess.run(
            [str(LMICTL_BIN), "--socket", str(self.socket), "--json", *args],
            capture_output=True,
            text=True,
        )
        if check and out.returncode != 0:
            raise SystemExit(f"lmictl {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
        return json.loads(out.stdout) if out.stdout.strip() else None

    def create(self, function, runtime, code, max_concurrency, handler=None):
        args = ["create", "--function", function, "--runtime", runtime, "--code", str(code),
                "--max-concurrency", str(max_concurrency), "--timeout-seconds", "60", "--wait"]
        if handler:
            args += ["--handler", handler]
        return self.lmictl(*args)

    def memory_kib(self):
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
        return fields

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120 if Agent.wrapper else 30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def native_code_dir(root):
    code = Path(root) / "native-echo"
    code.mkdir(exist_ok=True)
    boot = code / "bootstrap"
    if not boot.exists():
        boot.symlink_to(ECHO_BIN)
    return code


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=1):
    return "n/a" if v is None else f"{v:.{digits}f}"


def invoke_runs(args, agent, function, extra):
    """`lmictl bench invoke` args.runs times; returns the reports."""
    reports = []
    for i in range(args.runs):
        r = agent.lmictl("bench", "invoke", function, "-d", str(args.duration), "--warmup", "1",
                         "--agent-pid", str(agent.pid), *extra)
        log(f"  run {i + 1}/{args.runs}: {r['throughput_per_s']:.0f}/s, p50 {r['latency']['p50_us']:.1f} µs, "
            f"p99 {r['latency']['p99_us']:.1f} µs, agent {fmt(r['agent']['cpu_us_per_invoke'])} µs CPU/invoke")
        reports.append(r)
    return reports


def summarize_invoke(name, reports):
    pick = lambda f: median([f(r) for r in reports])  # noqa: E731
    summary = {
        "runs": len(reports),
        "throughput_per_s": pick(lambda r: r["throughput_per_s"]),
        "p50_us": pick(lambda r: r["latency"]["p50_us"]),
        "p90_us": pick(lambda r: r["latency"]["p90_us"]),
        "p99_us": pick(lambda r: r["latency"]["p99_us"]),
        "p999_us": pick(lambda r: r["latency"]["p999_us"]),
        "agent_cpu_us_per_invoke": pick(lambda r: r["agent"]["cpu_us_per_invoke"]),
        "runtime_cpu_us_per_invoke": pick(lambda r: r["runtime_cpu_us_per_invoke"]),
        "lmictl_cpu_us_per_invoke": pick(lambda r: r["lmictl_cpu_us_per_invoke"]),
        "agent_peak_rss_mib": pick(lambda r: r["agent"]["peak_rss_mib"]),
        "not_success": sum(r["invokes"] - r["outcomes"]["success"] for r in reports),
    }
    print(f"{name}: median of {len(reports)} runs: {fmt(summary['throughput_per_s'], 0)} invokes/s; latency p50 "
          f"{fmt(summary['p50_us'])} µs, p90 {fmt(summary['p90_us'])} µs, p99 {fmt(summary['p99_us'])} µs, "
          f"p99.9 {fmt(summary['p999_us'])} µs; CPU per invoke: agent {fmt(summary['agent_cpu_us_per_invoke'])} µs, "
          f"runtime {fmt(summary['runtime_cpu_us_per_invoke'])} µs, lmictl {fmt(summary['lmictl_cpu_us_per_invoke'])} "
          f"µs; agent peak RSS {fmt(summary['agent_peak_rss_mib'])} MiB; non-success outcomes {summary['not_success']}")
    return summary


def scenario_invoke(args, concurrency, stream=False):
    with Agent() as agent:
        agent.create("echo", "provided.al2023", native_code_dir(agent.dir), 64)
        return invoke_runs(args, agent, "echo", ["-c", str(concurrency)] + (["--stream"] if stream else []))


def scenario_latency(args):
    return summarize_invoke("latency (c=1)", scenario_invoke(args, 1))


def scenario_throughput(args):
    return summarize_invoke("throughput (c=64, one environment)", scenario_invoke(args, 64))


def scenario_stream_latency(args):
    return summarize_invoke("stream latency (c=1, InvokeStream)", scenario_invoke(args, 1, stream=True))


def scenario_stream_throughput(args):
    return summarize_invoke("stream throughput (c=64, one environment, InvokeStream)",
                            scenario_invoke(args, 64, stream=True))


def scenario_idle_rss(args):
    samples = []
    for i in range(args.runs):
        with Agent() as agent:
            # Serve one request first, so the figure includes what the first client costs.
            agent.lmictl("host")
            m = agent.memory_kib()
            log(f"  run {i + 1}/{args.runs}: RSS {m['VmRSS'] / 1024:.1f} MiB, peak {m['VmHWM'] / 1024:.1f} MiB")
            samples.append(m)
    rss = median([m["VmRSS"] / 1024 for m in samples])
    peak = median([m["VmHWM"] / 1024 for m in samples])
    print(f"idle RSS: median of {len(samples)} fresh agents: RSS {fmt(rss)} MiB, peak {fmt(peak)} MiB")
    return {"runs": len(samples), "rss_mib": rss, "peak_rss_mib": peak}


def scenario_loaded_rss(args):
    envs, per_env, hold_ms = 20, 50, 1000
    results = []
    for i in range(args.runs):
        with Agent() as agent:
            code = native_code_dir(agent.dir)
            for _ in range(envs):
                agent.create("hold", "provided.al2023", code, per_env)
            observed = []

            def sample_in_flight():
                # Mid-run, count what the agent holds (the load's shape, not a timing).
                time.sleep(1 + args.duration / 2)
                listed = agent.lmictl("list", "--function", "hold")
                observed.append(sum(e["in_flight"] for e in listed))

            sampler = threading.Thread(target=sample_in_flight)
            sampler.start()
            r = agent.lmictl("bench", "invoke", "hold", "-c", str(envs * per_env), "--connections", "8",
                             "-d", str(args.duration), "--warmup", "1", "--agent-pid", str(agent.pid),
                             "--reset-peak-rss", "--payload", json.dumps({"native_echo": {"sleep_ms": hold_ms}}))
            sampler.join()
            m = agent.memory_kib()
            log(f"  run {i + 1}/{args.runs}: peak RSS {r['agent']['peak_rss_mib']:.1f} MiB with "
                f"{observed[0] if observed else '?'} in flight, {r['throughput_per_s']:.0f}/s")
            results.append({"peak_rss_mib": r["agent"]["peak_rss_mib"], "rss_after_mib": m["VmRSS"] / 1024,
                            "in_flight_observed": observed[0] if observed else None,
                            "non_success": r["invokes"] - r["outcomes"]["success"]})
    peak = median([x["peak_rss_mib"] for x in results])
    print(f"loaded RSS ({envs} environments, {envs * per_env} invokes held {hold_ms} ms each): median of "
          f"{len(results)} runs: peak {fmt(peak)} MiB; in flight observed mid-run "
          f"{[x['in_flight_observed'] for x in results]}; non-success {[x['non_success'] for x in results]}")
    return {"runs": results, "peak_rss_mib": peak}


def scenario_startup(args):
    out = {}
    with Agent() as agent:
        specs = {
            "provided.al2023 (native echo)": ["--function", "s-native", "--runtime", "provided.al2023",
                                              "--code", str(native_code_dir(agent.dir)),
                                              "--max-concurrency", "16"],
            "python3.11": ["--function", "s-python", "--runtime", "python3.11", "--handler", "echo.handler",
                           "--code", str(REPO / "tests" / "fixtures" / "python"), "--max-concurrency", "16"],
        }
        for name, spec in specs.items():
            r = agent.lmictl("bench", "startup", "-n", str(args.runs), *spec)
            m = r["median"]
            print(f"startup {name}: median of {len(r['runs'])}: agent {m['agent_us'] / 1000:.2f} ms (validate "
                  f"{m['validate_us'] / 1000:.2f}, code {m['code_us'] / 1000:.2f}, sandbox {m['sandbox_us'] / 1000:.2f}, runtime api "
                  f"{m['runtime_api_us'] / 1000:.2f}, cgroup {m['cgroup_us'] / 1000:.2f}, spawn "
                  f"{m['spawn_us'] / 1000:.2f}); runtime init {m['runtime_init_us'] / 1000:.2f} ms; "
                  f"CreateEnvironment RPC {m['create_rpc_us'] / 1000:.2f} ms")
            out[name] = r
    return out


def machine():
    return {
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "arch": os.uname().machine,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="+", choices=SCENARIOS + ["all"])
    p.add_argument("--runs", type=int, default=5, help="runs per scenario (default 5)")
    p.add_argument("--duration", type=float, default=5, help="measured seconds per load run (default 5)")
    p.add_argument("--no-build", action="store_true", help="use the existing release binaries")
    p.add_argument("--json", type=Path, help="also write every result to this file")
    p.add_argument("--favordynmods", action="store_true",
                   help="run with the kernel's cgroup favordynmods behaviour switched on (see above)")
    p.add_argument("--agent-wrapper", default="", help="command to run the agent under, e.g. valgrind")
    args = p.parse_args()
    Agent.wrapper = args.agent_wrapper.split()
    if os.geteuid() != 0:
        raise SystemExit("perf.py needs root: the agent creates cgroups")
    if not 1 <= args.runs <= 20 or not 0 < args.duration <= 60:
        raise SystemExit("--runs must be 1-20 and --duration 0-60 seconds: keep runs short")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "lmi-agent", "-p", "lmi-native-echo"],
                       cwd=REPO, check=True)
    scenarios = SCENARIOS if "all" in args.scenarios else args.scenarios
    results = {"machine_before": machine(), "favordynmods": args.favordynmods}
    print(f"machine: {results['machine_before']}; favordynmods: {args.favordynmods}")
    mount = Path(tempfile.mkdtemp(prefix="lmi-perf-fdm-")) if args.favordynmods else None
    try:
        if mount:
            subprocess.run(["mount", "-t", "cgroup", "-o", f"none,name=lmi-perf-fdm-{os.getpid()},favordynmods",
                            "cgroup", str(mount)], check=True)
        for s in scenarios:
            log(f"== {s}")
            results[s] = globals()["scenario_" + s.replace("-", "_")](args)
    finally:
        if mount:
            subprocess.run(["umount", str(mount)], check=False)
            mount.rmdir()
    results["machine_after"] = machine()
    print(f"load average after: {results['machine_after']['loadavg']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
