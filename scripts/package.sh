#!/usr/bin/env bash
# Builds the Debian package `tapbus` into target/debian/tapbus_VERSION_ARCH.deb with
# cargo-deb (installed from crates.io when missing): every tapbus binary in /usr/bin,
# commented configurations in /etc/tapbus (conffiles), the systemd units
# tapbus-broker.service and tapbus@.service, and the maintainer scripts that create the
# user tapbus and the group dnstap. The package's contents are listed in broker/Cargo.toml
# ([package.metadata.deb]); docs/deploy.md, "Install from the package", says how to use it.
#
#   scripts/package.sh                 release build, then the .deb
#   PROFILE=dev scripts/package.sh     the dev profile's binaries (what the test suite
#                                      builds; cargo-deb warns that it is not for releases)
#   NO_BUILD=1                         package the binaries already in the profile's
#                                      directory (the package test: the suite built them)
#
# CARGO_TARGET_DIR is honoured; the package is written to <target dir>/debian/.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${PROFILE:-release}"
# The cargo-deb this script is tested with; an installed cargo-deb of at least this
# version is used as it is.
CARGO_DEB_VERSION=3.8.0
BINS=(tapbus-broker tapbus-aggregate tapbus-reduce tapbus-loki tapbus-mimir tapbus-tail tapbus-top)

version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

have="$(cargo deb --version 2>/dev/null | awk '{print $2}' | sed 's/^v//')" || true
if [ -z "$have" ] || ! version_ge "$have" "$CARGO_DEB_VERSION"; then
  echo "installing cargo-deb $CARGO_DEB_VERSION (cargo install --locked)" >&2
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
fi
command -v dpkg-deb >/dev/null || { echo "dpkg-deb not found: this script runs on Debian/Ubuntu" >&2; exit 1; }

target_dir="${CARGO_TARGET_DIR:-$(pwd)/target}"
if [ -z "${NO_BUILD:-}" ]; then
  build=(cargo build --locked --profile "$PROFILE")
  for b in "${BINS[@]}"; do build+=(-p "$b" --bin "$b"); done
  echo "+ ${build[*]}" >&2
  "${build[@]}"
else
  profile_dir="$target_dir/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")"
  for b in "${BINS[@]}"; do
    [ -x "$profile_dir/$b" ] || { echo "NO_BUILD: $profile_dir/$b is not built" >&2; exit 1; }
  done
fi

mkdir -p "$target_dir/debian"
deb_args=(--locked --no-build --profile "$PROFILE" -p tapbus-broker --output "$target_dir/debian/")
# A dev package is for tests: fast compression (its unoptimised binaries are large).
if [ "$PROFILE" = "dev" ]; then deb_args+=(--fast); fi
out="$(cargo deb "${deb_args[@]}")"
deb="$(printf '%s\n' "$out" | tail -n 1)"
if [ ! -f "$deb" ]; then
  echo "cargo deb did not report a package file (output: $out)" >&2
  exit 1
fi
echo "$deb"
