#!/usr/bin/env bash
# The run command: builds draas and the bundled Drasi runtime (release) and
# starts `draas up` with the arguments given (default 127.0.0.1:5000).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/draas/target}"
bash "$root/scripts/build-deps.sh"
(cd "$root" && cargo build --release --locked -p draas -p draas-runtime)
exec "$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/draas" up "$@"
