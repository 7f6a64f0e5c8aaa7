#!/usr/bin/env python3
"""Interleaved A/B of ktcpvs binaries against HAProxy, for one workload.

    python3 bench/ab.py [--reps N] [--load ka|close1k|close300k|wrk|lat] NAME=BINARY ...

A BINARY named relay-floor* is run as bench/src/bin/relay-floor.rs (the
no-HTTP relay that bounds what any proxy can save), not as ktcpvs.

Starts the benchmark's nginx origins (core 1), every given ktcpvs binary
(one worker each) and HAProxy (all on core 0, as bench/run.sh does), then
runs the workload against each in turn, N times, and prints each run and
the medians: CPU µs per request/connection (utime + stime of every thread
of the proxy) and its ratio to HAProxy's; for `lat`, also p99 ratios.
Same helpers and configurations as bench/bench.py; run bench/run.sh once
first (or scripts/install-deps.sh) so the tools are there.

Loads: ka = httperf 40 conn/s x 100 calls (4,000 keep-alive req/s);
close1k = httperf 2,000 conn/s, 1 call, 1,000 B; close300k = 500 conn/s,
300,000 B; wrk = wrk -c64 for 5 s (saturation); lat = wrk -c64 with
exponential think times (mean 15 ms) for 8 s.
"""
import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402


def run_load(load, port, tmp):
    """One run; returns (result dict, units served)."""
    if load == "ka":
        out = B.httperf(port, B.OBJ_1K, 40, 400, 100)
    elif load == "close1k":
        out = B.httperf(port, B.OBJ_1K, 2000, 16000, 1)
    elif load == "close300k":
        out = B.httperf(port, B.OBJ_300K, 500, 4000, 1)
    elif load == "wrk":
        out = B.wrk(port, B.OBJ_1K, 5)
    elif load == "lat":
        script = os.path.join(tmp, "expdelay.lua")
        with open(script, "w") as f:
            f.write(B.KA_LAT_EXP_SCRIPT)
        out = B.wrk(port, B.OBJ_1K, 8, script=script)
    else:
        raise SystemExit(f"unknown load {load!r}")
    return out, out.get("ok", 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--load", default="ka", choices=["ka", "close1k", "close300k", "wrk", "lat"])
    ap.add_argument("variants", nargs="+", metavar="NAME=BINARY")
    a = ap.parse_args()
    variants = []
    for v in a.variants:
        name, sep, binary = v.partition("=")
        if not sep or not os.access(binary, os.X_OK):
            raise SystemExit(f"{v!r}: expected NAME=BINARY with an executable BINARY")
        variants.append((name, binary))

    tmp = tempfile.mkdtemp(prefix="ktcpvs-ab-")
    try:
        origin = B.start("origin", ["nginx", "-e", "stderr", "-p", tmp, "-c", B.write_origin(tmp)],
                         B.CLIENT_CORE, os.path.join(tmp, "origin.log"))
        for p in B.ORIGIN_PORTS:
            B.wait_port(p, origin)
        procs, port = {}, 18090
        for name, binary in variants:
            if os.path.basename(binary).startswith("relay-floor"):
                # bench/src/bin/relay-floor.rs: the no-HTTP yardstick.
                origins = ",".join(f"127.0.0.1:{o}" for o in B.ORIGIN_PORTS)
                cmd = [binary, f"127.0.0.1:{port}", origins]
            else:
                cmd = [binary, "--config", B.ktcpvs_conf(tmp, name, port, 1)]
            p = B.start(name, cmd, B.PROXY_CORE, os.path.join(tmp, f"{name}.log"))
            B.wait_port(port, p)
            procs[name] = (p, port)
            port += 1
        hp = B.start("haproxy", ["haproxy", "-db", "-f", B.haproxy_conf(tmp, port)], B.PROXY_CORE,
                     os.path.join(tmp, "haproxy.log"))
        B.wait_port(port, hp)
        procs["haproxy"] = (hp, port)
        for _, (_, pt) in procs.items():
            B.wrk(pt, B.OBJ_1K, 1, conns=16)   # warm up: pools, page cache

        cpu = {n: [] for n in procs}
        p99 = {n: [] for n in procs}
        for rep in range(a.reps):
            for n, (p, pt) in procs.items():
                pids = B.descendants(p.pid)
                c0 = B.cpu_ticks(pids)
                out, units = run_load(a.load, pt, tmp)
                c1 = B.cpu_ticks(pids)
                ticks = (c1[0] - c0[0]) + (c1[1] - c0[1])
                us = ticks / B.CLK_TCK * 1e6 / max(units, 1)
                user = (c1[0] - c0[0]) / max(ticks, 1)
                cpu[n].append(us)
                extra = ""
                if a.load in ("wrk", "lat"):
                    p99[n].append(out.get("p99_ms") or 0.0)
                    extra = f" req/s {out.get('rps', 0):,.0f} p50 {out.get('p50_ms')} ms p99 {out.get('p99_ms')} ms"
                print(f"rep {rep} {n}: {us:.1f} µs/unit, user {user:.0%}, ok {units}{extra}", flush=True)
    finally:
        B.stop_all()

    h = statistics.median(cpu["haproxy"])
    for n, v in cpu.items():
        print(f"{n}: median {statistics.median(v):.1f} µs ({', '.join(f'{x:.1f}' for x in v)}); "
              f"/ HAProxy {statistics.median(v) / h:.3f}")
    if p99["haproxy"]:
        hp99 = statistics.median(p99["haproxy"])
        for n, v in p99.items():
            print(f"{n}: p99 median {statistics.median(v):.3f} ms; / HAProxy {statistics.median(v) / hp99:.3f}")


if __name__ == "__main__":
    main()
