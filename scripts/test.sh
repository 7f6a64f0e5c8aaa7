#!/usr/bin/env bash
# The project's test command (see README.md): installs what the tests need,
# builds every binary, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --workspace --bins --release
cargo test --workspace --release -- --test-threads=2
