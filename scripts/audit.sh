#!/usr/bin/env bash
# Checks Cargo.lock against the RustSec advisory database with cargo-audit (installed from
# crates.io when missing), under the rules of .cargo/audit.toml: a vulnerability, an
# unmaintained or unsound crate, or a yanked version is a finding, and any finding fails.
# docs/supply-chain.md says what was found, what was done, and how to read the result.
#
#   scripts/audit.sh                              the database at ~/.cargo/advisory-db
#                                                 (cargo audit's own clone; fetched there
#                                                 first when it is missing)
#   ADVISORY_DB=/path/to/advisory-db scripts/audit.sh
#                                                 a copy you keep: used as it is, never
#                                                 fetched, whatever its age
# Extra arguments go to cargo audit (e.g. --json).
# Exit 0: no finding. Non-zero: findings (listed), or the check could not run (said why).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_AUDIT_VERSION=0.22.2
default_db="${CARGO_HOME:-$HOME/.cargo}/advisory-db"

if ! cargo audit --version >/dev/null 2>&1; then
  echo "installing cargo-audit $CARGO_AUDIT_VERSION (cargo install --locked)" >&2
  cargo install cargo-audit --version "$CARGO_AUDIT_VERSION" --locked
fi

args=()
if [ -n "${ADVISORY_DB:-}" ]; then
  if [ ! -d "$ADVISORY_DB/crates" ]; then
    echo "ADVISORY_DB=$ADVISORY_DB is no RustSec advisory database (no crates/ in it)" >&2
    exit 2
  fi
  # A copy the caller keeps: read as it is (a snapshot may be older than cargo audit's
  # 90-day staleness limit; its date is printed below).
  args+=(--db "$ADVISORY_DB" --no-fetch --stale)
  db="$ADVISORY_DB"
elif [ -d "$default_db/crates" ]; then
  args+=(--db "$default_db")
  db="$default_db"
else
  echo "no advisory database at $default_db: cargo audit fetches it there now" \
    "(needs network access; or set ADVISORY_DB to a copy)" >&2
  args+=(--db "$default_db")
  db="$default_db"
fi
if [ -f "$db/SNAPSHOT.md" ]; then
  echo "advisory database: $db ($(grep -m1 -o '[0-9a-f]\{40\} of [0-9-]*' "$db/SNAPSHOT.md" || echo snapshot))" >&2
else
  echo "advisory database: $db" >&2
fi
exec cargo audit "${args[@]}" "$@"
