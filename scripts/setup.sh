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
# The fault-injection suite (faults/): packet loss with nftables, slow links with tc.
want nft nftables
want tc iproute2
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
want pgrep procps
want node nodejs
want npm npm
# Debian's Chromium drives the dashboard's browser test (never a
# Playwright browser download).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
# The launch tests' bootable test image (internal/testimage): busybox-static,
# SYSLINUX on a FAT boot partition, and the kernel package downloaded below.
want busybox busybox-static
want syslinux syslinux
want mcopy mtools
want mkfs.vfat dosfstools
# UEFI launches (qemu target, boot mode UEFI) need OVMF; the UEFI test image
# (internal/testimage.BuildUEFI) carries a GRUB EFI image from grub-mkstandalone.
[ -f /usr/share/OVMF/OVMF_CODE.fd ] && [ -f /usr/share/OVMF/OVMF_VARS.fd ] || need_apt+=(ovmf)
[ -d /usr/lib/grub/x86_64-efi ] || need_apt+=(grub-efi-amd64-bin)
[ -f /usr/lib/syslinux/mbr/mbr.bin ] && [ -f /usr/lib/syslinux/modules/bios/ldlinux.c32 ] || need_apt+=(syslinux-common)
# Conversion of launched guests (package libguestfs): guestfish builds its
# appliance from a host kernel in /boot, which containers often lack.
want guestfish libguestfs-tools
ls /boot/vmlinuz-* >/dev/null 2>&1 || need_apt+=(linux-image-amd64)
# The libvirt launch target (package libvirt) talks to libvirtd over its
# socket; its tests start libvirtd and virtlogd when they are not running.
want libvirtd libvirt-daemon-system
want virtlogd libvirt-daemon-system
want virsh libvirt-clients

if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # shellcheck disable=SC2068
  $SUDO apt-get install -y -qq --no-install-recommends ${need_apt[@]} >/dev/null
fi

# Debian's kernel for the test image, unpacked by the tests themselves so
# this machine's /boot is left alone.
KDEB_DIR=/var/cache/ferry/testimage
if ! ls "$KDEB_DIR"/linux-image-*-amd64_*_amd64.deb >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  kpkg="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')"
  if [ -z "$kpkg" ]; then
    $SUDO apt-get update -qq
    kpkg="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')"
  fi
  $SUDO mkdir -p "$KDEB_DIR"
  (cd "$KDEB_DIR" && $SUDO apt-get download -qq "$kpkg" 2>/dev/null) ||
    { $SUDO apt-get update -qq && (cd "$KDEB_DIR" && $SUDO apt-get download -qq "$kpkg" 2>/dev/null); } || {
      echo "setup: could not download $kpkg into $KDEB_DIR" >&2; exit 1; }
fi
# Debian's QEMU guest agent for the test image (run a script in the guest):
# the builder copies qemu-ga and the host's copies of its libraries.
if ! ls "$KDEB_DIR"/qemu-guest-agent_*_amd64.deb >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO mkdir -p "$KDEB_DIR"
  (cd "$KDEB_DIR" && $SUDO apt-get download -qq qemu-guest-agent 2>/dev/null) || {
    echo "setup: could not download qemu-guest-agent into $KDEB_DIR" >&2; exit 1; }
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
[ -x "$GOBIN_DIR/govulncheck" ] || go install golang.org/x/vuln/cmd/govulncheck@v1.9.0
# Toxiproxy (latency, resets and stalls for the fault-injection suite); its
# command is named "server", so it is installed as toxiproxy-server.
if [ ! -x "$GOBIN_DIR/toxiproxy-server" ]; then
  tp="$(mktemp -d)"
  GOBIN="$tp" go install github.com/Shopify/toxiproxy/v2/cmd/server@latest
  mv "$tp/server" "$GOBIN_DIR/toxiproxy-server"
  rmdir "$tp"
fi
# playwright-core for the dashboard test, at the version package-lock.json pins.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
[ -d "$ROOT/dashboard/e2e/node_modules/playwright-core" ] || npm ci --prefix "$ROOT/dashboard/e2e" --no-audit --no-fund >/dev/null
echo "setup: ok"
