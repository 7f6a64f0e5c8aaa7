#!/bin/bash
# CPU per request of ktcpvs (workers = 1, pinned to core 0) with the access
# log off vs on, wrk -t1 -c32 -d5s on core 1 against an nginx origin on
# 127.0.0.1:19961 (return 200 "hello world 0123456789\n"). Needs
# /tmp/obsbench/k-off.toml and k-on.toml: one service on 127.0.0.1:19960,
# scheduler rr, the nginx origin, log = "warn", admin_socket = "", and in
# k-on.toml access_log = "/tmp/obsbench/access.log". Run alternately:
#   for i in 1 2 3; do ./access_log_cost.sh off; ./access_log_cost.sh on; done
# CPU = utime + stime of the whole process (writer thread included) over
# the 5 s run, divided by the requests wrk completed.
# usage: run.sh off|on  → prints "mode rps cpu_us_per_req"
mode=$1
BIN=${KTCPVS_BIN:-target/release/ktcpvs}
rm -f /tmp/obsbench/access.log
taskset -c 0 $BIN --config /tmp/obsbench/k-$mode.toml 2>/tmp/obsbench/k.err &
pid=$!
for i in $(seq 50); do (echo > /dev/tcp/127.0.0.1/19960) 2>/dev/null && break; sleep 0.1; done
taskset -c 1 wrk -t1 -c32 -d1s http://127.0.0.1:19960/ >/dev/null  # warm-up
t0=$(awk '{print $14+$15}' /proc/$pid/stat)
out=$(taskset -c 1 wrk -t1 -c32 -d5s http://127.0.0.1:19960/)
t1=$(awk '{print $14+$15}' /proc/$pid/stat)
kill -TERM $pid; wait $pid 2>/dev/null
reqs=$(echo "$out" | awk '/requests in/{print $1}')
rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
hz=$(getconf CLK_TCK)
echo "$mode rps=$rps reqs=$reqs cpu_us_per_req=$(echo "($t1-$t0)*1000000/$hz/$reqs" | bc -l | cut -c1-6) lines=$( [ -f /tmp/obsbench/access.log ] && wc -l < /tmp/obsbench/access.log)"
