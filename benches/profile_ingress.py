#!/usr/bin/env python3
"""Profiles one ingress of the agent (unary gRPC, InvokeStream or the HTTP Invoke API) at a fixed number of
invokes: a private release agent (benches/perf.py's `Agent`) with the Invoke API on a free loopback port, one
native echo environment, driven by `lmictl bench invoke --via INGRESS -n N`.

  benches/profile_ingress.py count [--via http] [-n 2000] [-c 8] [--malloc-stacks N]
      Exact counts per invoke of software events over the -n measured invokes: heap allocations (uprobes on
      glibc's malloc, realloc, calloc), system calls and context switches of the agent's threads; with
      --malloc-stacks, who allocates (by the nearest frame of the agent's or a library's code).
  benches/profile_ingress.py callgrind [--via http] [-n 2000] [-c 8]
      (Does not run at present: the agent's PID-namespace init re-executes /proc/self/exe, which under
      valgrind is valgrind itself, and the runtime's spawn then fails; see docs/PERFORMANCE.md.)
      The agent under valgrind's callgrind. Counters are zeroed after a warm-up (`callgrind_control -z`) and
      dumped right after the measured invokes (`callgrind_control -d`), so the dump holds those invokes only:
      prints its instructions (Ir) per invoke and the top functions, inclusive and exclusive.
  benches/profile_ingress.py perf [--via http] [-c 64] [-d 5]
      The agent at full speed under `perf record -e cpu-clock --call-graph dwarf` for the bench's window;
      prints the kernel/user split (also as µs per invoke) and the shares of the Runtime API side, the Invoke
      API side and the gRPC side (by the functions on each sample's stack).
      --floor: the same for the --via ingress's own floor (runtime_api_floor's minimal server of that
      protocol, LMI_FLOOR_SERVERS=minimal-http|minimal-grpc-unary|minimal-grpc-stream) instead of the agent.
      --rate R: lmictl's load in open loop at R invokes/s (unary and http), on the agent or the floor, to
      compare the two at one offered load. --no-network-isolation: the agent with
      sandbox.network_isolation = false (the runtime on the host's loopback, as the floor's).

Run as root from the repository; builds nothing (run `cargo build --release -p lmi-agent -p lmictl
-p lmi-native-echo` first). Files go to target/profile/.
"""

import argparse
import atexit
import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf  # noqa: E402  (benches/perf.py: Agent, native_code_dir)

OUT = perf.REPO / "target" / "profile"
# Another build of the agent or lmictl (to compare two builds): PROFILE_AGENT=/path, PROFILE_LMICTL=/path
# (not LMI_AGENT_*: the agent reads those as configuration keys).
perf.AGENT_BIN = Path(os.environ.get("PROFILE_AGENT", perf.AGENT_BIN))
perf.LMICTL_BIN = Path(os.environ.get("PROFILE_LMICTL", perf.LMICTL_BIN))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _PatientSocket(socket.socket):
    """perf.py waits 120 s for READY under a wrapper; callgrind on a busy 2-core host can take longer."""

    def settimeout(self, t):
        super().settimeout(None if t is None else max(t, 900))


def start(args, wrapper):
    perf.Agent.wrapper = wrapper
    if wrapper:
        perf.socket = types.SimpleNamespace(socket=_PatientSocket, AF_UNIX=socket.AF_UNIX,
                                            SOCK_DGRAM=socket.SOCK_DGRAM, timeout=socket.timeout)
    invoke_api = f"127.0.0.1:{free_port()}"
    sections = f'[invoke_api]\nlisten = "{invoke_api}"\n'
    if getattr(args, "no_network_isolation", False):
        # The runtime on the host's loopback: what the environment's network namespace (its own loopback,
        # the nft tables of its sandbox) adds to the agent's kernel time per invoke.
        sections += "[sandbox]\nnetwork_isolation = false\n"
    agent = perf.Agent(sections=sections)
    root = tempfile.mkdtemp(prefix="lmi-profile-")
    atexit.register(shutil.rmtree, root, True)
    try:
        agent.create("echo", "provided.al2023", perf.native_code_dir(root), args.max_concurrency)
    except BaseException:
        agent.stop()
        raise
    return agent, invoke_api


def bench(agent, invoke_api, args, *extra):
    flags = {"unary": [], "stream": ["--via", "stream"],
             "http": ["--via", "http", "--invoke-api", invoke_api]}[args.via]
    rate = ["--rate", str(args.rate)] if args.rate else []
    return agent.lmictl("bench", "invoke", "echo", "--agent-pid", str(agent.pid), "-c", str(args.concurrency),
                        "--warmup", "0", *flags, *rate, *extra)


def callgrind(args):
    OUT.mkdir(parents=True, exist_ok=True)
    for f in glob.glob(str(OUT / "callgrind.out.*")):
        os.remove(f)
    # The agent starts each environment's PID-namespace init by exec'ing /proc/self/exe, which under valgrind
    # is valgrind itself unless valgrind follows the exec (then it runs the agent binary, under callgrind too;
    # its dump is a separate file). The runtime itself is not followed.
    wrapper = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={OUT}/callgrind.out.%p",
               "--separate-threads=no", "--trace-children=yes",
               "--trace-children-skip=*/bootstrap,*native-echo*,/usr/sbin/*,/usr/bin/*,/sbin/*,/bin/*"]
    agent, invoke_api = start(args, wrapper)
    try:
        bench(agent, invoke_api, args, "-n", str(args.warmup_invokes), "-d", "600")
        subprocess.run(["callgrind_control", "-z", str(agent.pid)], check=True, capture_output=True)
        r = bench(agent, invoke_api, args, "-n", str(args.invokes), "-d", "600")
        subprocess.run(["callgrind_control", "-d", "measured", str(agent.pid)], check=True, capture_output=True)
    finally:
        agent.stop()
    dumps = [f for f in glob.glob(str(OUT / f"callgrind.out.{agent.pid}.*"))]
    if not dumps:
        raise SystemExit("no callgrind dump of the measured invokes")
    dump = max(dumps, key=os.path.getmtime)
    text = subprocess.run(["callgrind_annotate", dump], capture_output=True, text=True).stdout
    m = re.search(r"^([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS", text, re.M) or \
        re.search(r"^([\d,]+)\s+PROGRAM TOTALS", text, re.M)
    total = int(m.group(1).replace(",", "")) if m else None
    invokes = r["outcomes"]["success"]
    print(f"== {args.via}: {invokes} invokes (of {r['invokes']} answered) at c={args.concurrency}; dump {dump}")
    if total and invokes:
        print(f"Ir total {total:,}; Ir per invoke {total / invokes:,.0f}")
    incl = subprocess.run(["callgrind_annotate", "--inclusive=yes", dump], capture_output=True, text=True).stdout
    print("== inclusive"); print("\n".join(incl.splitlines()[:args.top + 25]))
    print("== exclusive"); print("\n".join(text.splitlines()[:args.top + 25]))


# Functions that place a sample on one side (the first match from the stack's root wins).
SIDES = [
    ("Invoke API", re.compile(r"invoke_api|lmi_agent::listener")),
    ("Runtime API", re.compile(r"lmi_runtime_api")),
    ("gRPC", re.compile(r"tonic|h2::|lmi_agent::control")),
]


def floor_run(args, data=None):
    """One run of the --via ingress's own floor (runtime_api_floor's minimal server of that protocol, built
    before: perf.py's floor_binary without a build), under `perf record` for its measured window when `data`
    is given. Returns (invokes/s, server, runtime and generator CPU per invoke)."""
    binary = perf.floor_binary(types.SimpleNamespace(no_build=True))
    env = dict(os.environ, LMI_FLOOR_SERVERS=perf.INGRESS_FLOOR[args.via], LMI_FLOOR_SECONDS=str(args.duration),
               LMI_FLOOR_CONCURRENCY=str(args.concurrency))
    if args.rate:
        env["LMI_FLOOR_RATE"] = str(args.rate)
    bench_proc = subprocess.Popen([str(binary), "--bench"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
    rec = None
    if data:
        time.sleep(1.5)  # the runtime's start and lmictl's 1 s warm-up
        rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "--call-graph", "dwarf,16384",
                                "-F", "999", "-o", str(data), "-p", str(bench_proc.pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out, _ = bench_proc.communicate()
    if rec:
        rec.send_signal(2)
        rec.wait()
    # The bench exits non-zero when any invoke did not succeed.
    m = next(filter(None, map(perf.FLOOR_LINE.match, out.splitlines())), None)
    if bench_proc.returncode != 0 or not m or m["generator_cpu_us_per_invoke"] is None:
        raise SystemExit(f"the floor run failed ({bench_proc.returncode}): {out.strip()}")
    return (float(m["throughput_per_s"]), float(m["server_cpu_us_per_invoke"]),
            float(m["runtime_cpu_us_per_invoke"]), float(m["generator_cpu_us_per_invoke"]))


def perf_split(args):
    OUT.mkdir(parents=True, exist_ok=True)
    if args.floor:
        data = OUT / f"perf-floor-{args.via}.data"
        if args.no_record:
            for i in range(args.runs):
                rate, server, runtime, gen = floor_run(args)
                print(f"floor {args.via} c={args.concurrency} run {i + 1}: {rate:.0f}/s, server {server:.1f} µs "
                      f"CPU per invoke, runtime {runtime:.1f} µs, lmictl {gen:.1f} µs", flush=True)
            return
        rate, server, _, gen = floor_run(args, data)
        print(f"== floor {args.via}: {rate:.0f}/s at c={args.concurrency}; server {server:.1f} µs CPU per invoke; "
              f"lmictl {gen:.1f} µs")
        report_split(data, server)
        return
    agent, invoke_api = start(args, [])
    data = OUT / f"perf-{args.via}.data"
    try:
        bench(agent, invoke_api, args, "-d", "1")  # warm-up
        if args.no_record:
            for i in range(args.runs):
                r = bench(agent, invoke_api, args, "-d", str(args.duration))
                print(f"{args.via} c={args.concurrency} run {i + 1}: {r['throughput_per_s']:.0f}/s, agent "
                      f"{r['agent']['cpu_us_per_invoke']:.1f} µs CPU per invoke, runtime "
                      f"{r['runtime_cpu_us_per_invoke']:.1f} µs, lmictl {r['lmictl_cpu_us_per_invoke']:.1f} µs, "
                      f"p50 {r['latency']['p50_us']:.0f} µs, success {r['outcomes']['success']}/{r['invokes']}",
                      flush=True)
            return
        rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "--call-graph", "dwarf,16384",
                                "-F", "999", "-o", str(data), "-p", str(agent.pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        r = bench(agent, invoke_api, args, "-d", str(args.duration))
        rec.send_signal(2)
        rec.wait()
    finally:
        agent.stop()
    print(f"== {args.via}: {r['throughput_per_s']:.0f}/s at c={args.concurrency}; agent "
          f"{r['agent']['cpu_us_per_invoke']:.1f} µs CPU per invoke; lmictl {r['lmictl_cpu_us_per_invoke']:.1f} µs")
    report_split(data, r['agent']['cpu_us_per_invoke'])


def report_split(data, cpu_per_invoke):
    """The kernel/user split of a recording and its sides, as shares and as µs of `cpu_per_invoke`."""
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "ip,sym,dso"], capture_output=True,
                            text=True, errors="replace").stdout
    total = kernel = 0
    sides = {name: 0 for name, _ in SIDES}
    sides["other"] = 0
    kernel_in = {name: 0 for name in sides}
    writes = 0
    for block in script.split("\n\n"):
        frames = [l.strip() for l in block.strip().splitlines() if l.strip()]
        if not frames:
            continue
        total += 1
        leaf_kernel = "[kernel.kallsyms]" in frames[0]
        kernel += leaf_kernel
        if any(re.search(r"\b(do_writev|ksys_write|__sys_sendto|tcp_sendmsg)\b", f) for f in frames):
            writes += 1
        side = "other"
        for f in reversed(frames):
            hit = next((name for name, rx in SIDES if rx.search(f)), None)
            if hit:
                side = hit
        sides[side] += 1
        kernel_in[side] += leaf_kernel
    if not total:
        raise SystemExit("perf recorded no samples")
    pct = lambda n: f"{100 * n / total:.1f}%"
    us = lambda n: f"{cpu_per_invoke * n / total:.1f} µs"
    print(f"samples {total}: kernel {pct(kernel)} ({us(kernel)} per invoke), user {pct(total - kernel)} "
          f"({us(total - kernel)}); inside write/writev/sendto {pct(writes)} ({us(writes)})")
    for name, n in sides.items():
        print(f"  {name:12} {pct(n):>6} (kernel {pct(kernel_in[name])})")


LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
COUNTED = ["probe_libc:malloc", "probe_libc:realloc", "probe_libc:calloc", "raw_syscalls:sys_enter",
           "context-switches"]


def count(args):
    """Exact counts per invoke from software events (no hardware counter needed): heap allocations (uprobes on
    glibc's malloc, realloc and calloc), system calls and context switches of the agent's threads."""
    for fn in ("malloc", "realloc", "calloc"):
        added = subprocess.run(["perf", "probe", "-q", "-x", LIBC, "-a", fn], capture_output=True)
        if added.returncode == 0:  # taken out again at exit (one that was already there is left)
            atexit.register(subprocess.run, ["perf", "probe", "-q", "-d", f"probe_libc:{fn}"],
                            capture_output=True)
    agent, invoke_api = start(args, [])
    try:
        bench(agent, invoke_api, args, "-n", str(args.warmup_invokes), "-d", "600")
        threads = ",".join(os.listdir(f"/proc/{agent.pid}/task"))
        stat = subprocess.Popen(["perf", "stat", "-x", ",", "-e", ",".join(COUNTED), "-t", threads],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        r = bench(agent, invoke_api, args, "-n", str(args.invokes), "-d", "600")
        stat.send_signal(2)
        _, err = stat.communicate()
        if args.malloc_stacks:
            data = OUT / f"malloc-{args.via}.data"
            OUT.mkdir(parents=True, exist_ok=True)
            rec = subprocess.Popen(["perf", "record", "-q", "-e", "probe_libc:malloc", "--call-graph", "dwarf,8192",
                                    "-o", str(data), "-t", threads],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            m = bench(agent, invoke_api, args, "-n", str(args.malloc_stacks), "-d", "600")
            rec.send_signal(2)
            rec.wait()
    finally:
        agent.stop()
    if args.malloc_stacks:
        callers = {}
        script = subprocess.run(["perf", "script", "-i", str(data)], capture_output=True, text=True,
                                errors="replace").stdout
        frame = re.compile(r"^\s*[0-9a-f]+ (.+?)\+0x[0-9a-f]+ \(")
        owner = re.compile(r"lmi_|hyper::|hyper_util::|h2::|tonic::|tokio::|uuid::|serde_json::|http::")
        for block in script.split("\n\n"):
            names = [m.group(1) for m in map(frame.match, block.splitlines()[1:]) if m]
            # The first frame (from the allocation outward) of the agent's code or of a library it uses.
            caller = next((n for n in names if owner.match(n) or owner.search(n.split("<")[0])), "?")
            callers[caller] = callers.get(caller, 0) + 1
        total = m["outcomes"]["success"]
        print(f"== mallocs by first non-container caller, per invoke ({total} invokes):")
        for caller, c in sorted(callers.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"  {c / total:6.2f}  {caller[:150]}")
    n = r["outcomes"]["success"]
    print(f"== {args.via}: {n} invokes (of {r['invokes']} answered) at c={args.concurrency}, per invoke:")
    for line in err.splitlines():
        f = line.split(",")
        if len(f) > 2 and f[2] in COUNTED and f[0].replace(".", "").isdigit():
            print(f"  {f[2]:24} {float(f[0]) / n:8.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tool", choices=["callgrind", "perf", "count"])
    p.add_argument("--via", choices=["unary", "stream", "http"], default="http")
    p.add_argument("-n", "--invokes", type=int, default=2000)
    p.add_argument("--warmup-invokes", type=int, default=300)
    p.add_argument("-c", "--concurrency", type=int, default=8)
    p.add_argument("-d", "--duration", type=int, default=5)
    p.add_argument("--max-concurrency", type=int, default=64)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--no-record", action="store_true",
                   help="perf: no profile, only --runs benches (agent CPU per invoke without perf's own cost)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rate", type=int, default=0, metavar="PER_SECOND",
                   help="open loop at this many invokes per second (lmictl's --rate; unary and http only)")
    p.add_argument("--floor", action="store_true",
                   help="perf: measure the --via ingress's own floor (runtime_api_floor's minimal server of that "
                        "protocol) instead of the agent; build it first with `cargo bench -p lmi-benches --bench "
                        "runtime_api_floor --no-run`")
    p.add_argument("--no-network-isolation", action="store_true",
                   help="the agent with sandbox.network_isolation = false (the runtime on the host's loopback)")
    p.add_argument("--malloc-stacks", type=int, default=0, metavar="N",
                   help="count: also record the stacks of the mallocs of N more invokes and list their callers")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the agent makes cgroups and sandboxes)")
    {"callgrind": callgrind, "perf": perf_split, "count": count}[args.tool](args)


if __name__ == "__main__":
    main()
