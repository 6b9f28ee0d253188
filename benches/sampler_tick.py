#!/usr/bin/env python3
"""The sampler's tick on this host's real cgroups (issue 16): one private lmi-agent (release build, see
benches/perf.py's Agent), N native echo environments (default 100, 20 function versions, max concurrency 8),
then the agent's own tick metrics (lmi_sampler_ticks_total, lmi_sampler_tick_seconds_total,
lmi_sampler_tick_cpu_seconds_total) over an idle window, a window with `lmictl bench` load on 4 of the
function versions, and a second idle window after the load (`--python K`: the last K environments are
python3.11, `tests/fixtures/python`, as in benches/scale.py's host-scale). Prints markdown; nothing is
asserted.

Usage (as root: the agent creates cgroups):

    benches/sampler_tick.py [--environments N] [--python K] [--window SECONDS] [--runs N] [--agent-bin PATH]...

Several --agent-bin in one call are run one after another in each run (interleaved), e.g. a build before a
change against one after it. The release binaries must exist (`cargo build --release -p lmi-agent -p lmictl
-p lmi-native-echo`).
"""

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf  # noqa: E402
from perf import Agent, fmt, log, median, native_code_dir  # noqa: E402

METRICS_PORT = 20464 + os.getpid() % 1000
PYTHON_CODE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "python"
KEYS = ("lmi_sampler_ticks_total", "lmi_sampler_tick_seconds_total", "lmi_sampler_tick_cpu_seconds_total")


def tick_metrics(agent):
    samples = agent.metrics(f"127.0.0.1:{METRICS_PORT}")
    return {k: samples.get((k, frozenset()), 0.0) for k in KEYS}


def window(agent, seconds):
    """Mean wall and CPU milliseconds per tick over `seconds`."""
    m0 = tick_metrics(agent)
    time.sleep(seconds)
    m1 = tick_metrics(agent)
    n = m1[KEYS[0]] - m0[KEYS[0]]
    if not n:
        return {"ticks": 0, "wall_ms": None, "cpu_ms": None}
    return {"ticks": n,
            "wall_ms": (m1[KEYS[1]] - m0[KEYS[1]]) / n * 1000,
            "cpu_ms": (m1[KEYS[2]] - m0[KEYS[2]]) / n * 1000}


def one_run(agent_bin, args):
    perf.AGENT_BIN = agent_bin
    with Agent(keys=f'metrics_listen = "127.0.0.1:{METRICS_PORT}"') as agent:
        code = native_code_dir(agent.dir)
        versions = [(f"f{i}", v) for i in range(10) for v in ("1", "2")]
        wanted = [versions[k % len(versions)] for k in range(args.environments)]
        # The last --python function versions are python3.11 (the load below runs on the first 4, native).
        python = set(versions[len(versions) - args.python * len(versions) // max(args.environments, 1):]) \
            if args.python else set()

        def make(fv):
            if fv in python:
                runtime = ["--runtime", "python3.11", "--handler", "echo.handler", "--code", str(PYTHON_CODE)]
            else:
                runtime = ["--runtime", "provided.al2023", "--code", str(code)]
            agent.lmictl("create", "--function", fv[0], "--version", fv[1], *runtime, "--max-concurrency", "8",
                         "--timeout-seconds", "60", "--wait")

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(make, wanted))
        ready = sum(1 for e in agent.lmictl("list") if e["state"] == "READY")
        time.sleep(3)  # the environments' first readings are behind us
        idle = window(agent, args.window)
        procs = [subprocess.Popen(
            [str(perf.LMICTL_BIN), "--socket", str(agent.socket), "--json", "bench", "invoke", f, "--version", v,
             "-c", "2", "-d", str(args.window + 3), "--warmup", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for f, v in versions[:4]]
        time.sleep(2)
        loaded = window(agent, args.window)
        for p in procs:
            p.wait()
        time.sleep(3)
        idle_after = window(agent, args.window)
        pythons = sum(1 for fv in wanted if fv in python)
        for e in agent.lmictl("list"):
            agent.lmictl("delete", e["id"], "--grace", "0", check=False)
        return {"ready": ready, "python": pythons, "idle": idle, "loaded": loaded, "idle_after": idle_after}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--environments", type=int, default=100)
    p.add_argument("--python", type=int, default=0,
                   help="how many of the environments are python3.11 (a multiple of N/20; default 0)")
    p.add_argument("--window", type=float, default=20, help="seconds per measured window (default 20)")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--agent-bin", type=Path, action="append",
                   help="lmi-agent binary to measure (repeatable; default target/release/lmi-agent)")
    args = p.parse_args()
    bins = [b.resolve() for b in (args.agent_bin or [perf.AGENT_BIN])]
    results = {b: [] for b in bins}
    for run in range(args.runs):
        for b in bins:
            r = one_run(b, args)
            log(f"run {run + 1}/{args.runs} {b}: {r['ready']} READY ({r['python']} python3.11); idle "
                f"{fmt(r['idle']['cpu_ms'], 3)} ms CPU per tick, loaded {fmt(r['loaded']['cpu_ms'], 3)} ms, idle "
                f"after {fmt(r['idle_after']['cpu_ms'], 3)} ms (load average "
                f"{Path('/proc/loadavg').read_text().split()[0]})")
            results[b].append(r)
    print(f"\n### sampler tick, {args.environments} environments ({args.python} python3.11), median of "
          f"{args.runs} runs, {args.window:.0f} s windows\n")
    print("| agent binary | idle: CPU / wall ms per tick | under load: CPU / wall ms per tick | idle after the "
          "load: CPU / wall ms per tick | ticks per window |")
    print("|---|---|---|---|---|")
    for b, rs in results.items():
        pick = lambda w, k: median([r[w][k] for r in rs if r[w][k] is not None])  # noqa: E731
        print(f"| {b} | {fmt(pick('idle', 'cpu_ms'), 3)} / {fmt(pick('idle', 'wall_ms'), 3)} | "
              f"{fmt(pick('loaded', 'cpu_ms'), 3)} / {fmt(pick('loaded', 'wall_ms'), 3)} | "
              f"{fmt(pick('idle_after', 'cpu_ms'), 3)} / {fmt(pick('idle_after', 'wall_ms'), 3)} | "
              f"{fmt(pick('idle', 'ticks'), 0)} |")


if __name__ == "__main__":
    main()
