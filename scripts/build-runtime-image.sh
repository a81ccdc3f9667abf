#!/usr/bin/env bash
# Builds the draas-runtime container image from a static binary, pulling nothing.
#
#   scripts/build-runtime-image.sh [--binary PATH] [--tag TAG]
#
# Without --binary it builds one: `cargo build --release -p draas-runtime`.
# .cargo/config.toml makes every build target x86_64-unknown-linux-gnu with
# `-C target-feature=+crt-static`, so the binary is a static-pie ELF that runs
# in a FROM scratch image.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
binary=""
tag="draas-runtime:latest"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

if [ -z "$binary" ]; then
  (cd "$root" && cargo build --release -p draas-runtime)
  target_dir="${CARGO_TARGET_DIR:-$root/target}"
  binary="$target_dir/x86_64-unknown-linux-gnu/release/draas-runtime"
fi
[ -x "$binary" ] || { echo "not an executable: $binary" >&2; exit 1; }
if ! file "$binary" 2>/dev/null | grep -q 'static'; then
  # `file` may be absent; ldd is the fallback check.
  if ldd "$binary" >/dev/null 2>&1; then
    echo "$binary is dynamically linked; build it with the repository's .cargo/config.toml" >&2
    exit 1
  fi
fi

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$binary" "$context/draas-runtime"
cp /etc/ssl/certs/ca-certificates.crt "$context/ca-certificates.crt"
cp "$root/docker/runtime/Dockerfile" "$context/Dockerfile"
docker build --quiet --tag "$tag" "$context" >/dev/null
echo "$tag"
