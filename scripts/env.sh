# Shared set-up for scripts/eddy and scripts/test. Sourced, not executed.
# Installs the system packages the build needs when they are missing (Debian; root or sudo), and keeps
# the Cargo build cache outside the clone so that fresh clones and CI runs reuse it.
set -euo pipefail

EDDY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/eddy-target}"
mkdir -p "$CARGO_TARGET_DIR"

eddy_missing_packages() {
  local missing=()
  command -v cc >/dev/null 2>&1 || missing+=(gcc)
  command -v make >/dev/null 2>&1 || missing+=(make)
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)
  [ -e /usr/include/zlib.h ] || missing+=(zlib1g-dev)
  ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang-[0-9]*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
  command -v kcat >/dev/null 2>&1 || missing+=(kcat)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  echo "${missing[@]:-}"
}

eddy_install_packages() {
  local missing
  missing="$(eddy_missing_packages)"
  [ -z "$missing" ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if command -v apt-get >/dev/null 2>&1; then
    echo "eddy: installing system packages: $missing" >&2
    $sudo apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
  else
    echo "eddy: please install: $missing" >&2
    return 1
  fi
}

eddy_install_packages
cd "$EDDY_ROOT"
