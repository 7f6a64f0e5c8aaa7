#!/usr/bin/env bash
# Runtime changes under load (issue 3 target: zero failed responses).
# wrk drives a release ktcpvs on 127.0.0.1 while tcpvsadm, in a loop, adds a
# server, drains one, changes the scheduler, deletes the server, and the
# configuration is reloaded twice (SIGHUP, then `tcpvsadm reload`). Prints
# wrk's summary and the number of change rounds; fails if wrk saw any
# socket error or non-2xx response, or a change was refused.
#   bash scripts/admin-under-load.sh [SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
[ -n "${KTCPVS_BIN:-}" ] || cargo build --release -q -p ktcpvs
BIN=$(dirname "${KTCPVS_BIN:-$CARGO_TARGET_DIR/release/ktcpvs}")
DUR=${1:-20}
CONNS=${2:-32}
BASE=${BASE_PORT:-28080}
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

# Origins: the three demo origins of `ktcpvs quickstart` (its own switch idles).
"$BIN/ktcpvs" quickstart --listen "127.0.0.1:$BASE" --workers 1 2>"$dir/origins.log" &
pids+=($!)
O1=127.0.0.1:$((BASE + 1)) O2=127.0.0.1:$((BASE + 2)) O3=127.0.0.1:$((BASE + 3))
LISTEN=127.0.0.1:$((BASE + 10))
conf() { # name scheduler servers...
  local f=$1 s=$2
  shift 2
  printf '[global]\nworkers = 2\nlog = "warn"\nadmin_socket = "%s"\n\n[[service]]\nname = "web"\nlisten = "%s"\nscheduler = "%s"\n' \
    "$dir/admin.sock" "$LISTEN" "$s" >"$f"
  for a in "$@"; do printf '\n[[service.server]]\naddress = "%s"\n' "$a" >>"$f"; done
}
conf "$dir/a.toml" wlc "$O1" "$O2"
conf "$dir/b.toml" lblc "$O2" "$O3"
cp "$dir/a.toml" "$dir/ktcpvs.toml"
"$BIN/ktcpvs" --config "$dir/ktcpvs.toml" 2>"$dir/ktcpvs.log" &
kpid=$!
pids+=($kpid)
for _ in $(seq 100); do
  curl -sf "http://$LISTEN/" >/dev/null 2>&1 && curl -sf "http://$O3/" >/dev/null 2>&1 && break
  sleep 0.1
done

wrk -t2 -c"$CONNS" -d"${DUR}s" "http://$LISTEN/" >"$dir/wrk.txt" &
wpid=$!
refused=0
rounds=0
adm() { "$BIN/tcpvsadm" -S "$dir/admin.sock" "$@" >/dev/null || refused=$((refused + 1)); }
sleep 1
while kill -0 "$wpid" 2>/dev/null; do
  adm -a -t web -r "$O3" -w 2; sleep 0.1
  adm -e -t web -r "$O1" -w 0; sleep 0.1
  adm -E -t web -s rr; sleep 0.1
  adm -d -t web -r "$O3"; sleep 0.1
  adm -e -t web -r "$O1" -w 1; adm -E -t web -s wlc; sleep 0.1
  cp "$dir/b.toml" "$dir/ktcpvs.toml"; kill -HUP "$kpid"; sleep 0.1
  cp "$dir/a.toml" "$dir/ktcpvs.toml"; adm reload; sleep 0.1
  rounds=$((rounds + 1))
done
wait "$wpid" || true
cat "$dir/wrk.txt"
gen=$("$BIN/tcpvsadm" -S "$dir/admin.sock" -L --json | sed 's/^{"generation":\([0-9]*\).*/\1/')
echo "change rounds: $rounds (configuration generation $gen), refused changes: $refused"
if grep -q -e 'Socket errors' -e 'Non-2xx' "$dir/wrk.txt" || [ "$refused" -ne 0 ]; then
  echo "FAILED: errors under runtime changes" >&2
  grep -i -e warn -e error "$dir/ktcpvs.log" | tail -20 >&2 || true
  exit 1
fi
echo "ok: zero failed responses"
