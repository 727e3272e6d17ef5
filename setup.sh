#!/usr/bin/env bash
# One-time set-up of a fresh Debian machine (Python 3.11): headless rendering libraries and the
# pinned Python stack. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

# Mesa's EGL (software rendering) for MUJOCO_GL=egl.
debs=(libegl1 libgl1 libglvnd0 libegl-mesa0 libgl1-mesa-dri libgles2)
missing=()
for d in "${debs[@]}"; do
    dpkg -s "$d" >/dev/null 2>&1 || missing+=("$d")
done
if ((${#missing[@]})); then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# torch is pinned exactly (pyproject.toml): a range would pull several GB of CUDA wheels.
# setuptools >= 70.1 builds wheels by itself (needed for the no-isolation build below).
python3 -m pip install -q "setuptools==84.2.1"
python3 -m pip install -q -e ".[dev]"
# SAM 2 is a source package whose build wants torch: build it against the pinned torch above
# (no build isolation) and without its optional CUDA extension.
SAM2_BUILD_CUDA=0 python3 -m pip install -q --no-build-isolation -e ".[dev,sam2]"
echo "masklam-bench is installed; rendering uses MUJOCO_GL=egl."
