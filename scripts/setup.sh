#!/usr/bin/env bash
# Installs everything Ferry's build, demo and tests need on a Debian 12 machine.
# Idempotent: quick when everything is already there. Run as root (or with sudo).
set -euo pipefail

need_apt=()
want() { # want BINARY PACKAGE
  command -v "$1" >/dev/null 2>&1 || need_apt+=("$2")
}
want qemu-img qemu-utils
want qemu-system-x86_64 qemu-system-x86
want nbdinfo libnbd-bin
want fio fio
want rsync rsync
want psql postgresql
want pg_ctlcluster postgresql
want losetup mount
want mkfs.ext4 e2fsprogs
want openssl openssl
want make make
want sfdisk fdisk
want filefrag e2fsprogs
want blkdiscard util-linux
want setpriv util-linux
want node nodejs
want npm npm
# Debian's Chromium drives the dashboard's browser test (never a
# Playwright browser download).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)

if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # shellcheck disable=SC2068
  $SUDO apt-get install -y -qq --no-install-recommends ${need_apt[@]} >/dev/null
fi

if ! command -v go >/dev/null 2>&1; then
  if [ -x /usr/local/go/bin/go ]; then
    export PATH=/usr/local/go/bin:$PATH
  else
    echo "setup: Go is not installed; install Go 1.26 or newer (https://go.dev/dl) and re-run" >&2
    exit 1
  fi
fi

GOBIN_DIR="$(go env GOPATH)/bin"
mkdir -p "$GOBIN_DIR"
[ -x "$GOBIN_DIR/staticcheck" ] || go install honnef.co/go/tools/cmd/staticcheck@v0.7.0
[ -x "$GOBIN_DIR/versitygw" ] || go install github.com/versity/versitygw/cmd/versitygw@latest
# playwright-core for the dashboard test, at the version package-lock.json pins.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
[ -d "$ROOT/dashboard/e2e/node_modules/playwright-core" ] || npm ci --prefix "$ROOT/dashboard/e2e" --no-audit --no-fund >/dev/null
echo "setup: ok"
