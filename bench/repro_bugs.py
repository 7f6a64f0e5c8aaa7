#!/usr/bin/env python3
"""Minimal reproductions of the ktcpvs defects found by the benchmark.

Cases 1 and 2 fail on ktcpvs c49e4c7 (spliced bodies cut at ~32 KiB; EBADF /
EISCONN / malformed-head warnings) and pass from f9b165e on (see RESULTS.md).

    python3 bench/repro_bugs.py [--ktcpvs PATH]

Starts the same nginx origins as bench.py (core 1) and fresh ktcpvs instances
(core 0) and prints, for each case, what a client sees. Python 3.11 stdlib,
curl, wrk, httperf. Everything on 127.0.0.1, everything stopped at the end.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402

PORT = 18180


def curl(path, port=PORT):
    p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                        f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True)
    return f"HTTP {p.stdout.split()[0]} body {p.stdout.split()[1]} B, curl exit {p.returncode}"


def warnings(logpath):
    with open(logpath, errors="replace") as f:
        txt = re.sub(r"\x1b\[[0-9;]*m", "", f.read())
    kinds = {}
    for line in txt.splitlines():
        if " WARN " in line or " ERROR " in line:
            msg = line.split(":", 3)[-1].strip()
            msg = re.sub(r"server=\S+ ", "", msg)
            kinds[msg] = kinds.get(msg, 0) + 1
    return kinds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ktcpvs", default=os.environ.get("KTCPVS_BIN", "/work/target-bench/release/ktcpvs"))
    a = ap.parse_args()
    for port in B.ORIGIN_PORTS + [PORT]:
        if not B.port_free(port):
            raise SystemExit(f"port {port} is in use; stop whatever holds it")
    tmp = tempfile.mkdtemp(prefix="ktcpvs-repro-")
    try:
        oc = B.write_origin(tmp)
        o = B.start("origin", ["nginx", "-e", "stderr", "-p", tmp, "-c", oc], B.CLIENT_CORE, tmp + "/o.log")
        for p in B.ORIGIN_PORTS:
            B.wait_port(p, o)

        def ktcpvs(tag, workers, thr=None):
            log = f"{tmp}/{tag}.log"
            k = B.start(tag, [a.ktcpvs, "--config", B.ktcpvs_conf(tmp, tag, PORT, workers, thr)],
                        B.PROXY_CORE, log)
            B.wait_port(PORT, k)
            return k, log

        print("== 1. spliced bodies are cut short (default splice_threshold = 65536, workers = 1)")
        k, log = ktcpvs("case1", 1)
        for path in ("/o1000.bin", "/o65536.bin", "/o300000.bin", "/o1048576.bin"):
            print(f"   curl {path:15s} -> {curl(path)}")
        B.stop(k)
        print(f"   ktcpvs warnings: {warnings(log) or 'none'}")

        print("== 2. same sizes with splice off (splice_threshold = 1000000000)")
        k, log = ktcpvs("case2", 1, 1000000000)
        for path in ("/o65536.bin", "/o300000.bin", "/o1048576.bin"):
            print(f"   curl {path:15s} -> {curl(path)}")
        B.stop(k)

        print("== 3. after spliced responses under load, the instance goes bad (workers = 2)")
        k, log = ktcpvs("case3", 2)
        r = B.httperf(PORT, "/o1000.bin", 2000, 6000, 1)
        print(f"   before: httperf --rate 2000 --num-conns 6000 --num-calls 1 /o1000.bin -> "
              f"replies {r.get('ok')} errors {r.get('errors')}")
        r = B.wrk(PORT, "/o300000.bin", 2, conns=16)
        print(f"   wrk -c16 -d2s /o300000.bin -> {r.get('requests')} requests, socket errors "
              f"{r.get('sock_err')}")
        t0 = time.time()
        r = B.httperf(PORT, "/o1000.bin", 2000, 6000, 1)
        print(f"   after:  httperf --rate 2000 --num-conns 6000 --num-calls 1 /o1000.bin -> "
              f"replies {r.get('ok')} errors {r.get('errors')} ({time.time() - t0:.0f} s)")
        B.stop(k)
        print(f"   ktcpvs warnings: {warnings(log) or 'none'}")
    finally:
        B.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
