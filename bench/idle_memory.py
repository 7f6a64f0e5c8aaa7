#!/usr/bin/env python3
"""Memory held per idle keep-alive client connection: ktcpvs, HAProxy and
nginx side by side, each with one worker in front of the benchmark's three
nginx origins (bench.py's configurations).

For each proxy and object size (a fresh proxy process each time): open N
client connections (in batches of
200), send one request on each and read the whole response, leave them all
open and idle, then read the proxy's resident memory (VmRSS, summed over
its processes). Reported: (RSS after - RSS before) / N.

    python3 bench/idle_memory.py [--conns 4000] [--ktcpvs PATH]

A benchmark, not a test: the figure depends on the allocator and the
build; compare the proxies of one run.
"""
import argparse
import os
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench as B  # noqa: E402

PATHS = ["/o1000.bin", "/o300000.bin"]


def rss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def read_response(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("closed before a response head")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status:
        raise RuntimeError(f"unexpected status {status!r}")
    cl = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
              if line.lower().startswith(b"content-length:"))
    while len(body) < cl:
        chunk = s.recv(1 << 20)
        if not chunk:
            raise RuntimeError("closed mid-body")
        body += chunk


def measure(pids, port, path, n):
    before = rss_kb(pids)
    socks = []
    req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    try:
        for i in range(0, n, 200):
            batch = [socket.create_connection(("127.0.0.1", port)) for _ in range(min(200, n - i))]
            for s in batch:
                s.sendall(req)
            for s in batch:
                read_response(s)
            socks += batch
        time.sleep(1.0)
        after = rss_kb(pids)
    finally:
        for s in socks:
            s.close()
    time.sleep(1.0)
    return before, after


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=4000)
    ap.add_argument("--ktcpvs", default=os.environ.get("KTCPVS_BIN", "/work/target-bench/release/ktcpvs"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="idle-mem-")
    oconf = B.write_origin(tmp)
    op = B.start("origin", ["nginx", "-c", oconf, "-p", tmp], B.CLIENT_CORE, f"{tmp}/origin.log")
    for p in B.ORIGIN_PORTS:
        B.wait_port(p, op)
    rows = []
    try:
        for name in ["ktcpvs", "haproxy", "nginx"]:
            for path in PATHS:
                # A fresh process per measurement: memory freed by the
                # previous one would be reused and hide the cost.
                port = 18350
                if name == "ktcpvs":
                    conf = B.ktcpvs_conf(tmp, "k", port, 1)
                    p = B.start(name, [args.ktcpvs, "-c", conf], B.PROXY_CORE, f"{tmp}/{name}.log")
                elif name == "haproxy":
                    conf = B.haproxy_conf(tmp, port)
                    p = B.start(name, ["haproxy", "-f", conf], B.PROXY_CORE, f"{tmp}/{name}.log")
                else:
                    d, conf = B.nginx_proxy_conf(tmp, port)
                    p = B.start(name, ["nginx", "-c", conf, "-p", d], B.PROXY_CORE, f"{tmp}/{name}.log")
                B.wait_port(port, p)
                time.sleep(0.5)
                pids = B.descendants(p.pid)  # p.pid and its children
                before, after = measure(pids, port, path, args.conns)
                per = (after - before) / args.conns
                B.log(f"{name} {path}: RSS {before} -> {after} kB with {args.conns} idle connections: {per:.1f} kB each")
                rows.append((name, path, before, after, per))
                B.stop(p)
                time.sleep(0.5)
    finally:
        B.stop_all()
    print(f"\n{args.conns} idle keep-alive client connections, each after one request:\n")
    print("| proxy | object | RSS before | RSS with the idle connections | per connection |")
    print("|---|---|---:|---:|---:|")
    for name, path, before, after, per in rows:
        print(f"| {name} | {path} | {before:,} kB | {after:,} kB | {per:.1f} kB |")


if __name__ == "__main__":
    main()
