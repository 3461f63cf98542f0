#!/usr/bin/env bash
# The whole test suite: what README.md tells users to run, and what CI runs (.ci/run).
# Installs the Debian packages the integration tests need, then checks formatting and
# lints, then runs every unit, differential and integration test (the integration tests
# start their own nats-server, unbound and broker processes on free loopback ports).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
if [ ! -f testdata/dnstap/MANIFEST.md ]; then
  echo "test data not found at testdata/dnstap (it is part of the repository)" >&2
  exit 1
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
