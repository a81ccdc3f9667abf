#!/usr/bin/env bash
# Installs what building DRaaS needs on a fresh Debian machine, when it is
# missing (scripts/run.sh and scripts/test.sh call it):
#   - pkg-config and libssl-dev: the postgres plugins' TLS (openssl-sys);
#   - protobuf-compiler and libprotobuf-dev: the grpc source and reaction
#     generate their code from .proto files when they build (protoc and the
#     well-known types);
#   - libclang-dev: the RocksDB index (persistIndex) generates its bindings
#     with bindgen; RocksDB itself is C++, built by g++.
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
dpkg -s libprotobuf-dev >/dev/null 2>&1 || missing+=(libprotobuf-dev)
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> installing build dependencies: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
