#!/usr/bin/env bash
# Installs every Debian package that kvsketch's build, tests, benchmarks and ARM
# cross-builds need. Idempotent: a second run installs nothing new.
# Usage: sudo bash toolchains/install-deps.sh   (root needed for apt-get)
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

# Cross-architecture libraries (Highway, oneTBB, fmt) for the Raspberry Pi builds.
for arch in arm64 armhf; do
  if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
    $SUDO dpkg --add-architecture "$arch"
  fi
done

NATIVE_PKGS=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  clang-format-14 clang-14 libclang-rt-14-dev libfuzzer-14-dev
  libhwy-dev libtbb-dev doctest-dev libcli11-dev nlohmann-json3-dev libfmt-dev
  libbenchmark-dev libxxhash-dev python3 python3-matplotlib
  python3-dev python3-numpy python3-pytest python3-setuptools python3-wheel
  python3-pip python3-venv pybind11-dev python3-pybind11
  g++-aarch64-linux-gnu g++-arm-linux-gnueabihf qemu-user
)
CROSS_PKGS=(
  libhwy-dev:arm64 libtbb-dev:arm64 libfmt-dev:arm64 libxxhash-dev:arm64
  libhwy-dev:armhf libtbb-dev:armhf libfmt-dev:armhf libxxhash-dev:armhf
)

missing=()
for p in "${NATIVE_PKGS[@]}" "${CROSS_PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#NATIVE_PKGS[@]} native and ${#CROSS_PKGS[@]} cross packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
# A mirror in the middle of a sync (or an unrelated third-party source) can make
# `apt-get update` fail transiently; retry, then let the install itself decide.
for attempt in 1 2 3; do
  if $SUDO apt-get update -q; then break; fi
  echo "install-deps: apt-get update failed (attempt $attempt), retrying" >&2
  sleep $((attempt * 5))
done
for attempt in 1 2 3; do
  if $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"; then
    exit 0
  fi
  echo "install-deps: apt-get install failed (attempt $attempt), retrying" >&2
  sleep $((attempt * 5))
  $SUDO apt-get update -q || true
done
echo "install-deps: could not install: ${missing[*]}" >&2
exit 1
