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
    sweep        caller concurrency 1, 8, 64, 256 × environments of max concurrency 64 and 1,600 × ingress
                 (unary Invoke, InvokeStream, HTTP Invoke API), one agent, interleaved rounds (each round runs
                 every cell once, every other round in reverse order), with the Runtime API floor
                 (benches/benches/runtime_api_floor) run in every round; prints a markdown table and the
                 verdicts of issue 16's targets. --sweep-ingress, --sweep-max-concurrency,
                 --sweep-concurrency, --sweep-memory and --floor-concurrency narrow or change it;
                 --ingress-floors also runs each swept ingress's own floor in every round (the minimal
                 responder behind a minimal HTTP Invoke API or h2 gRPC server, loaded by lmictl) and adds
                 the agent's CPU per invoke at c=64 against it to the verdicts
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
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RELEASE = REPO / "target" / "release"
AGENT_BIN = RELEASE / "lmi-agent"
LMICTL_BIN = RELEASE / "lmictl"
ECHO_BIN = RELEASE / "native-echo"
SCENARIOS = ["latency", "throughput", "stream-latency", "stream-throughput", "idle-rss", "loaded-rss", "startup",
             "sweep"]
SWEEP_INGRESS = ["unary", "stream", "http"]
SWEEP_MAX_CONCURRENCY = [64, 1600]
SWEEP_CONCURRENCY = [1, 8, 64, 256]
# Each ingress's own floor: the runtime_api_floor server that puts a minimal server of that protocol in front
# of the minimal Runtime API responder (--ingress-floors).
INGRESS_FLOOR = {"unary": "minimal-grpc-unary", "stream": "minimal-grpc-stream", "http": "minimal-http"}
# One sample of the Prometheus text format: name, optional {labels}, value.
METRIC_LINE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
# A result line of benches/benches/runtime_api_floor (the ingress floors add the load generator's CPU).
FLOOR_LINE = re.compile(
    r"^\s*(?P<server>[\w-]+) server, concurrency (?P<concurrency>\d+): (?P<throughput_per_s>[\d.]+) invokes/s; "
    r"round trip p50 (?P<p50_us>[\d.]+) µs, p99 (?P<p99_us>[\d.]+) µs; "
    r"CPU per invoke: server (?P<server_cpu_us_per_invoke>[\d.]+) µs, runtime (?P<runtime_cpu_us_per_invoke>[\d.]+) µs"
    r"(?:, generator (?P<generator_cpu_us_per_invoke>[\d.]+) µs)?")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Agent:
    """A private daemon: its own socket, state directory and cgroup parent; stopped (and cleaned) on exit."""

    counter = 0
    wrapper = []

    def __init__(self, keys="", sections=""):
        """`keys`: more top-level TOML lines (such as `metrics_listen = "127.0.0.1:9464"`); `sections`: more
        TOML tables, appended after `[capacity]` (such as an `[invoke_api]` table with its `listen`)."""
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
            + (keys.rstrip("\n") + "\n" if keys else "")
            + "[capacity]\nvcpus = 128\nmemory_mib = 524288\nreserved_memory_mib = 0\n"
            + (sections.rstrip("\n") + "\n" if sections else "")
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

    def create(self, function, runtime, code, max_concurrency, handler=None, memory_mib=None):
        args = ["create", "--function", function, "--runtime", runtime, "--code", str(code),
                "--max-concurrency", str(max_concurrency), "--timeout-seconds", "60", "--wait"]
        if handler:
            args += ["--handler", handler]
        if memory_mib:
            args += ["--memory", str(memory_mib)]
        return self.lmictl(*args)

    def metrics(self, address):
        """The counters and gauges of the agent's `/metrics` at `address` (its `metrics_listen`), as
        {(name, frozenset of label pairs): value}."""
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        samples = {}
        for line in text.splitlines():
            m = METRIC_LINE.match(line)
            if m:
                labels = frozenset(LABEL.findall(m["labels"] or ""))
                samples[(m["name"], labels)] = float(m["value"])
        return samples

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


def free_port():
    """A loopback TCP port nobody holds right now (the agent binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ingress_flags():
    """`lmictl bench invoke`'s flags per ingress, as this lmictl spells them; None where it has no way."""
    help_text = subprocess.run([str(LMICTL_BIN), "bench", "invoke", "--help"], capture_output=True, text=True).stdout
    if "--via" in help_text:
        return {"unary": ["--via", "unary"], "stream": ["--via", "stream"],
                "http": ["--via", "http", "--invoke-api", "{invoke_api}"]}
    return {"unary": [], "stream": ["--stream"], "http": None}


def floor_binary(args):
    """The runtime_api_floor bench's executable (built by cargo unless --no-build)."""
    if args.no_build:
        built = [f for f in (RELEASE / "deps").glob("runtime_api_floor-*") if f.is_file() and os.access(f, os.X_OK)]
        if not built:
            raise SystemExit("no runtime_api_floor bench binary: run without --no-build once")
        return max(built, key=lambda f: f.stat().st_mtime)
    out = subprocess.run(["cargo", "bench", "--locked", "-p", "lmi-benches", "--bench", "runtime_api_floor",
                          "--no-run", "--message-format=json"], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"building runtime_api_floor failed:\n{out.stderr[-3000:]}")
    for line in out.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
                and msg["target"]["name"] == "runtime_api_floor":
            return Path(msg["executable"])
    raise SystemExit("cargo did not name the runtime_api_floor executable")


def run_floor(binary, concurrency, seconds, servers=("minimal", "agent")):
    """One run of runtime_api_floor with `servers` (LMI_FLOOR_SERVERS), one after the other: {server: its
    figures}."""
    env = dict(os.environ, LMI_FLOOR_CONCURRENCY=str(concurrency), LMI_FLOOR_SECONDS=str(seconds),
               LMI_FLOOR_SERVERS=",".join(servers))
    out = subprocess.run([str(binary), "--bench"], env=env, capture_output=True, text=True,
                         timeout=len(servers) * (2 * seconds + 30) + 30)
    if out.returncode != 0:
        raise SystemExit(f"runtime_api_floor failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    found = {}
    for line in out.stdout.splitlines():
        m = FLOOR_LINE.match(line)
        if m:
            found[m["server"]] = {k: float(v) for k, v in m.groupdict().items() if k != "server" and v is not None}
    missing = [s for s in servers if s not in found]
    if missing:
        raise SystemExit(f"runtime_api_floor printed no line for {', '.join(missing)}:\n{out.stdout}")
    return found


def throttles_by_reason(before, after, function):
    """Throttles of `function` counted by the agent between two scrapes, per reason (non-zero only)."""
    delta = {}
    for (name, labels), value in after.items():
        labels = dict(labels)
        if name == "lmi_throttles_by_reason_total" and labels.get("function") == function:
            reason = labels.get("reason", "?")
            d = value - before.get((name, frozenset(labels.items())), 0.0)
            if d:
                delta[reason] = delta.get(reason, 0) + int(d)
    return delta


def environment_identity(agent, function):
    return [(e["id"], e["state"], e.get("pid")) for e in agent.lmictl("list", "--function", function)]


def summarize_cell(reports):
    pick = lambda f: median([f(r) for r in reports])  # noqa: E731
    outcomes, reasons = {}, {}
    for r in reports:
        for k, v in r["outcomes"].items():
            outcomes[k] = outcomes.get(k, 0) + v
        for k, v in r["throttles_by_reason"].items():
            reasons[k] = reasons.get(k, 0) + v
    return {
        "runs": len(reports),
        "throughput_per_s": pick(lambda r: r["throughput_per_s"]),
        "success_per_s": pick(lambda r: r["throughput_per_s"] * r["outcomes"]["success"] / r["invokes"]
                              if r["invokes"] else 0.0),
        "p50_us": pick(lambda r: r["latency"]["p50_us"]),
        "p99_us": pick(lambda r: r["latency"]["p99_us"]),
        "agent_cpu_us_per_invoke": pick(lambda r: (r.get("agent") or {}).get("cpu_us_per_invoke")),
        "runtime_cpu_us_per_invoke": pick(lambda r: r.get("runtime_cpu_us_per_invoke")),
        "generator_cpu_us_per_invoke": pick(lambda r: r.get("lmictl_cpu_us_per_invoke")),
        # With throttles, the CPU per answered invoke mixes cheap refusals in: this is per success.
        "agent_cpu_us_per_success": pick(lambda r: (r.get("agent") or {}).get("cpu_us_per_invoke") * r["invokes"]
                                         / r["outcomes"]["success"]
                                         if r["outcomes"]["success"] and (r.get("agent") or {}).get("cpu_us_per_invoke")
                                         else None),
        "outcomes": outcomes,
        "throttles_by_reason": reasons,
    }


def outcomes_text(summary):
    o = summary["outcomes"]
    parts = [f"ok {o.get('success', 0):,}"]
    for key, name in [("function_error", "function error"), ("timeout", "timeout"),
                      ("runtime_failure", "runtime failure"), ("other", "other"), ("skipped", "skipped")]:
        if o.get(key):
            parts.append(f"{name} {o[key]:,}")
    if o.get("throttle") or summary["throttles_by_reason"]:
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(summary["throttles_by_reason"].items()))
        parts.append(f"**throttle {o.get('throttle', 0):,}**" + (f" ({reasons})" if reasons else ""))
        parts.append(f"agent CPU per success {fmt(summary['agent_cpu_us_per_success'])} µs")
    return "; ".join(parts)


def scenario_sweep(args):
    """Caller concurrency × the environment's max concurrency × ingress, in interleaved rounds, with the
    Runtime API floor measured in every round."""
    flags = ingress_flags()
    ingresses = [i for i in args.sweep_ingress if flags[i] is not None]
    not_run = {i: "this lmictl has no `bench invoke --via http`" for i in args.sweep_ingress if flags[i] is None}
    for i, why in not_run.items():
        log(f"  ingress {i} not run: {why}")
    cells = [(ingress, maxc, c) for maxc in args.sweep_max_concurrency for ingress in ingresses
             for c in args.sweep_concurrency]
    floor_bin = floor_binary(args)
    floor_servers = ["minimal", "agent"] + ([INGRESS_FLOOR[i] for i in ingresses] if args.ingress_floors else [])
    invoke_api, metrics_at = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    reports = {cell: [] for cell in cells}
    floors = []
    with Agent(keys=f'metrics_listen = "{metrics_at}"', sections=f'[invoke_api]\nlisten = "{invoke_api}"') as agent:
        code = native_code_dir(agent.dir)
        for maxc in args.sweep_max_concurrency:
            agent.create(f"echo-{maxc}", "provided.al2023", code, maxc, memory_mib=args.sweep_memory)
        identity = {maxc: environment_identity(agent, f"echo-{maxc}") for maxc in args.sweep_max_concurrency}
        for r in range(args.runs):
            # Every cell once per round, in the opposite order every other round, so drift within a round
            # and between rounds falls on all cells alike.
            order = cells if r % 2 == 0 else cells[::-1]
            floor = {c: run_floor(floor_bin, c, args.duration, floor_servers) for c in args.floor_concurrency}
            floors.append(floor)
            for c, f in floor.items():
                log(f"  round {r + 1}/{args.runs}: floor c={c}: minimal {f['minimal']['server_cpu_us_per_invoke']:.1f} "
                    f"µs CPU/invoke ({f['minimal']['throughput_per_s']:.0f}/s), agent's Runtime API "
                    f"{fmt(f.get('agent', {}).get('server_cpu_us_per_invoke'))} µs"
                    + "".join(f", {s} {f[s]['server_cpu_us_per_invoke']:.1f} µs ({f[s]['throughput_per_s']:.0f}/s)"
                              for s in floor_servers[2:]))
            for ingress, maxc, c in order:
                extra = [f.format(invoke_api=invoke_api) for f in flags[ingress]]
                before = agent.metrics(metrics_at)
                rep = agent.lmictl("bench", "invoke", f"echo-{maxc}", "-c", str(c), "-d", str(args.duration),
                                   "--warmup", "1", "--agent-pid", str(agent.pid), *extra)
                rep["throttles_by_reason"] = throttles_by_reason(before, agent.metrics(metrics_at), f"echo-{maxc}")
                rep["round"] = r + 1
                reports[(ingress, maxc, c)].append(rep)
                log(f"  round {r + 1}/{args.runs}: {ingress:6} max {maxc:4} c={c:3}: {rep['throughput_per_s']:.0f}/s, "
                    f"p50 {rep['latency']['p50_us']:.0f} µs, p99 {rep['latency']['p99_us']:.0f} µs, agent "
                    f"{fmt((rep.get('agent') or {}).get('cpu_us_per_invoke'))} µs/invoke, "
                    f"throttle {rep['outcomes']['throttle']} {rep['throttles_by_reason'] or ''}")
        # The environments served the whole sweep without a restart (1,600 pollers included).
        stable = {maxc: environment_identity(agent, f"echo-{maxc}") == ids for maxc, ids in identity.items()}
    summary = {cell: summarize_cell(reps) for cell, reps in reports.items()}
    floor_summary = {}
    for c in args.floor_concurrency:
        floor_summary[c] = {server: {k: median([f[c].get(server, {}).get(k) for f in floors])
                                     for k in ["throughput_per_s", "p50_us", "p99_us", "server_cpu_us_per_invoke",
                                               "runtime_cpu_us_per_invoke", "generator_cpu_us_per_invoke"]}
                            for server in floor_servers}
    print_sweep(args, ingresses, not_run, summary, floor_summary, stable)
    return {
        "cells": [{"ingress": i, "max_concurrency": m, "concurrency": c, "summary": summary[(i, m, c)],
                   "runs": reports[(i, m, c)]} for (i, m, c) in cells],
        "not_run": not_run,
        "floor": {"runs": [{str(c): f for c, f in floor.items()} for floor in floors],
                  "median": {str(c): f for c, f in floor_summary.items()}},
        "environments_stable": {str(m): ok for m, ok in stable.items()},
        "verdicts": sweep_verdicts(args, ingresses, summary, floor_summary),
    }


def sweep_verdicts(args, ingresses, summary, floor_summary):
    """The targets of issue 16 over the sweep's medians, as lines of text."""
    lines = []
    floor64 = floor_summary.get(64, {}).get("minimal", {}).get("server_cpu_us_per_invoke")
    for ingress in ingresses:
        a, b = summary.get((ingress, 64, 8)), summary.get((ingress, 64, 64))
        if a and b:
            ok = b["success_per_s"] >= a["success_per_s"]
            lines.append(f"{ingress}: throughput at c=64 ≥ at c=8 (max concurrency 64): {b['success_per_s']:,.0f} vs "
                         f"{a['success_per_s']:,.0f} successful invokes/s ({b['success_per_s'] / a['success_per_s']:.2f}×): "
                         f"**{'met' if ok else 'missed'}**")
        cpu = b and b["agent_cpu_us_per_invoke"]
        if cpu and floor64:
            ok = cpu <= 1.2 * floor64
            lines.append(f"{ingress}: agent CPU per invoke at c=64 (max concurrency 64) ≤ 1.2× the floor: {cpu:.1f} µs "
                         f"against 1.2 × {floor64:.1f} = {1.2 * floor64:.1f} µs ({cpu / floor64:.2f}× the floor): "
                         f"**{'met' if ok else 'missed'}**")
        own = INGRESS_FLOOR[ingress]
        own64 = floor_summary.get(64, {}).get(own, {}).get("server_cpu_us_per_invoke")
        if cpu and own64:
            # Beside the target (the line above, against `minimal`): the agent against what this
            # ingress's protocol and the Runtime API cost a server doing nothing else, in the same rounds.
            line = (f"{ingress}: agent CPU per invoke at c=64 (max concurrency 64) against this ingress's own floor "
                    f"({own}): {cpu:.1f} µs against {own64:.1f} µs ({cpu / own64:.2f}× its floor, "
                    f"{'within' if cpu <= 1.2 * own64 else 'over'} 1.2×)")
            if floor64:
                line += (f"; of the agent's {cpu - floor64:.1f} µs over the `minimal` floor, the ingress's floor "
                         f"accounts for {own64 - floor64:.1f} µs, and {cpu - own64:.1f} µs are beyond it")
            lines.append(line)
        for maxc in args.sweep_max_concurrency:
            rising = [c for c in args.sweep_concurrency if c <= maxc and (ingress, maxc, c) in summary]
            drops = [(lo, hi) for lo, hi in zip(rising, rising[1:])
                     if summary[(ingress, maxc, hi)]["success_per_s"] < summary[(ingress, maxc, lo)]["success_per_s"]]
            if len(rising) > 1:
                lines.append(f"{ingress}: max concurrency {maxc}, throughput never falls as c rises to the limit "
                             f"(c = {', '.join(map(str, rising))}): "
                             + ("**held**" if not drops else "**fell** " + ", ".join(f"from c={lo} to c={hi}" for lo, hi in drops)))
    return lines


def print_sweep(args, ingresses, not_run, summary, floor_summary, stable):
    print(f"\nconcurrency sweep: medians of {args.runs} interleaved rounds of {args.duration:g} s per cell "
          f"(1 s warm-up each); native echo, environments of {args.sweep_memory} MiB; CPU per answered invoke "
          f"(throttles included); outcomes summed over the rounds (throttle reasons from the agent's "
          f"`lmi_throttles_by_reason_total`, warm-ups included)\n")
    print("| ingress | max conc | c | invokes/s | ok/s | p50 | p99 | CPU/invoke: agent, runtime, generator | outcomes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (ingress, maxc, c), s in summary.items():
        print(f"| {ingress} | {maxc} | {c} | {fmt(s['throughput_per_s'], 0)} | {fmt(s['success_per_s'], 0)} | "
              f"{fmt(s['p50_us'], 0)} µs | {fmt(s['p99_us'], 0)} µs | {fmt(s['agent_cpu_us_per_invoke'])}, "
              f"{fmt(s['runtime_cpu_us_per_invoke'])}, {fmt(s['generator_cpu_us_per_invoke'])} µs | "
              f"{outcomes_text(s)} |")
    for ingress, why in not_run.items():
        print(f"| {ingress} | | | not run: {why} | | | | | |")
    print("\nRuntime API floor in the same run (benches/benches/runtime_api_floor, medians of the rounds; `minimal` "
          "and `agent` with in-process callers, the ingress floors loaded by lmictl, whose round trip it is):\n")
    print("| server | c | invokes/s | p50 | p99 | server CPU/invoke | runtime CPU/invoke | generator CPU/invoke |")
    print("|---|---|---|---|---|---|---|---|")
    for c, servers in floor_summary.items():
        for server, f in servers.items():
            print(f"| {server} | {c} | {fmt(f['throughput_per_s'], 0)} | {fmt(f['p50_us'], 0)} µs | "
                  f"{fmt(f['p99_us'], 0)} µs | {fmt(f['server_cpu_us_per_invoke'])} µs | "
                  f"{fmt(f['runtime_cpu_us_per_invoke'])} µs | "
                  + (f"{fmt(f['generator_cpu_us_per_invoke'])} µs |" if f.get('generator_cpu_us_per_invoke') is not None
                     else "in process |"))
    print()
    for line in sweep_verdicts(args, ingresses, summary, floor_summary):
        print(f"- {line}")
    for maxc, ok in stable.items():
        print(f"- environment of max concurrency {maxc}: "
              + ("the same READY environment (id and runtime pid) from start to end" if ok
                 else "**changed during the sweep (restarted or failed): see the agent log**"))


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
    p.add_argument("--agent-bin", type=Path,
                   help="run this lmi-agent binary instead of target/release/lmi-agent (an A/B of a change)")
    lst = lambda t: lambda v: [t(x) for x in v.split(",")]  # noqa: E731
    p.add_argument("--sweep-ingress", type=lst(str), default=SWEEP_INGRESS,
                   help="sweep: ingresses, of unary,stream,http (default all three)")
    p.add_argument("--sweep-max-concurrency", type=lst(int), default=SWEEP_MAX_CONCURRENCY,
                   help="sweep: the environments' max concurrency (default 64,1600)")
    p.add_argument("--sweep-concurrency", type=lst(int), default=SWEEP_CONCURRENCY,
                   help="sweep: caller concurrency (default 1,8,64,256)")
    p.add_argument("--sweep-memory", type=int, default=4096,
                   help="sweep: each environment's memory in MiB (default 4096: 2 vCPUs, the host's two)")
    p.add_argument("--floor-concurrency", type=lst(int), default=[64],
                   help="sweep: concurrency of the runtime_api_floor runs (default 64)")
    p.add_argument("--ingress-floors", action="store_true",
                   help="sweep: also run each swept ingress's own floor (runtime_api_floor's minimal-http, "
                        "minimal-grpc-unary, minimal-grpc-stream) in every round, and judge the agent against it")
    args = p.parse_args()
    Agent.wrapper = args.agent_wrapper.split()
    if args.agent_bin:
        global AGENT_BIN
        AGENT_BIN = args.agent_bin.resolve()
    if os.geteuid() != 0:
        raise SystemExit("perf.py needs root: the agent creates cgroups")
    if not 1 <= args.runs <= 20 or not 0 < args.duration <= 60:
        raise SystemExit("--runs must be 1-20 and --duration 0-60 seconds: keep runs short")
    if not set(args.sweep_ingress) <= set(SWEEP_INGRESS):
        raise SystemExit(f"--sweep-ingress: each of {','.join(SWEEP_INGRESS)}")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "lmi-agent", "-p", "lmictl",
                        "-p", "lmi-native-echo"],
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
