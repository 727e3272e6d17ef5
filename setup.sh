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
python3 -m pip install -q -e ".[dev]"
echo "masklam-bench is installed; rendering uses MUJOCO_GL=egl."
