#!/usr/bin/env bash
# Installs every tool the tests and benchmarks need, from Debian's packages.
# Idempotent: does nothing for tools already present. Needs root (or sudo).
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have httperf  || need+=(httperf)
have wrk      || need+=(wrk)
have nginx    || need+=(nginx-light)
have haproxy  || need+=(haproxy)
have ip       || need+=(iproute2)
have nft      || need+=(nftables)
have curl     || need+=(curl)
have ethtool  || need+=(ethtool)
have taskset  || need+=(util-linux)
[ "${#need[@]}" -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts nginx/haproxy services on install where an init system runs; the
# tests start their own instances on their own ports, so stop any system ones.
for s in nginx haproxy; do
  if have service; then $SUDO service "$s" stop >/dev/null 2>&1 || true; fi
done
