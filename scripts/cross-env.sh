# shellcheck shell=bash disable=SC2034  # sourced: the variables are for the scripts that source it
# Shared by scripts/cross-build, scripts/cross-check and scripts/check-deb --target (sourced,
# after `cd` to the checkout): `cross_target NAME` sets where a target's toolchain, sysroot and
# build live; `cross_chroot CMD...` runs a command in the build chroot.
#
#   $ONNXDTEST_CACHE/cross/                 (ONNXDTEST_CROSS overrides; default .cache/cross)
#     forky-amd64/                          Debian testing chroot: rustc/cargo 1.97, libstd-rust-dev
#                                           for arm64 and armhf, the gcc cross compilers, qemu-user,
#                                           dpkg-dev (dpkg-shlibdeps for the packages' Depends)
#     sysroot-bullseye-arm64/, -armhf/      the target's glibc 2.31 (Debian 11) to link against
#                                           and to run under qemu: the oldest glibc the binaries need
#     cargo-home/                           the chroot cargo's registry
#     target/                               its target dir (ONNXDTEST_CROSS_TARGET_DIR overrides)
#     ort-arm64/                            libonnxruntime.so from the PyPI manylinux aarch64 wheel
ONNXDTEST_CACHE="${ONNXDTEST_CACHE:-$PWD/.cache}"
CROSS_DIR="${ONNXDTEST_CROSS:-$ONNXDTEST_CACHE/cross}"
CROSS_ROOT="$CROSS_DIR/forky-amd64"
CROSS_GLIBC=2.31                        # bullseye's: JetPack 5 (Ubuntu 20.04) has the same
CROSS_TARGET_DIR="${ONNXDTEST_CROSS_TARGET_DIR:-$CROSS_DIR/target}"
CROSS_PROFILE="${ONNXDTEST_CROSS_PROFILE:-dist}"
# The Debian mirror may serve a frozen snapshot whose Release files are past Valid-Until.
CROSS_APT_OPT='Acquire::Check-Valid-Until "false"'
CROSS_MIRROR="${ONNXDTEST_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

# cross_target NAME: aarch64 | aarch64-unknown-linux-gnu | armv7 | armv7-unknown-linux-gnueabihf.
cross_target() {
  case "${1:-}" in
    aarch64 | aarch64-unknown-linux-gnu)
      CROSS_TRIPLE=aarch64-unknown-linux-gnu CROSS_GNU=aarch64-linux-gnu CROSS_DEB_ARCH=arm64
      CROSS_QEMU=qemu-aarch64 CROSS_ELF='ELF 64-bit LSB .*ARM aarch64'
      CROSS_FEATURES=() CROSS_VARIANT="" ;;   # default features: ONNX Runtime (loaded at run time) + tract
    armv7 | armv7-unknown-linux-gnueabihf)
      CROSS_TRIPLE=armv7-unknown-linux-gnueabihf CROSS_GNU=arm-linux-gnueabihf CROSS_DEB_ARCH=armhf
      CROSS_QEMU=qemu-arm CROSS_ELF='ELF 32-bit LSB .*ARM, EABI5'
      CROSS_FEATURES=(--no-default-features) CROSS_VARIANT=tract ;;   # tract only: no ONNX Runtime for armv7
    *)
      printf 'unknown target "%s": expected aarch64 or armv7 (or aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf)\n' "${1:-}" >&2
      return 2 ;;
  esac
  CROSS_SYSROOT="$CROSS_DIR/sysroot-bullseye-$CROSS_DEB_ARCH"
  CROSS_BIN="$CROSS_TARGET_DIR/$CROSS_TRIPLE/$CROSS_PROFILE/onnxd"
  CROSS_DEB_DIR="$CROSS_TARGET_DIR/$CROSS_TRIPLE/debian"
}

# cross_chroot [VAR=VALUE...] CMD ARGS...: runs CMD in the build chroot, in the checkout, with a
# clean environment (PATH, HOME, CARGO_HOME, CARGO_TARGET_DIR, then the VAR=VALUEs). It runs in
# a private mount namespace, so its mounts vanish when it ends, however it ends: /proc, /dev, the
# checkout, the cross cache, the target dir and the folders in $CROSS_EXTRA_BINDS (colon-
# separated) at their own paths; the host's CA bundle (the chroot trusts what the host trusts,
# e.g. a proxy's own CA, for crates.io); the host's cargo-deb (scripts/setup-test installs it).
# After cross_target, the chroot's dpkg metadata of libc6:ARCH (symbols, shlibs) is replaced by
# the sysroot's bullseye one: the binaries link against that glibc, so dpkg-shlibdeps (cargo deb's
# $auto) then states the libc6 they really need (forky's symbols file would say >= 2.34 for
# anything that links libpthread, as the 2.34 merge moved those symbols).
cross_chroot() {
  [ -x "$CROSS_ROOT/usr/bin/cargo" ] || { printf 'no build chroot at %s: run scripts/cross-build\n' "$CROSS_ROOT" >&2; return 1; }
  if [ -n "${CROSS_SYSROOT:-}" ] && [ -f "$CROSS_SYSROOT/.onnxd-dpkg/libc6/symbols" ]; then
    local file
    for file in symbols shlibs; do
      cp "$CROSS_SYSROOT/.onnxd-dpkg/libc6/$file" "$CROSS_ROOT/var/lib/dpkg/info/libc6:$CROSS_DEB_ARCH.$file"
    done
  fi
  # shellcheck disable=SC2016  # the inner script expands its own variables
  CROSS_BINDS="$PWD:$CROSS_DIR:$CROSS_TARGET_DIR${CROSS_EXTRA_BINDS:+:$CROSS_EXTRA_BINDS}" \
  CROSS_CARGO_DEB="$(command -v cargo-deb || true)" \
  unshare --mount --propagation private -- bash -euo pipefail -c '
    root=$1; shift
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    ca=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
    if [ -f "$ca" ]; then mount --bind "$ca" "$root/etc/ssl/certs/ca-certificates.crt"; fi
    if [ -n "$CROSS_CARGO_DEB" ]; then
      touch "$root/usr/local/bin/cargo-deb"
      mount --bind "$CROSS_CARGO_DEB" "$root/usr/local/bin/cargo-deb"
    fi
    IFS=: read -ra dirs <<<"$CROSS_BINDS"
    for dir in "${dirs[@]}"; do mkdir -p "$root$dir"; mount --bind "$dir" "$root$dir"; done
    exec chroot "$root" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
      /bin/sh -c "cd \"\$0\" && exec env \"\$@\"" "$@"
  ' bash "$CROSS_ROOT" "$PWD" CARGO_HOME="$CROSS_DIR/cargo-home" CARGO_TARGET_DIR="$CROSS_TARGET_DIR" \
    CARGO_TERM_COLOR=never "$@"
}

# The highest GLIBC_x.y symbol version an ELF file needs (empty if none).
cross_glibc_needed() {
  readelf -W --dyn-syms "$1" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1
}
