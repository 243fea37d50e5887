#!/usr/bin/env bash
# The project's test command: prepares the machine (idempotent), then runs every test.
# Tests that need a camera, GPIO or a GPU are #[ignore]d with their reason.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --all-targets "$@"
# The rppal code behind the `gpio` feature (on by default only for aarch64 builds) is
# built and its tests run here too: off a Pi it must report "GPIO unavailable", not crash.
cargo test --workspace --bins --features edge/gpio gpio
