#!/usr/bin/env bash
# The project's test command: prepares the machine (idempotent), then runs every test.
# Tests that need a camera, GPIO or a GPU are #[ignore]d with their reason.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --all-targets "$@"
