#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian machine for building ftx offline: Bazel 4.2.3 and
# the system libraries the WORKSPACE overlays (third_party/). Quiet when everything is
# already installed; exits non-zero with a clear message when something cannot be.
set -uo pipefail

packages=(
  g++
  bazel-bootstrap
  bazel-platforms
  libabsl-dev
  libeigen3-dev
  libhwy-dev
  libgtest-dev
  libgmock-dev
  libbenchmark-dev
  nlohmann-json3-dev
)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$package")
  fi
done

if ((${#missing[@]} > 0)); then
  echo "ftx setup: installing ${missing[*]}"
  sudo_cmd=()
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo_cmd=(sudo)
    else
      echo "ftx setup: need root (or sudo) to install: ${missing[*]}" >&2
      exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! "${sudo_cmd[@]}" apt-get update -qq >/tmp/ftx-setup-apt.log 2>&1; then
    echo "ftx setup: 'apt-get update' failed; see /tmp/ftx-setup-apt.log" >&2
    exit 1
  fi
  if ! "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >>/tmp/ftx-setup-apt.log 2>&1; then
    echo "ftx setup: could not install ${missing[*]}; see /tmp/ftx-setup-apt.log" >&2
    exit 1
  fi
fi

if ! command -v bazel >/dev/null 2>&1; then
  echo "ftx setup: bazel is still not on PATH after installing bazel-bootstrap" >&2
  exit 1
fi
if [[ ! -d /usr/share/bazel/tools/platforms ]]; then
  echo "ftx setup: /usr/share/bazel/tools/platforms is missing (package bazel-platforms)" >&2
  exit 1
fi
if [[ ! -x /usr/local/cuda/bin/nvcc ]]; then
  echo "ftx setup: note: no CUDA toolkit at /usr/local/cuda; --config=cuda builds will fail," \
    "CPU builds are unaffected" >&2
fi
exit 0
