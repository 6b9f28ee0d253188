#!/usr/bin/env python3
"""The agent at host scale (issue 16): many environments, many invokes in flight, start-up under load.
A private lmi-agent (release build) per scenario, built on benches/perf.py's Agent; prints markdown.

Usage (as root: the agent creates cgroups):

    benches/scale.py [--runs N] [--duration SECONDS] [--no-build] [--json FILE] [--no-python]
                     [--network-pool N] SCENARIO...

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
    all                 every scenario above

Nothing is asserted: it prints what it measured. Runs are short by default (a shared machine: look at the
load average printed with the results).
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf  # noqa: E402
from perf import Agent, REPO, fmt, log, machine, median, native_code_dir  # noqa: E402

SCENARIOS = ["host-scale", "in-flight-1600", "startup-under-load"]
PYTHON_CODE = REPO / "tests" / "fixtures" / "python"
GRPC_PYTHON = Path("/var/cache/lmi-agent/test-tools/grpc-python/bin/python")
METRICS_PORT = 19464 + os.getpid() % 1000

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


def agent_cpu_s(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def agent_switches(pid):
    """Context switches of all the agent's threads so far (voluntary + involuntary): its wake-ups."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        except OSError:
            continue  # a thread that ended meanwhile
    return total


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


def load_window(agent, targets, args):
    """`lmictl bench` per (function, version, concurrency) in parallel; agent CPU and invocations counted
    between two scrapes in the middle of the load. Returns the figures and the bench reports."""
    duration = args.duration + 2
    procs = [subprocess.Popen(
        [str(perf.LMICTL_BIN), "--socket", str(agent.socket), "--json", "bench", "invoke", f, "--version", v,
         "-c", str(c), "-d", str(duration), "--warmup", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for f, v, c in targets]
    time.sleep(2)  # the processes connect and warm up (the window below is what is measured)
    _, _, m0 = scrape()
    cpu0, t0, sw0 = agent_cpu_s(agent.pid), time.monotonic(), agent_switches(agent.pid)
    time.sleep(args.duration)
    cpu1, t1, sw1 = agent_cpu_s(agent.pid), time.monotonic(), agent_switches(agent.pid)
    took, size, m1 = scrape()
    rss = agent.memory_kib()
    reports = []
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"lmictl bench failed ({p.returncode}): {stderr.strip()[-300:]}")
        reports.append(json.loads(stdout))
    n = invocations(m1) - invocations(m0)
    return {
        "invokes_per_s": n / (t1 - t0),
        "agent_cpu_us_per_invoke": (cpu1 - cpu0) * 1e6 / n if n else None,
        "agent_cpu_share": (cpu1 - cpu0) / (t1 - t0),
        "agent_switches_per_invoke": (sw1 - sw0) / n if n else None,
        "p99_us_median_of_processes": median([r["latency"]["p99_us"] for r in reports]),
        "p99_us_max_of_processes": max(r["latency"]["p99_us"] for r in reports),
        "p50_us_median_of_processes": median([r["latency"]["p50_us"] for r in reports]),
        "non_success": sum(r["invokes"] - r["outcomes"]["success"] for r in reports),
        "rss_mib": rss["VmRSS"] / 1024,
        "sampler": tick(m0, m1),
        "scrape_ms": took * 1000,
        "scrape_bytes": size,
    }, reports


def scenario_host_scale(args):
    functions, versions, per_version = 10, ["1", "2"], 5
    python_functions = set() if args.no_python else {"f8", "f9"}
    targets = [(f"f{i}", v, 3) for i in range(functions) for v in versions]
    results = []
    for i in range(args.runs):
        # 100 environments and the one-environment baseline in the same agent, so both see the same process.
        with Agent() as agent:
            code = native_code_dir(agent.dir)
            _, _, idle0 = scrape()
            started = time.monotonic()

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
                list(pool.map(make, [(f, v) for f, v, _ in targets]))
            created_s = time.monotonic() - started
            listed = agent.lmictl("list")
            ready = sum(1 for e in listed if e["state"] == "READY")
            log(f"  run {i + 1}/{args.runs}: {ready} environments READY in {created_s:.1f} s")
            time.sleep(3)  # a few idle ticks with every environment
            _, _, idle1 = scrape()
            idle = tick(idle0, idle1)
            sizes = report_sizes(agent)
            many, _ = load_window(agent, targets, args)
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
            one, _ = load_window(agent, [("one", "$LATEST", 3)] * len(targets), args)
            log(f"    one environment:  {one['invokes_per_s']:.0f}/s, agent "
                f"{fmt(one['agent_cpu_us_per_invoke'])} µs/invoke, p99 {fmt(one['p99_us_median_of_processes'])} "
                f"µs, RSS {one['rss_mib']:.1f} MiB, tick {fmt(one['sampler']['mean_ms'], 3)} ms")
            results.append({"environments_ready": ready, "create_all_s": created_s, "idle_tick_100": idle,
                            "idle_tick_1": one_idle, "report_sizes_100": sizes, "many": many, "one": one})
    pick = lambda f: median([f(r) for r in results])  # noqa: E731
    print(f"\n### host-scale: median of {len(results)} runs (20 `lmictl bench` processes, c=3 each)\n")
    mix = "100 native echo" if args.no_python else "80 native echo, 20 python3.11"
    print(f"| | 100 environments ({mix}) | 1 native echo environment |")
    print("|---|---|---|")
    rows = [
        ("invokes/s", lambda r: r["invokes_per_s"], 0),
        ("agent CPU per invoke, µs", lambda r: r["agent_cpu_us_per_invoke"], 1),
        ("agent context switches per invoke (its wake-ups)", lambda r: r["agent_switches_per_invoke"], 2),
        ("agent CPU, share of one vCPU", lambda r: r["agent_cpu_share"], 2),
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
    for what, key in (("wall", "mean_ms"), ("CPU", "mean_cpu_ms")):
        print(f"| sampler tick idle, mean {what} ms | {fmt(pick(lambda r: r['idle_tick_100'][key]), 3)} | "
              f"{fmt(pick(lambda r: r['idle_tick_1'][key]), 3)} |")
    print(f"| longest sampler tick since start, ms | {fmt(pick(lambda r: r['many']['sampler']['max_ms_since_start']), 3)} | |")
    sizes = [s for r in results for s in (r["report_sizes_100"] or [])]
    print(f"| UtilizationReport size (WatchUtilization), bytes | {min(sizes) if sizes else 'n/a'}–"
          f"{max(sizes) if sizes else 'n/a'} | |")
    print(f"| environments READY / time to create all (4 at a time), s | {pick(lambda r: r['environments_ready'])}"
          f" / {fmt(pick(lambda r: r['create_all_s']))} | |")
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
                   help="host-scale: every environment native echo (to set the Python runtimes' share apart)")
    p.add_argument("--network-pool", type=int,
                   help="the agent's sandbox.network_pool (default: the agent's, 2); a burst of creates beyond "
                        "it makes network slots on the spot")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("scale.py needs root: the agent creates cgroups")
    if not 1 <= args.runs <= 20 or not 0 < args.duration <= 60:
        raise SystemExit("--runs must be 1-20 and --duration 0-60 seconds: keep runs short")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "lmi-agent", "-p", "lmi-native-echo",
                        "-p", "lmictl"], cwd=REPO, check=True)
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
