#!/usr/bin/env python3
"""Splits the agent's CPU samples by the part of the agent they ran in (issue 16, docs/PERFORMANCE.md, "Unary gRPC").

    benches/perf.py throughput --runs 1 --duration 5 \
        --agent-wrapper "perf record -q -e cpu-clock -F 500 --call-graph dwarf,8192 -o /tmp/agent.perf --"
    perf script -i /tmp/agent.perf -F comm,pid,tid,ip,sym,dso > /tmp/agent.script
    benches/perf_split.py /tmp/agent.script            # the agent's tokio worker threads

A sample belongs to the Runtime API side when any frame of its stack is there; else to the gRPC side when any
frame is, and within it to the part named by the frame nearest the leaf; else to the rest (scheduler, sampler).
"Kernel" is the share whose leaf frame is in the kernel.
"""
import collections
import re
import sys

def name(frame):
    """The function's path, without generic arguments (an impl's type and trait kept)."""
    sym = re.sub(r"\s*\([^()]*\)$", "", frame).strip()
    sym = re.sub(r"\s*\(inlined\)$", "", sym)
    out, depth = [], 0
    lead = sym.startswith("<")
    for ch in sym:
        if ch == "<":
            depth += 1
            if depth == 1 and lead and not out:
                out.append(ch)
            continue
        if ch == ">":
            depth -= 1
            if depth == 0 and lead:
                out.append(ch)
            continue
        if depth == 0 or (lead and depth == 1):
            out.append(ch)
    return "".join(out)

RUNTIME_API = ["lmi_runtime_api", "hyper::proto::h1", "hyper::server::conn::http1", "lmi_native_echo"]
GRPC_PARTS = [
    ("socket reads and writes (tokio::net, mio; the kernel under them)", ["tokio::net::", "tokio::io::poll_evented", "mio::", "std::sys::net", "__libc_recv", "__libc_send", "writev", "__GI___writev"]),
    (":authority rewriter (control::authority)", ["lmi_agent::control::authority"]),
    ("connection cap / preface wrapper (listener::Limited)", ["lmi_agent::listener::Limited"]),
    ("invoke handler, Agent::invoke, dispatch", ["lmi_agent::control::", "lmi_agent_core::", "lmi_proto::v1::agent_server::"]),
    ("tonic codec (prost encode/decode, body framing)", ["tonic::codec", "tonic_prost", "prost::", "lmi_proto::v1::"]),
    ("tonic server: routing, tower layers, Grpc::unary, metadata, status", ["tonic::", "axum::", "tower::", "axum_core::"]),
    ("hyper HTTP/2 glue", ["hyper::proto::h2", "hyper::server::conn", "hyper_util::", "hyper::common"]),
    ("h2 HPACK", ["h2::hpack"]),
    ("h2 streams, flow control, frames, socket I/O", ["h2::", "tokio_util::codec", "tokio_util::util"]),
]
GRPC_ANY = [p for _, ps in GRPC_PARTS for p in ps]
comms = set(sys.argv[2:]) or {"tokio-rt-worker"}
counts = collections.Counter(); kern = collections.Counter(); total = 0

def flush(stack, leaf_dso):
    global total
    if not stack:
        return
    total += 1
    names = [name(f) for f in stack]
    if any(any(p in n for p in RUNTIME_API) for n in names):
        cat = "Runtime API side (hyper HTTP/1 on the runtime's connections, broker)"
    elif any(any(p in n for p in GRPC_ANY) for n in names):
        cat = "gRPC: other"
        for n in names:
            hit = next((c for c, ps in GRPC_PARTS if any(p in n for p in ps)), None)
            if hit:
                cat = "gRPC: " + hit
                break
    else:
        cat = "tokio scheduler, parking, timers, sampler, rest"
    counts[cat] += 1
    if "kernel" in leaf_dso:
        kern[cat] += 1

stack, leaf_dso, take = [], "", False
for line in open(sys.argv[1], errors="replace"):
    if line and not line[0].isspace():
        if take:
            flush(stack, leaf_dso)
        take = line.split()[0] in comms
        stack, leaf_dso = [], ""
    elif take and line.strip():
        parts = line.strip().split(None, 1)
        rest = parts[1] if len(parts) > 1 else ""
        if not stack:
            leaf_dso = rest.rsplit("(", 1)[-1]
        stack.append(rest)
if take:
    flush(stack, leaf_dso)
print(f"{total} samples")
for k, v in sorted(counts.items()):
    print(f"{100*v/total:5.1f}%  (kernel {100*kern[k]/total:4.1f})  {k}")
print(f"kernel total {100*sum(kern.values())/total:.1f}%")
grpc = [k for k in counts if k.startswith("gRPC")]
side = sum(counts[k] for k in grpc)
user = side - sum(kern[k] for k in grpc)
print(f"gRPC side {100*side/total:.1f}% (user space {100*user/total:.1f}%)")
