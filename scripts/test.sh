#!/usr/bin/env bash
# The test command. Sets up everything the tests need on a fresh Debian
# machine, then runs the lint gates and every test of the workspace:
#   - build dependencies (scripts/build-deps.sh: pkg-config, libssl-dev,
#     protoc for the grpc plugins, libclang for the RocksDB index);
#   - packages: redis-server (Redis-mode tests start their own on free
#     loopback ports), postgresql (the postgres source's tests initdb and
#     start clusters of their own on free loopback ports, with
#     wal_level=logical; the package's own cluster is not used), openssl
#     (certificates for the rediss:// and HTTPS tests), curl (the HTTPS test),
#     chromium and chromium-driver (the dashboard's browser test);
#   - a running Docker engine (runtime image test);
#   - the test Kubernetes cluster: a real kube-apiserver and
#     kube-controller-manager built from Debian's source package by
#     shared/tools/k8s-test-cluster.sh (cached in ~/.cache/draas/k8s), started
#     for the tests and stopped afterwards; tests find it through
#     $DRAAS_TEST_KUBECONFIG;
#   - cargo-nextest;
#   - schemathesis (PyPI, in ~/.cache/draas/venv) for the API fuzz run;
# and keeps build output in a persistent target directory
# ($CARGO_TARGET_DIR, default ~/.cache/draas/target).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/draas/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

log() { printf '==> %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- system packages --------------------------------------------------------
bash "$root/scripts/build-deps.sh"
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- Docker engine ----------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  log "starting the Docker engine"
  as_root service docker start >/dev/null 2>&1 || (as_root dockerd >/tmp/dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { echo "the Docker engine is not running (see /tmp/dockerd.log)" >&2; exit 1; }
fi

# --- the test Kubernetes cluster ------------------------------------------
# The tool lives next to the repository (../shared/tools) in the team's
# layout; $DRAAS_K8S_TOOL names it elsewhere.
k8s_tool=""
for candidate in "${DRAAS_K8S_TOOL:-}" "$root/../shared/tools/k8s-test-cluster.sh" \
                 /work/shared/tools/k8s-test-cluster.sh; do
  if [ -n "$candidate" ] && [ -f "$candidate" ]; then k8s_tool="$candidate"; break; fi
done
if [ -z "$k8s_tool" ]; then
  echo "k8s-test-cluster.sh not found: set DRAAS_K8S_TOOL to its path" >&2
  exit 1
fi
log "building the test Kubernetes cluster (cached after the first time)"
as_root bash "$k8s_tool" build
log "starting the test Kubernetes cluster"
kubeconfig_line=$(as_root bash "$k8s_tool" start | grep '^KUBECONFIG=' | tail -n 1)
export DRAAS_TEST_KUBECONFIG="${kubeconfig_line#KUBECONFIG=}"
[ -f "$DRAAS_TEST_KUBECONFIG" ] || { echo "the test cluster printed no kubeconfig" >&2; exit 1; }
stop_cluster() { as_root bash "$k8s_tool" stop >/dev/null 2>&1 || true; }
trap stop_cluster EXIT

# --- tools ------------------------------------------------------------------
if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

# schemathesis (PyPI) for the schema-driven fuzz run of the API
# (crates/draas/tests/api_fuzz.rs), in its own virtual environment.
venv="$HOME/.cache/draas/venv"
if ! "$venv/bin/st" --version >/dev/null 2>&1; then
  log "installing schemathesis into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==4.32.5"
fi
export DRAAS_SCHEMATHESIS="$venv/bin/st"

# --- gates and tests --------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "dependency rules (docs/ARCHITECTURE.md)"
# Each row: a crate, and the crates it must not depend on (normal
# dependencies, transitively). A failing `cargo tree` fails the check.
forbidden_backends='redis|redb|bollard|kube|k8s-openapi|drasi-lib|draas-(store|bus|redis|drasi|worker-process|worker-docker|worker-kubernetes)'
check_deps() {
  local crate="$1" forbidden="$2" tree
  if ! tree=$(cargo tree -p "$crate" -e normal --prefix none --locked); then
    echo "cargo tree -p $crate failed: the dependency rules could not be checked" >&2
    exit 1
  fi
  if printf '%s\n' "$tree" | grep -E "^($forbidden) " ; then
    echo "$crate must not depend on the crates above (see docs/ARCHITECTURE.md)" >&2
    exit 1
  fi
}
check_deps draas-core "$forbidden_backends|draas-(api|worker)|tokio|axum|reqwest"
check_deps draas-api "$forbidden_backends|draas-worker"
check_deps draas-worker "$forbidden_backends|draas-api"
check_deps draas-reconciler "$forbidden_backends|draas-(api|worker)|axum"
check_deps draas-client "$forbidden_backends|draas-(api|worker|reconciler)|axum|tokio-postgres"
# Adapters: each depends on draas-core and its client library only. The one
# exception, allowed in writing: draas-redis uses draas-bus's event fan-out.
check_deps draas-redis 'redb|bollard|kube|drasi-lib|draas-(store|drasi|api|worker|worker-process)'
check_deps draas-store 'redis|bollard|kube|drasi-lib|draas-(bus|redis|drasi|api|worker)'
check_deps draas-bus 'redis|redb|bollard|kube|drasi-lib|draas-(store|redis|drasi|api|worker)'
check_deps draas-worker-process "redis|redb|bollard|kube|drasi-lib|draas-(store|bus|redis|drasi|api)"
check_deps draas-worker-docker "redis|redb|kube|drasi-lib|draas-(store|bus|redis|drasi|api|worker-process)"
check_deps draas-worker-kubernetes "redis|redb|bollard|drasi-lib|openssl|native-tls|draas-(store|bus|redis|drasi|api|worker-process|worker-docker)"
log "tests"
# The dashboard's browser test keeps its screenshots here.
export DRAAS_ARTEFACTS="${DRAAS_ARTEFACTS:-$CARGO_TARGET_DIR/artefacts}"
cargo nextest run --workspace --locked "$@"
log "screenshots of the dashboard test: $DRAAS_ARTEFACTS"
