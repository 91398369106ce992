#!/usr/bin/env bash
# Installs everything dsmn-host needs on a fresh Debian machine, and nothing twice:
# the Arm cross toolchain and QEMU (apt), the CPU-only torch wheel, the pinned ML stack,
# and this package in editable mode. Safe to run before every command.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

apt_pkgs=(gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib qemu-system-arm cmake clang)
apt_pkgs+=(openocd gdb-multiarch)  # dsmn-host flash: OpenOCD 0.12 and the GDB for any GDB server
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
# CMSIS-DSP C sources for the on-device front end (firmware/frontend): the cmsisdsp sdist from
# PyPI, hash-checked, unpacked (Include/, PrivateInclude/, Source/, LICENSE) into a cache that
# dsmn_host.target.frontend.cmsis_dsp_dir() finds. Unpacked beside and renamed, so a killed bootstrap
# never leaves a half tree that looks complete.
cmsis_ver=1.10.3
cmsis_sha=307d32298faa7c58db912851027fce35f886fec7eb1a27c4b309ce1a97f47519
cmsis_dir="${DSMN_CACHE:-$HOME/.cache/dsmn-host}/cmsisdsp-$cmsis_ver"
if [ ! -f "$cmsis_dir/Include/arm_math.h" ]; then
  tmp="$(mktemp -d)"
  # pip prepares the sdist's metadata even for a download; with build isolation it fetches its own
  # setuptools + wheel (a fresh Python may have setuptools without wheel: bdist_wheel then fails).
  "$PY" -m pip download -q --no-deps --no-binary cmsisdsp "cmsisdsp==$cmsis_ver" -d "$tmp"
  echo "$cmsis_sha  $tmp/cmsisdsp-$cmsis_ver.tar.gz" | sha256sum -c --quiet
  tar -xzf "$tmp/cmsisdsp-$cmsis_ver.tar.gz" -C "$tmp" "cmsisdsp-$cmsis_ver/Include" \
    "cmsisdsp-$cmsis_ver/PrivateInclude" "cmsisdsp-$cmsis_ver/Source" "cmsisdsp-$cmsis_ver/LICENSE"
  mkdir -p "$(dirname "$cmsis_dir")"
  rm -rf "$cmsis_dir.partial"
  mv "$tmp/cmsisdsp-$cmsis_ver" "$cmsis_dir.partial" && mv "$cmsis_dir.partial" "$cmsis_dir"
  rm -rf "$tmp"
fi

stamp="$here/.bootstrap-stamp"
want="$(cat "$here/requirements.txt" "$here/pyproject.toml" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && command -v dsmn-host >/dev/null; then
  exit 0
fi
# torch first and alone: the CPU wheel on local disk; anything asking for torch later is satisfied.
"$PY" -m pip install -q "torch==2.13.0"
"$PY" -m pip install -q -r "$here/requirements.txt"
# tf-keras would pull a second TensorFlow; onnx2tf only needs its Python code.
"$PY" -m pip install -q --no-deps "tf-keras==2.21.0"
"$PY" -m pip install -q --no-deps -e "$here"
echo "$want" > "$stamp"

