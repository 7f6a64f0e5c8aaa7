#!/usr/bin/env python3
"""Side-by-side benchmark: ktcpvs vs HAProxy vs nginx (reverse proxy).

Driven by bench/run.sh. Python 3.11 standard library only.

One run starts, each in its own temp dir and on its own ports:
  * origins: one nginx, 1 worker, three server blocks on 19001-19003 (core 1);
  * proxies, pinned to core 0, round-robin over the three origins:
      ktcpvs (workers=1), ktcpvs (workers=2), HAProxy (nbthread 1), nginx (1 worker),
      and two ktcpvs instances for the splice/copy sweep (always splice / always copy);
  * clients (wrk, httperf) on core 1.
Proxy CPU = utime+stime from /proc/PID/stat summed over the proxy's processes
(master + workers; a process's stat includes all its threads, io-wq too),
delta over the run, divided by the requests (or connections) completed.
Every figure is the median of REPS runs; proxies are interleaved within a rep.
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "out")
CLK_TCK = os.sysconf("SC_CLK_TCK")

PROXY_CORE = "0"
CLIENT_CORE = "1"
ORIGIN_PORTS = [19001, 19002, 19003]
PORTS = {
    "ktcpvs": 18080,
    "haproxy": 18081,
    "nginx": 18082,
    "ktcpvs-2w": 18083,
    "ktcpvs-splice": 18084,
    "ktcpvs-copy": 18085,
    "relay-floor": 18086,
}
MAIN = ["ktcpvs", "haproxy", "nginx"]
SPLICE_SIZES = [1024, 4096, 16384, 65536, 262144, 1048576, 10485760]
OBJ_1K = "/o1000.bin"
OBJ_300K = "/o300000.bin"
OBJ_SIZE = {f"/o{n}.bin": n for n in [1000, 300000] + SPLICE_SIZES}

# Fixed offered loads (same for every proxy, below all their capacities on the
# reference 2-core machine; see RESULTS.md for the measured capacities).
KA_RATE = 4000           # keep-alive requests/s (httperf: KA_RATE/100 conn/s x 100 calls)
KA_LAT_DELAY_MS = 15     # wrk -c64 with 15 ms think time ~ 64/(15 ms + rtt) ~ 4,000 req/s
# The same offered load with think times drawn from an exponential
# distribution of that mean (capped at 10x): clients that do not march in
# step. With a fixed think time, connections answered in the same
# millisecond ask again in the same millisecond, bursts persist from round
# to round and p99 measures the burst a proxy happens to settle into
# (RESULTS.md, "Latency at a fixed load").
KA_LAT_EXP_SCRIPT = f"""-- think time: exponential, mean {KA_LAT_DELAY_MS} ms
function delay()
  local d = -{KA_LAT_DELAY_MS} * math.log(1 - math.random())
  if d > {10 * KA_LAT_DELAY_MS} then d = {10 * KA_LAT_DELAY_MS} end
  return math.floor(d + 0.5)
end
"""
CLOSE_RATE_1K = 2000     # one request per connection, conn/s
CLOSE_RATE_300K = 500
# splice sweep: requests/s per body size (kept well below capacity).
SPLICE_RATE = {1024: 2500, 4096: 2500, 16384: 2500, 65536: 1500,
               262144: 500, 1048576: 120, 10485760: 12}

PROCS = []   # every process we started: (name, Popen)


def log(msg):
    ts = time.strftime("%H:%M:%S")
    print(f"[{ts}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes

def start(name, cmd, core, logpath, cwd=None):
    f = open(logpath, "ab")
    p = subprocess.Popen(["taskset", "-c", core] + cmd, stdout=f, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True)
    PROCS.append((name, p))
    return p


def stop(p, grace=3.0):
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


def stop_all():
    for name, p in reversed(PROCS):
        stop(p)
    PROCS.clear()


def on_signal(signum, frame):
    log(f"signal {signum}: stopping everything")
    stop_all()
    sys.exit(128 + signum)


def wait_port(port, p, timeout=10.0):
    import socket
    t0 = time.time()
    while time.time() - t0 < timeout:
        if p.poll() is not None:
            raise RuntimeError(f"process for port {port} exited with {p.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening after {timeout}s")


def port_free(port):
    import socket
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def descendants(pid):
    """pid and all its descendants (nginx master + workers, etc.)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(rest[1]), []).append(int(d))
        except (OSError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        q = todo.pop()
        out.append(q)
        todo.extend(children.get(q, []))
    return out


def cpu_ticks(pids):
    """(utime, stime) in clock ticks summed over pids (all threads of each)."""
    u = s = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            u += int(rest[11])
            s += int(rest[12])
        except OSError:
            pass
    return u, s


def core_busy():
    """Per-CPU (busy, total) jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                parts = line.split()
                v = [int(x) for x in parts[1:]]
                idle = v[3] + v[4]
                out[parts[0]] = (sum(v) - idle, sum(v))
    return out


# ---------------------------------------------------------------- configs

def write_origin(tmp):
    root = os.path.join(tmp, "www")
    os.makedirs(root)
    os.chmod(tmp, 0o755)          # nginx workers run as an unprivileged user
    sizes = {1000, 300000} | set(SPLICE_SIZES)
    for n in sorted(sizes):
        with open(os.path.join(root, f"o{n}.bin"), "wb") as f:
            chunk = (b"0123456789abcdef" * 4096)
            left = n
            while left:
                k = min(left, len(chunk))
                f.write(chunk[:k])
                left -= k
    servers = "\n".join(f"""
    server {{
        listen 127.0.0.1:{p} backlog=4096;
        root {root};
        location / {{ }}
    }}""" for p in ORIGIN_PORTS)
    conf = f"""
worker_processes 1;
daemon off;
pid {tmp}/origin.pid;
error_log stderr warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8000; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/cb; proxy_temp_path {tmp}/pt;
    fastcgi_temp_path {tmp}/ft; uwsgi_temp_path {tmp}/ut; scgi_temp_path {tmp}/st;
{servers}
}}
"""
    path = os.path.join(tmp, "origin.conf")
    with open(path, "w") as f:
        f.write(conf)
    return path


def ktcpvs_conf(tmp, name, port, workers, splice_threshold=None):
    st = f"splice_threshold = {splice_threshold}\n" if splice_threshold is not None else ""
    servers = "\n".join(f'[[service.server]]\naddress = "127.0.0.1:{p}"\n' for p in ORIGIN_PORTS)
    conf = f"""[global]
workers = {workers}
log = "warn"
shutdown_grace_ms = 500
{st}
[[service]]
name = "web"
listen = "127.0.0.1:{port}"
scheduler = "rr"
[service.forwarding]
x_forwarded_for = true
x_forwarded_proto = true
via = true
[service.pool]
max_idle_per_server = 64
idle_timeout_ms = 4000
{servers}
"""
    path = os.path.join(tmp, f"{name}.toml")
    with open(path, "w") as f:
        f.write(conf)
    return path


def haproxy_conf(tmp, port):
    servers = "\n".join(f"    server o{i} 127.0.0.1:{p}" for i, p in enumerate(ORIGIN_PORTS))
    conf = f"""global
    nbthread 1
    maxconn 8000
defaults
    mode http
    option http-keep-alive
    http-reuse always
    option forwardfor
    maxconn 8000
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 60s
frontend fe
    bind 127.0.0.1:{port}
    http-request set-header X-Forwarded-Proto http
    default_backend be
backend be
    balance roundrobin
    http-response add-header Via "1.1 haproxy"
{servers}
"""
    path = os.path.join(tmp, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(conf)
    return path


def nginx_proxy_conf(tmp, port):
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in ORIGIN_PORTS)
    d = os.path.join(tmp, "nginxproxy")
    os.makedirs(d, exist_ok=True)
    conf = f"""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log stderr warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8000; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path {d}/cb; proxy_temp_path {d}/pt;
    fastcgi_temp_path {d}/ft; uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;
    upstream origins {{
{servers}
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://origins;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            add_header Via "1.1 nginx";
        }}
    }}
}}
"""
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    return d, path


# ---------------------------------------------------------------- clients

def _lat_ms(v, unit):
    return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[unit]


def parse_wrk(txt):
    r = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", txt)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", txt)
    r["rps"] = float(m.group(1)) if m else 0.0
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", txt, re.M)
        if m:
            r[f"p{pct}_ms"] = _lat_ms(m.group(1), m.group(2))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", txt)
    r["sock_err"] = dict(zip(["connect", "read", "write", "timeout"],
                             map(int, m.groups()))) if m else {}
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", txt)
    r["non2xx"] = int(m.group(1)) if m else 0
    r["ok"] = r.get("requests", 0) - r["non2xx"]
    return r


def wrk(port, path, dur, conns=64, headers=(), script=None):
    cmd = ["taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{conns}", f"-d{dur}s",
           "--latency", "--timeout", "5s"]
    for h in headers:
        cmd += ["-H", h]
    if script:
        cmd += ["-s", script]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=dur + 20)
    except subprocess.TimeoutExpired:
        return {"tool": "wrk", "cmd": " ".join(cmd[3:]), "stalled": True, "rps": 0.0, "ok": 0,
                "non2xx": 0, "sock_err": {"stalled-killed": 1}}
    r = parse_wrk(p.stdout)
    r["tool"] = "wrk"
    r["cmd"] = " ".join(cmd[3:])
    if r.get("requests") and r["sock_err"].get("read", 0) > 0.01 * r["requests"]:
        r["truncated"] = True   # wrk counts a connection closed mid-body as a read error
    if p.returncode != 0:
        r["rc"] = p.returncode
        r["stderr"] = p.stderr[-500:]
    return r


def parse_httperf(txt):
    r = {}
    m = re.search(r"Total: connections (\d+) requests (\d+) replies (\d+) test-duration ([\d.]+) s", txt)
    if m:
        r.update(conns=int(m.group(1)), sent=int(m.group(2)), replies=int(m.group(3)),
                 duration_s=float(m.group(4)))
    m = re.search(r"Request rate: ([\d.]+) req/s", txt)
    r["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Connection rate: ([\d.]+) conn/s", txt)
    r["cps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Reply time \[ms\]: response ([\d.]+) transfer ([\d.]+)", txt)
    if m:
        r["reply_ms"] = float(m.group(1)) + float(m.group(2))
    m = re.search(r"Connection time \[ms\]: min ([\d.]+) avg ([\d.]+) max ([\d.]+)", txt)
    if m:
        r["conn_ms_avg"] = float(m.group(2))
        r["conn_ms_max"] = float(m.group(3))
    m = re.search(r"Reply size \[B\]: header ([\d.]+) content ([\d.]+)", txt)
    if m:
        r["content_avg"] = float(m.group(2))
    m = re.search(r"Reply status: 1xx=(\d+) 2xx=(\d+) 3xx=(\d+) 4xx=(\d+) 5xx=(\d+)", txt)
    r["ok"] = int(m.group(2)) if m else 0
    r["non2xx"] = sum(int(m.group(i)) for i in (1, 3, 4, 5)) if m else 0
    err = {}
    m = re.search(r"Errors: total (\d+) client-timo (\d+) socket-timo (\d+) connrefused (\d+) connreset (\d+)", txt)
    if m:
        err.update(zip(["total", "client-timo", "socket-timo", "connrefused", "connreset"],
                       map(int, m.groups())))
    m = re.search(r"Errors: fd-unavail (\d+) addrunavail (\d+) ftab-full (\d+) other (\d+)", txt)
    if m:
        err.update(zip(["fd-unavail", "addrunavail", "ftab-full", "other"], map(int, m.groups())))
    r["errors"] = err
    return r


def httperf(port, path, rate, conns, calls, timeout=5):
    """Fixed-rate load; flags replies whose average body is shorter than the
    object (httperf counts a truncated reply as a reply, not as an error)."""
    # No --hog: with it httperf bind()s its own source ports, which cannot reuse
    # TIME_WAIT ports, and one-request-per-connection runs stall once ~28k
    # ports are in TIME_WAIT; without it the kernel picks them (tcp_tw_reuse).
    cmd = ["taskset", "-c", CLIENT_CORE, "httperf", "--server", "127.0.0.1",
           "--port", str(port), "--uri", path, "--rate", str(rate), "--num-conns", str(conns),
           "--num-calls", str(calls), "--timeout", str(timeout)]
    limit = conns / rate + 2 * timeout + 10
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        # httperf stuck (e.g. every fd held by connections the proxy never answers):
        # record what the sockets look like, then kill it.
        ss = subprocess.run(["ss", "-tan"], capture_output=True, text=True).stdout.splitlines()
        states = {}
        for line in ss:
            f = line.split()
            if len(f) >= 5 and f[3].endswith(f":{port}"):
                k = f"{f[0]} recvq={'0' if f[1] == '0' else '>0'} sendq={'0' if f[2] == '0' else '>0'}"
                states[k] = states.get(k, 0) + 1
        tw = sum(1 for line in ss if line.startswith("TIME-WAIT"))
        p.kill()
        p.communicate()
        return {"tool": "httperf", "cmd": " ".join(cmd[3:]), "stalled": True, "ok": 0, "rps": 0.0,
                "non2xx": 0, "errors": {"stalled-killed-after-s": round(limit)},
                "proxy_side_sockets": states, "time_wait_total": tw}
    p = subprocess.CompletedProcess(cmd, p.returncode, out, err)
    r = parse_httperf(p.stdout)
    r["tool"] = "httperf"
    r["cmd"] = " ".join(cmd[3:])
    want = OBJ_SIZE.get(path)
    if want and r.get("content_avg") is not None and r["content_avg"] < want - 0.5:
        r["truncated"] = True
        r["content_expected"] = want
    if p.returncode != 0:
        r["rc"] = p.returncode
        r["stderr"] = p.stderr[-500:]
    return r


# ---------------------------------------------------------------- bench

class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.reps = 1 if args.quick else args.reps
        self.tmp = tempfile.mkdtemp(prefix="ktcpvs-bench-")
        self.logs = os.path.join(self.tmp, "logs")
        os.makedirs(self.logs)
        self.proxies = {}   # name -> Popen
        self.spec = {}      # name -> (cmd, core, port)
        self.raw = []       # every run
        self.incidents = []
        self.ktcpvs_bin = args.ktcpvs

    # -- lifecycle
    def launch(self, name):
        cmd, port = self.spec[name]
        p = start(name, cmd, PROXY_CORE, os.path.join(self.logs, f"{name}.log"))
        wait_port(port, p)
        self.proxies[name] = p

    def setup(self):
        for port in ORIGIN_PORTS + list(PORTS.values()):
            if not port_free(port):
                raise SystemExit(f"port {port} is in use; stop whatever holds it")
        oconf = write_origin(self.tmp)
        self.origin = start("origin", ["nginx", "-e", "stderr", "-p", self.tmp, "-c", oconf],
                            CLIENT_CORE, os.path.join(self.logs, "origin.log"))
        for p in ORIGIN_PORTS:
            wait_port(p, self.origin)
        k = self.ktcpvs_bin
        self.spec["ktcpvs"] = ([k, "--config", ktcpvs_conf(self.tmp, "ktcpvs", PORTS["ktcpvs"], 1)],
                               PORTS["ktcpvs"])
        self.spec["ktcpvs-2w"] = ([k, "--config", ktcpvs_conf(self.tmp, "ktcpvs-2w", PORTS["ktcpvs-2w"], 2)],
                                  PORTS["ktcpvs-2w"])
        self.spec["ktcpvs-splice"] = ([k, "--config", ktcpvs_conf(
            self.tmp, "ktcpvs-splice", PORTS["ktcpvs-splice"], 1, 1)], PORTS["ktcpvs-splice"])
        self.spec["ktcpvs-copy"] = ([k, "--config", ktcpvs_conf(
            self.tmp, "ktcpvs-copy", PORTS["ktcpvs-copy"], 1, 1000000000)], PORTS["ktcpvs-copy"])
        self.spec["haproxy"] = (["haproxy", "-db", "-f", haproxy_conf(self.tmp, PORTS["haproxy"])],
                                PORTS["haproxy"])
        floor = self.args.relay_floor
        if floor and os.access(floor, os.X_OK):
            origins = ",".join(f"127.0.0.1:{p}" for p in ORIGIN_PORTS)
            self.spec["relay-floor"] = ([floor, f"127.0.0.1:{PORTS['relay-floor']}", origins],
                                        PORTS["relay-floor"])
        d, nconf = nginx_proxy_conf(self.tmp, PORTS["nginx"])
        self.spec["nginx"] = (["nginx", "-e", "stderr", "-p", d, "-c", nconf], PORTS["nginx"])
        for name in self.spec:
            self.launch(name)
        # warm up: fill every pool, fault in the files. Only the 1,000-byte object
        # goes through the ktcpvs instances that splice: a failed splice leaves
        # ktcpvs in a bad state (see RESULTS.md, bugs), which must not leak into
        # the tests that come before the 300,000-byte ones.
        for name in self.spec:
            wrk(PORTS[name], OBJ_1K, 1, conns=16)
            if name in ("haproxy", "nginx", "ktcpvs-copy"):
                wrk(PORTS[name], OBJ_300K, 1, conns=16)

    def check_alive(self, name, test):
        p = self.proxies[name]
        if p.poll() is not None:
            msg = f"{name} exited with status {p.returncode} during {test}"
            log("INCIDENT: " + msg)
            self.incidents.append({"proxy": name, "test": test, "what": msg,
                                   "log_tail": self.log_tail(name)})
            self.launch(name)

    def log_tail(self, name, n=4000):
        try:
            with open(os.path.join(self.logs, f"{name}.log"), "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - n))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def measure(self, test, name, fn, unit="req"):
        """Runs fn() against proxy `name` with CPU accounting around it."""
        self.check_alive(name, test)
        pids = descendants(self.proxies[name].pid)
        c0, k0, t0 = cpu_ticks(pids), core_busy(), time.time()
        r = fn()
        c1, k1, t1 = cpu_ticks(pids), core_busy(), time.time()
        du, ds = c1[0] - c0[0], c1[1] - c0[1]
        r.update(test=test, proxy=name, wall_s=t1 - t0,
                 cpu_user_s=du / CLK_TCK, cpu_sys_s=ds / CLK_TCK)
        for cpu in ("cpu0", "cpu1"):
            b = k1[cpu][0] - k0[cpu][0]
            t = k1[cpu][1] - k0[cpu][1]
            r[f"{cpu}_busy_pct"] = 100.0 * b / t if t else 0.0
        n = r.get("ok", 0)
        r["cpu_us_per_" + unit] = (du + ds) / CLK_TCK * 1e6 / n if n else None
        r["cpu_us"] = (du + ds) / CLK_TCK * 1e6 / n if n else None
        r["user_frac"] = du / (du + ds) if du + ds else None
        errs = sum(v for k, v in r.get("errors", {}).items() if k != "total")
        errs += sum(r.get("sock_err", {}).values()) + r.get("non2xx", 0)
        sent = r.get("sent")
        if sent is not None and sent != r.get("replies"):
            errs += sent - r.get("replies", 0)
        r["error_count"] = errs
        if r.get("truncated"):
            log(f"  INCIDENT: {name} {test}: responses truncated (avg body "
                f"{r.get('content_avg')} of {r.get('content_expected')} bytes; wrk read errors "
                f"{r.get('sock_err', {}).get('read')})")
            self.incidents.append({"proxy": name, "test": test, "what": "truncated responses",
                                   "content_avg": r.get("content_avg"),
                                   "content_expected": r.get("content_expected"),
                                   "errors": r.get("errors") or r.get("sock_err"), "cmd": r.get("cmd"),
                                   "log_tail": self.log_tail(name, 1500)})
        elif errs:
            log(f"  note: {name} {test}: errors {r.get('errors') or r.get('sock_err')} "
                f"non2xx={r.get('non2xx')} {r.get('proxy_side_sockets', '')}")
            self.incidents.append({"proxy": name, "test": test, "what": "client errors",
                                   "errors": r.get("errors") or r.get("sock_err"),
                                   "non2xx": r.get("non2xx"), "cmd": r.get("cmd"),
                                   "proxy_side_sockets": r.get("proxy_side_sockets"),
                                   "log_tail": self.log_tail(name, 1500)})
        self.raw.append(r)
        self.check_alive(name, test)
        return r

    def step(self, i, total, label):
        log(f"step {i}/{total}: {label}")

    # -- the tests
    def run(self):
        q = self.quick
        D_MAX = 3 if q else 10          # wrk max-throughput runs
        D_FIX = 2 if q else 5           # fixed-rate runs (seconds of offered load)
        D_CLOSE = 3 if q else 5
        D_SPL = 1 if q else 3
        reps = self.reps
        main = MAIN
        ka_lat_script = os.path.join(self.tmp, "delay.lua")
        with open(ka_lat_script, "w") as f:
            f.write(f"function delay() return {KA_LAT_DELAY_MS} end\n")
        ka_exp_script = os.path.join(self.tmp, "expdelay.lua")
        with open(ka_exp_script, "w") as f:
            f.write(KA_LAT_EXP_SCRIPT)

        plan = []
        # The no-HTTP relay (if built): keep-alive rows only, as a floor.
        floor = ["relay-floor"] if "relay-floor" in self.spec else []
        for rep in range(reps):
            for n in main + floor:
                plan.append(("ka_max", n, lambda n=n: wrk(PORTS[n], OBJ_1K, D_MAX)))
        for rep in range(reps):
            for n in main + ["ktcpvs-2w"] + floor:
                conns = int(KA_RATE / 100 * D_FIX)
                plan.append(("ka_fixed", n, lambda n=n, c=conns: httperf(
                    PORTS[n], OBJ_1K, KA_RATE / 100, c, 100)))
        for rep in range(reps):
            for n in main:
                plan.append(("ka_fixed_lat", n, lambda n=n: wrk(
                    PORTS[n], OBJ_1K, D_MAX, script=ka_lat_script)))
        for rep in range(reps):
            for n in main:
                plan.append(("ka_exp_lat", n, lambda n=n: wrk(
                    PORTS[n], OBJ_1K, D_MAX, script=ka_exp_script)))
        for obj, rate, tag in ((OBJ_1K, CLOSE_RATE_1K, "1k"), (OBJ_300K, CLOSE_RATE_300K, "300k")):
            for rep in range(reps):
                for n in main + (["ktcpvs-copy"] if tag == "300k" else []):
                    plan.append((f"close_max_{tag}", n, lambda n=n, obj=obj: wrk(
                        PORTS[n], obj, D_CLOSE, headers=["Connection: close"])))
            for rep in range(reps):
                for n in main + (["ktcpvs-2w"] if tag == "1k" else ["ktcpvs-copy"]):
                    plan.append((f"close_fixed_{tag}", n, lambda n=n, obj=obj, rate=rate: httperf(
                        PORTS[n], obj, rate, int(rate * D_FIX), 1)))
        for size in SPLICE_SIZES:
            rate = SPLICE_RATE[size]
            for rep in range(reps):
                for n in ("ktcpvs-splice", "ktcpvs-copy"):
                    path = f"/o{size}.bin"
                    plan.append((f"splice_close_{size}", n, lambda n=n, path=path, rate=rate: httperf(
                        PORTS[n], path, rate, max(20, int(rate * D_SPL)), 1)))
                    plan.append((f"splice_ka_{size}", n, lambda n=n, path=path, rate=rate: httperf(
                        PORTS[n], path, rate / 10, max(4, int(rate * D_SPL / 10)), 10)))

        total = len(plan)
        for i, (test, name, fn) in enumerate(plan, 1):
            self.step(i, total, f"{test} {name}")
            unit = "conn" if test.startswith("close") else "req"
            r = self.measure(test, name, fn, unit)
            log(f"  -> rps={r.get('rps', 0):.0f} cpu_us={fmt(r.get('cpu_us'))} "
                f"p99={fmt(r.get('p99_ms'))}ms errors={r['error_count']}")

        self.threads = self.thread_census()
        if not q and not self.args.no_strace and shutil.which("strace"):
            try:
                self.strace_counts()
            except Exception as e:  # noqa: BLE001 - strace is an extra, never fatal
                log(f"strace step failed: {e}")

    def thread_census(self):
        """Thread names per proxy after the load (io_uring io-wq workers show as iou-wrk-*)."""
        out = {}
        for n, p in self.proxies.items():
            names = {}
            for pid in descendants(p.pid):
                try:
                    for tid in os.listdir(f"/proc/{pid}/task"):
                        with open(f"/proc/{pid}/task/{tid}/comm") as f:
                            c = re.sub(r"\d+$", "N", f.read().strip())
                        names[c] = names.get(c, 0) + 1
                except OSError:
                    pass
            out[n] = names
        return out

    def strace_counts(self):
        """Syscalls per request under a modest fixed keep-alive load (strace -c -f)."""
        self.strace = {}
        for n in MAIN:
            log(f"strace -c: {n}")
            pid = self.proxies[n].pid
            pids = descendants(pid)
            target = pids[-1] if n == "nginx" else pid   # nginx: the worker
            so = os.path.join(self.tmp, f"strace-{n}.txt")
            sp = subprocess.Popen(["strace", "-c", "-f", "-o", so, "-p", str(target)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            r = httperf(PORTS[n], OBJ_1K, 20, 100, 100)
            sp.send_signal(signal.SIGINT)
            sp.wait(10)
            rows = []
            with open(so) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                        calls = int(parts[3])
                        rows.append((parts[-1], calls))
            rows.sort(key=lambda x: -x[1])
            ok = r.get("ok", 0) or 1
            self.strace[n] = {"requests": r.get("ok", 0),
                              "syscalls_per_req": sum(c for _, c in rows) / ok,
                              "top": [(s, c / ok) for s, c in rows[:6]]}

    def teardown(self):
        stop_all()
        os.makedirs(os.path.join(OUT, "logs"), exist_ok=True)
        for f in os.listdir(self.logs):
            shutil.copy(os.path.join(self.logs, f), os.path.join(OUT, "logs", f))
        shutil.rmtree(self.tmp, ignore_errors=True)


def fmt(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


# ---------------------------------------------------------------- report

def summarize(raw):
    """(test, proxy) -> medians of every numeric field."""
    groups = {}
    for r in raw:
        groups.setdefault((r["test"], r["proxy"]), []).append(r)
    s = {}
    for key, rs in groups.items():
        m = {"n": len(rs), "errors": sum(r["error_count"] for r in rs),
             "truncated": any(r.get("truncated") for r in rs)}
        for fld in ("rps", "cps", "p50_ms", "p99_ms", "cpu_us", "user_frac", "reply_ms",
                    "cpu_user_s", "cpu_sys_s", "cpu0_busy_pct", "cpu1_busy_pct", "ok"):
            m[fld] = med([r.get(fld) for r in rs])
        s[key] = m
    return s


def ratio(a, b):
    return a / b if a is not None and b else None


def crossover(sizes, splice, copy):
    """First size from which splice stays cheaper; log-interpolated crossing."""
    r = [s / c if s and c else None for s, c in zip(splice, copy)]
    idx = None
    for i in range(len(sizes)):
        if all(x is not None and x < 1.0 for x in r[i:]):
            idx = i
            break
    if idx is None:
        return None, None
    if idx == 0:
        return sizes[0], sizes[0]
    a, b = r[idx - 1], r[idx]
    la, lb = math.log2(sizes[idx - 1]), math.log2(sizes[idx])
    if a is None or b is None or a == b:
        return sizes[idx], sizes[idx]
    t = (a - 1.0) / (a - b)
    return sizes[idx], 2 ** (la + t * (lb - la))


def human(n):
    n = float(n)
    for unit, d in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= d:
            v = n / d
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n:.0f} B"


def report(s, meta, strace=None):
    L = []
    g = lambda t, p, f: s.get((t, p), {}).get(f)

    def c(t, p, f, nd=1):
        """A table cell; marks medians that include truncated responses."""
        v = fmt(g(t, p, f), nd)
        return v + " ✗trunc" if s.get((t, p), {}).get("truncated") and v != "-" else v
    L.append(f"Medians of {meta['reps']} runs per cell, proxies interleaved; "
             f"proxy on core {PROXY_CORE}, origins + clients on core {CLIENT_CORE}.\n")
    L.append("### Keep-alive, 1,000-byte object\n")
    L.append(f"| proxy | req/s (wrk -c64) | p99 ms (wrk -c64) | CPU µs/req (wrk) "
             f"| CPU µs/req (httperf @{KA_RATE}/s) | user share | httperf avg reply ms "
             f"| p50 / p99 ms @fixed load (wrk -c64, {KA_LAT_DELAY_MS} ms think) | req/s of that run "
             f"| p50 / p99 ms @fixed load, exponential think (mean {KA_LAT_DELAY_MS} ms) | req/s of that run | errors |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in MAIN + ["ktcpvs-2w"] + (["relay-floor"] if ("ka_fixed", "relay-floor") in s else []):
        errs = sum((s.get((t, p), {}).get("errors") or 0)
                   for t in ("ka_max", "ka_fixed", "ka_fixed_lat", "ka_exp_lat"))
        uf = g("ka_fixed", p, "user_frac")
        L.append(f"| {p} | {fmt(g('ka_max', p, 'rps'), 0)} | {fmt(g('ka_max', p, 'p99_ms'), 2)} "
                 f"| {fmt(g('ka_max', p, 'cpu_us'), 2)} | {fmt(g('ka_fixed', p, 'cpu_us'), 2)} "
                 f"| {fmt(uf * 100 if uf is not None else None, 0)}% "
                 f"| {fmt(g('ka_fixed', p, 'reply_ms'), 2)} "
                 f"| {fmt(g('ka_fixed_lat', p, 'p50_ms'), 2)} / {fmt(g('ka_fixed_lat', p, 'p99_ms'), 2)} "
                 f"| {fmt(g('ka_fixed_lat', p, 'rps'), 0)} "
                 f"| {fmt(g('ka_exp_lat', p, 'p50_ms'), 2)} / {fmt(g('ka_exp_lat', p, 'p99_ms'), 2)} "
                 f"| {fmt(g('ka_exp_lat', p, 'rps'), 0)} | {errs} |")
    L.append("")
    L.append("### One request per connection\n")
    L.append(f"| proxy | conn/s 1,000 B (wrk -c64, Connection: close) | CPU µs/conn (wrk) "
             f"| CPU µs/conn 1,000 B (httperf @{CLOSE_RATE_1K}/s) | user share "
             f"| conn/s 300,000 B (wrk) | CPU µs/conn (wrk) "
             f"| CPU µs/conn 300,000 B (httperf @{CLOSE_RATE_300K}/s) | user share | errors |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in MAIN + ["ktcpvs-2w", "ktcpvs-copy"]:
        errs = sum((s.get((t, p), {}).get("errors") or 0)
                   for t in ("close_max_1k", "close_fixed_1k", "close_max_300k", "close_fixed_300k"))
        u1 = g("close_fixed_1k", p, "user_frac")
        u3 = g("close_fixed_300k", p, "user_frac")
        L.append(f"| {p} | {c('close_max_1k', p, 'rps', 0)} | {c('close_max_1k', p, 'cpu_us', 1)} "
                 f"| {c('close_fixed_1k', p, 'cpu_us', 1)} | {fmt(u1 * 100 if u1 is not None else None, 0)}% "
                 f"| {c('close_max_300k', p, 'rps', 0)} | {c('close_max_300k', p, 'cpu_us', 1)} "
                 f"| {c('close_fixed_300k', p, 'cpu_us', 1)} | {fmt(u3 * 100 if u3 is not None else None, 0)}% "
                 f"| {errs} |")
    L.append("")
    L.append("`ktcpvs-copy` = ktcpvs workers=1 with splice_threshold = 1000000000 (bodies always copied); "
             "`ktcpvs` uses the default threshold (128 KiB since this run; 64 KiB in runs before 2026-11-22 04:00), so its 300,000-byte bodies take the splice path. "
             "✗trunc = responses were cut short (wrk read errors / httperf average body smaller than the object): "
             "the CPU figure then does not measure a complete transfer.\n")
    L.append("### Core utilisation during the max-throughput runs (median %, all processes on the machine, other tenants included)\n")
    L.append("| test | proxy | core 0 (proxy) busy | core 1 (clients + origins) busy |")
    L.append("|---|---|---:|---:|")
    for t in ("ka_max", "close_max_1k", "close_max_300k"):
        for p in MAIN + (["ktcpvs-copy"] if t == "close_max_300k" else []):
            L.append(f"| {t} | {p} | {fmt(g(t, p, 'cpu0_busy_pct'), 0)} | {fmt(g(t, p, 'cpu1_busy_pct'), 0)} |")
    L.append("")

    # targets
    k, h = "ktcpvs", "haproxy"
    tg = []
    def t(name, val, limit, le):
        ok = None if val is None else (val <= limit if le else val >= limit)
        tg.append((name, val, ("≤ " if le else "≥ ") + f"{limit:g}", ok))
    t("keep-alive CPU/req vs HAProxy (httperf fixed rate)", ratio(g("ka_fixed", k, "cpu_us"), g("ka_fixed", h, "cpu_us")), 0.67, True)
    t("keep-alive req/s vs HAProxy (wrk -c64)", ratio(g("ka_max", k, "rps"), g("ka_max", h, "rps")), 1.3, False)
    t("1 req/conn CPU/conn vs HAProxy, 1,000 B (httperf fixed rate)", ratio(g("close_fixed_1k", k, "cpu_us"), g("close_fixed_1k", h, "cpu_us")), 0.67, True)
    t("1 req/conn CPU/conn vs HAProxy, 300,000 B (httperf fixed rate)", ratio(g("close_fixed_300k", k, "cpu_us"), g("close_fixed_300k", h, "cpu_us")), 0.5, True)
    t("(extra) 1 req/conn CPU/conn vs HAProxy, 300,000 B, ktcpvs-copy (splice off)", ratio(g("close_fixed_300k", "ktcpvs-copy", "cpu_us"), g("close_fixed_300k", h, "cpu_us")), 0.5, True)
    t("keep-alive p99 at the same offered load vs HAProxy (wrk, exponential think time)", ratio(g("ka_exp_lat", k, "p99_ms"), g("ka_exp_lat", h, "p99_ms")), 1.0, True)
    t("keep-alive p99 at the same offered load vs HAProxy (wrk, fixed think time: clients in step)", ratio(g("ka_fixed_lat", k, "p99_ms"), g("ka_fixed_lat", h, "p99_ms")), 1.0, True)
    t("2 workers vs 1 worker CPU/req, keep-alive (httperf fixed rate)", ratio(g("ka_fixed", "ktcpvs-2w", "cpu_us"), g("ka_fixed", k, "cpu_us")), 1.1, True)
    L.append("### Targets (ktcpvs, ratios from this run)\n")
    L.append("| target | measured ratio | required | result |")
    L.append("|---|---:|---:|---|")
    trunc = {"300,000 B (httperf": s.get(("close_fixed_300k", k), {}).get("truncated")}
    for name, val, lim, ok in tg:
        res = 'PASS' if ok else ('FAIL' if ok is False else 'n/a')
        if any(key in name for key, bad in trunc.items() if bad) and "ktcpvs-copy" not in name:
            res = "INVALID (ktcpvs truncated the responses)"
        L.append(f"| {name} | {fmt(val, 2)} | {lim} | {res} |")
    L.append("")
    L.append("Secondary (not targets): "
             f"CPU/req keep-alive from the wrk max runs ktcpvs/HAProxy = {fmt(ratio(g('ka_max', k, 'cpu_us'), g('ka_max', h, 'cpu_us')), 2)}; "
             f"2w/1w CPU/conn one-request-per-connection = {fmt(ratio(g('close_fixed_1k', 'ktcpvs-2w', 'cpu_us'), g('close_fixed_1k', k, 'cpu_us')), 2)}; "
             f"ktcpvs/nginx CPU/req keep-alive = {fmt(ratio(g('ka_fixed', k, 'cpu_us'), g('ka_fixed', 'nginx', 'cpu_us')), 2)}.\n")
    if ("ka_fixed", "relay-floor") in s:
        L.append("Floor (bench/src/bin/relay-floor.rs: one epoll thread copying bytes between "
                 "each client and its own origin connection, no HTTP at all): keep-alive CPU/req "
                 f"relay-floor/HAProxy = {fmt(ratio(g('ka_fixed', 'relay-floor', 'cpu_us'), g('ka_fixed', h, 'cpu_us')), 2)} "
                 f"(ktcpvs/relay-floor = {fmt(ratio(g('ka_fixed', k, 'cpu_us'), g('ka_fixed', 'relay-floor', 'cpu_us')), 2)}); "
                 f"req/s at saturation relay-floor/HAProxy = {fmt(ratio(g('ka_max', 'relay-floor', 'rps'), g('ka_max', h, 'rps')), 2)}.\n")

    # splice
    L.append("### splice vs copy (ktcpvs alone, workers=1): CPU µs per request\n")
    L.append("| body | req/s offered | 1 req/conn: splice | copy | splice/copy | keep-alive (10 req/conn): splice | copy | splice/copy |")
    L.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
    cs = {}
    for mode in ("close", "ka"):
        sp = [g(f"splice_{mode}_{z}", "ktcpvs-splice", "cpu_us") for z in SPLICE_SIZES]
        cp = [g(f"splice_{mode}_{z}", "ktcpvs-copy", "cpu_us") for z in SPLICE_SIZES]
        cs[mode] = (sp, cp)
    for i, z in enumerate(SPLICE_SIZES):
        a, b = cs["close"][0][i], cs["close"][1][i]
        c2, d = cs["ka"][0][i], cs["ka"][1][i]
        L.append(f"| {human(z)} | {SPLICE_RATE[z]} | {c(f'splice_close_{z}', 'ktcpvs-splice', 'cpu_us')} "
                 f"| {c(f'splice_close_{z}', 'ktcpvs-copy', 'cpu_us')} | {fmt(ratio(a, b), 2)} "
                 f"| {c(f'splice_ka_{z}', 'ktcpvs-splice', 'cpu_us')} | {c(f'splice_ka_{z}', 'ktcpvs-copy', 'cpu_us')} "
                 f"| {fmt(ratio(c2, d), 2)} |")
    L.append("")
    xo = {}
    for mode, label in (("close", "one request per connection"), ("ka", "keep-alive")):
        first, interp = crossover(SPLICE_SIZES, *cs[mode])
        bad = [z for z in SPLICE_SIZES if s.get((f"splice_{mode}_{z}", "ktcpvs-splice"), {}).get("truncated")]
        xo[mode] = {"first_size_splice_stays_cheaper": first, "interpolated_bytes": interp,
                    "splice_truncated_sizes": bad}
        if bad:
            L.append(f"- crossover, {label}: NOT MEASURABLE — with splice the responses of "
                     f"{', '.join(human(z) for z in bad)} were truncated, so splice CPU there is not "
                     f"the cost of a full transfer (raw ratio crossing: "
                     f"{human(interp) if interp else 'none'})")
        elif first is None:
            L.append(f"- crossover, {label}: splice is not cheaper at every size above any tested size")
        else:
            L.append(f"- crossover, {label}: splice cheaper from {human(first)} up "
                     f"(log-interpolated crossing ≈ {human(interp)})")
    L.append("")
    if meta.get("threads"):
        L.append("Threads of each proxy after the load (name: count; iou-wrk-N = io_uring io-wq workers): "
                 + "; ".join(f"{p}: " + ", ".join(f"{k} {v}" for k, v in sorted(t.items()))
                             for p, t in meta["threads"].items()) + "\n")
    if strace:
        L.append("### Syscalls per request (strace -c -f, keep-alive 1,000 B, httperf 2,000 req/s; strace slows the proxy, counts only)\n")
        L.append("| proxy | syscalls/req | top syscalls (per req) |")
        L.append("|---|---:|---|")
        for p, v in strace.items():
            top = ", ".join(f"{n} {c:.2f}" for n, c in v["top"])
            L.append(f"| {p} | {v['syscalls_per_req']:.2f} | {top} |")
        L.append("")
    return "\n".join(L), tg, xo, cs


def svg_plot(cs, path, trunc=None):
    """trunc: {(mode, variant, size)} of cells with truncated responses (drawn hollow)."""
    trunc = trunc or set()
    W, H = 760, 460
    ml, mr, mt, mb = 70, 190, 40, 60
    pw, ph = W - ml - mr, H - mt - mb
    vals = [v for sp, cp in cs.values() for v in sp + cp if v]
    if not vals:
        return
    ymin = 10 ** math.floor(math.log10(min(vals)))
    ymax = 10 ** math.ceil(math.log10(max(vals)))
    xmin, xmax = math.log2(SPLICE_SIZES[0]), math.log2(SPLICE_SIZES[-1])
    X = lambda z: ml + (math.log2(z) - xmin) / (xmax - xmin) * pw
    Y = lambda v: mt + ph - (math.log10(v) - math.log10(ymin)) / (math.log10(ymax) - math.log10(ymin)) * ph
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
         f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{ml + pw / 2}" y="22" text-anchor="middle" font-size="15">'
         'ktcpvs: proxy CPU per request, splice vs copy</text>']
    d = ymin
    while d <= ymax * 1.0001:
        for m in (1, 2, 5):
            v = d * m
            if v > ymax * 1.0001:
                break
            y = Y(v)
            o.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{ml + pw}" y2="{y:.1f}" stroke="#ddd"/>')
            o.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
        d *= 10
    for z in SPLICE_SIZES:
        x = X(z)
        o.append(f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{mt + ph}" stroke="#ddd"/>')
        o.append(f'<text x="{x:.1f}" y="{mt + ph + 18}" text-anchor="middle">{human(z)}</text>')
    o.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="black"/>')
    o.append(f'<text x="{ml + pw / 2}" y="{H - 15}" text-anchor="middle">response body size (log scale)</text>')
    o.append(f'<text x="18" y="{mt + ph / 2}" text-anchor="middle" '
             f'transform="rotate(-90 18 {mt + ph / 2})">proxy CPU µs per request (log scale)</text>')
    series = [("1 req/conn, splice", cs["close"][0], "#d62728", "", ("close", "ktcpvs-splice")),
              ("1 req/conn, copy", cs["close"][1], "#1f77b4", "", ("close", "ktcpvs-copy")),
              ("keep-alive, splice", cs["ka"][0], "#d62728", "6,4", ("ka", "ktcpvs-splice")),
              ("keep-alive, copy", cs["ka"][1], "#1f77b4", "6,4", ("ka", "ktcpvs-copy"))]
    for i, (label, ys, color, dash, key) in enumerate(series):
        pts = [(X(z), Y(v), key + (z,) in trunc) for z, v in zip(SPLICE_SIZES, ys) if v]
        if pts:
            pstr = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in pts)
            da = f' stroke-dasharray="{dash}"' if dash else ""
            o.append(f'<polyline points="{pstr}" fill="none" stroke="{color}" stroke-width="2"{da}/>')
            for x, y, bad in pts:
                fill = "white" if bad else color
                o.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{fill}" stroke="{color}" stroke-width="1.5"/>')
        ly = mt + 20 + i * 22
        lx = ml + pw + 15
        da = f' stroke-dasharray="{dash}"' if dash else ""
        o.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 30}" y2="{ly}" stroke="{color}" stroke-width="2"{da}/>')
        o.append(f'<text x="{lx + 36}" y="{ly + 4}">{label}</text>')
    if trunc:
        o.append(f'<text x="{ml + pw + 15}" y="{mt + 120}" font-size="11">hollow marker: responses</text>')
        o.append(f'<text x="{ml + pw + 15}" y="{mt + 134}" font-size="11">truncated (ktcpvs bug),</text>')
        o.append(f'<text x="{ml + pw + 15}" y="{mt + 148}" font-size="11">CPU not of a full transfer</text>')
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")


CC_SYSCTL = "/proc/sys/net/ipv4/tcp_congestion_control"


def read_cc():
    try:
        with open(CC_SYSCTL) as f:
            return f.read().strip()
    except OSError:
        return "?"


def set_cc(algo):
    """Sets the system-wide default TCP congestion control (root); every
    socket the run opens, on every side, gets it: a like-for-like change."""
    try:
        with open(CC_SYSCTL, "w") as f:
            f.write(algo)
    except OSError as e:
        sys.exit(f"bench: --congestion {algo}: cannot write {CC_SYSCTL}: {e} "
                 f"(available: {open('/proc/sys/net/ipv4/tcp_available_congestion_control').read().strip()})")


def versions(ktcpvs_bin):
    def first(cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except Exception as e:  # noqa: BLE001
            return f"? ({e})"
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    git = first(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "ktcpvs": first([ktcpvs_bin, "--version"]) + f" (git {git})",
        "haproxy": first(["haproxy", "-v"]),
        "nginx": first(["nginx", "-v"]),
        "wrk": first(["wrk", "--version"]),
        "httperf": first(["httperf", "--version"]).replace("httperf: warning: open file limit > FD_SETSIZE; limiting max. # of open files to FD_SETSIZE", "").strip() or "httperf",
        "kernel": platform.release(),
        "cpu": f"{cpu}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="~2-minute run: 1 rep, short runs, no strace")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ktcpvs", default=os.environ.get("KTCPVS_BIN", "/work/target-bench/release/ktcpvs"))
    ap.add_argument("--relay-floor", default=os.environ.get("RELAY_FLOOR_BIN"),
                    help="bench/src/bin/relay-floor.rs binary: adds the no-HTTP relay to the "
                         "keep-alive rows as the floor any proxy's cost sits on (run.sh builds it)")
    ap.add_argument("--no-strace", action="store_true")
    ap.add_argument("--svg", default=os.path.join(HERE, "splice-vs-copy.svg"))
    ap.add_argument("--report", metavar="JSON", help="only re-render tables + SVG from a saved results JSON")
    ap.add_argument("--congestion", metavar="ALGO",
                    help="run with net.ipv4.tcp_congestion_control = ALGO (every proxy, origin and "
                         "client alike; restored afterwards). Default: leave the machine's setting")
    args = ap.parse_args()
    if args.report:
        with open(args.report) as f:
            saved = json.load(f)
        s = summarize(saved["runs"])
        meta = saved["meta"]
        meta["threads"] = saved.get("threads")
        md, _, _, cs = report(s, meta, saved.get("strace"))
        trunc = {(t.split("_")[1], p, int(t.split("_")[2])) for (t, p), v in s.items()
                 if t.startswith("splice_") and v.get("truncated")}
        svg_plot(cs, args.svg, trunc)
        print("\n".join(f"- {k}: {v}" for k, v in meta.items()) + "\n\n" + md)
        return
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    os.makedirs(OUT, exist_ok=True)
    b = Bench(args)
    meta = versions(args.ktcpvs)
    meta.update(reps=b.reps, quick=args.quick, command=" ".join(["bench/run.sh"] + sys.argv[1:]))
    saved_cc = read_cc()
    t0 = time.time()
    try:
        if args.congestion:
            set_cc(args.congestion)
        meta["tcp_congestion"] = read_cc() + (" (set for this run; machine default " + saved_cc + ")"
                                              if args.congestion else " (machine default)")
        log(f"temp dir {b.tmp}; starting origins and proxies; TCP congestion control {meta['tcp_congestion']}")
        b.setup()
        b.run()
    finally:
        b.teardown()
        if args.congestion and read_cc() != saved_cc:
            set_cc(saved_cc)
    meta["duration_s"] = round(time.time() - t0)
    s = summarize(b.raw)
    meta["threads"] = getattr(b, "threads", None)
    md, targets, xo, cs = report(s, meta, getattr(b, "strace", None))
    stamp = time.strftime("%Y%m%dT%H%M%S")
    result = {"meta": meta, "runs": b.raw, "summary": {f"{t}|{p}": v for (t, p), v in s.items()},
              "targets": [{"target": n, "ratio": v, "required": l, "pass": ok} for n, v, l, ok in targets],
              "crossover": xo, "strace": getattr(b, "strace", None),
              "threads": getattr(b, "threads", None), "incidents": b.incidents}
    for name in (f"results-{stamp}.json", "latest.json"):
        with open(os.path.join(OUT, name), "w") as f:
            json.dump(result, f, indent=1)
    head = "\n".join(f"- {k}: {v}" for k, v in meta.items())
    with open(os.path.join(OUT, "latest.md"), "w") as f:
        f.write(head + "\n\n" + md + "\n")
    trunc = {(t.split("_")[1], p, int(t.split("_")[2])) for (t, p), v in s.items()
             if t.startswith("splice_") and v.get("truncated")}
    svg_plot(cs, args.svg, trunc)
    print(head + "\n\n" + md)
    if b.incidents:
        print(f"\n{len(b.incidents)} incident(s) (errors, crashes): see bench/out/latest.json \"incidents\"")
        for inc in b.incidents:
            print(f"- {inc['proxy']} {inc['test']}: {inc['what']} {inc.get('errors', '')} non2xx={inc.get('non2xx', '')}")
    log(f"done in {meta['duration_s']} s; raw results in {OUT}, plot in {args.svg}")


if __name__ == "__main__":
    main()
