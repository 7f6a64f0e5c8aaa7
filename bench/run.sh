#!/usr/bin/env bash
# Side-by-side benchmark: ktcpvs vs HAProxy vs nginx on 127.0.0.1.
#   bash bench/run.sh            full run (~15 min): 3 reps, strace step
#   bash bench/run.sh --quick    ~2-minute run: 1 rep, short runs
# Extra flags go to bench/bench.py (see --help). KTCPVS_BIN overrides the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
command -v strace >/dev/null 2>&1 || { apt-get install -y -qq strace >/dev/null 2>&1 || true; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
if [ -z "${KTCPVS_BIN:-}" ]; then
  echo "bench: building ktcpvs (release)" >&2
  cargo build --release -q -p ktcpvs
  export KTCPVS_BIN="$CARGO_TARGET_DIR/release/ktcpvs"
fi
# The no-HTTP relay the keep-alive rows are compared with (bench/src/bin/relay-floor.rs).
if [ -z "${RELAY_FLOOR_BIN:-}" ]; then
  cargo build --release -q -p bench && export RELAY_FLOOR_BIN="$CARGO_TARGET_DIR/release/relay-floor" \
    || echo "bench: relay-floor not built; its rows are left out" >&2
fi
pid=""
cleanup() { [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
python3 bench/bench.py "$@" &
pid=$!
rc=0
wait "$pid" || rc=$?
pid=""
exit $rc
