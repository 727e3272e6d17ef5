#!/usr/bin/env bash
# One-time set-up of a fresh Debian machine (Python 3.11): headless rendering libraries and the
# pinned Python stack. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

# Mesa's EGL (software rendering) for MUJOCO_GL=egl, and pip where the system Python lacks it.
debs=(libegl1 libgl1 libglvnd0 libegl-mesa0 libgl1-mesa-dri libgles2)
missing=()
for d in "${debs[@]}"; do
    dpkg -s "$d" >/dev/null 2>&1 || missing+=("$d")
done
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if ((${#missing[@]})); then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's own Python refuses pip installs outside a virtual environment (PEP 668); this machine
# is set up for the suite, so allow them (older pips ignore the variable).
export PIP_BREAK_SYSTEM_PACKAGES=1
# torch is pinned exactly (pyproject.toml): a range would pull several GB of CUDA wheels. PyPI's
# Linux wheel of torch is the CUDA build; for the CPU-only build set MASKLAM_TORCH_INDEX_URL, e.g.
# https://download.pytorch.org/whl/cpu, and torch comes from there first.
if [ -n "${MASKLAM_TORCH_INDEX_URL:-}" ]; then
    python3 -m pip install -q "torch==2.13.0" --index-url "$MASKLAM_TORCH_INDEX_URL"
fi
# setuptools >= 70.1 builds wheels by itself (needed for the no-isolation build below).
python3 -m pip install -q "setuptools==84.2.1"
# The cluster extra (Ray and submitit, for `masklam-bench sweep`) adds about 300 MB.
python3 -m pip install -q -e ".[dev,cluster]"
# SAM 2 is a source package whose build wants torch: build it against the pinned torch above
# (no build isolation) and without its optional CUDA extension.
SAM2_BUILD_CUDA=0 python3 -m pip install -q --no-build-isolation -e ".[dev,cluster,sam2]"
echo "masklam-bench is installed; rendering uses MUJOCO_GL=egl."
