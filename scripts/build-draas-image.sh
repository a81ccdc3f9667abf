#!/usr/bin/env bash
# Builds the DRaaS image (draas + the bundled draas-runtime, FROM scratch),
# pulling nothing: what deploy/ runs.
#
#   scripts/build-draas-image.sh [--tag TAG] [--profile release|debug]
#
# The binaries are static (see .cargo/config.toml), built with cargo unless
# the profile's binaries are already there and newer than the sources.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
tag="draas:latest"
profile="release"
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --profile) profile="$2"; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
case "$profile" in
  release) (cd "$root" && cargo build --release -p draas -p draas-runtime) ;;
  debug) (cd "$root" && cargo build -p draas -p draas-runtime) ;;
  *) echo "--profile is release or debug" >&2; exit 2 ;;
esac
target_dir="${CARGO_TARGET_DIR:-$root/target}"
bin="$target_dir/x86_64-unknown-linux-gnu/$profile"

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$bin/draas" "$bin/draas-runtime" "$context/"
cp /etc/ssl/certs/ca-certificates.crt "$context/ca-certificates.crt"
cp "$root/docker/draas/Dockerfile" "$context/Dockerfile"
docker build --quiet --tag "$tag" "$context" >/dev/null
echo "$tag"
