#!/usr/bin/env bash
# The project's test command (see README.md): installs what the tests need,
# builds every binary, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# The `ci` profile (Cargo.toml): release optimisation, no LTO — the test
# binaries find the switch next to themselves in target/ci/.
cargo build --workspace --bins --profile ci
cargo test --workspace --profile ci -- --test-threads=2
