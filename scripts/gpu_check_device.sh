#!/usr/bin/env bash
# masklam-bench gpu-check on a lent GPU machine whose Python lacks the physics stack.
#
# Here, once (needs PyPI and Debian):   python scripts/device_wheels.py     # writes .whl/ and .gl/
# There, through the device tool:       bash scripts/gpu_check_device.sh     carry: .whl, .gl
#
# It unpacks the EGL loader if the machine has none, installs the carried wheels into a folder of
# its own (the machine's packages stay as they are: nothing is upgraded or removed), and runs the
# check from outside the checkout, so that Python imports the installed suite (the checkout's
# envs/ and baselines/ only become masklam_bench.envs and .baselines when installed). Everything
# it prints goes to $OUT/gpu_check.log beside $OUT/gpu_check.json. Extra arguments go to
# gpu-check (e.g. --steps 50); MAX_MINUTES (default 7) bounds when a measurement may start;
# MASKLAM_WHEELS, MASKLAM_GL and MASKLAM_SITE move the folders (the tests use them).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${OUT:-$root}" && cd "${OUT:-$root}" && pwd)"
site="${MASKLAM_SITE:-/tmp/masklam-site}"
wheels="${MASKLAM_WHEELS:-$root/.whl}"
gl="${MASKLAM_GL:-$root/.gl}"

main() {
  if ! ldconfig -p | grep -q 'libEGL\.so\.1'; then
    if [ -d "$gl" ]; then
      echo "no libEGL.so.1 here: unpacking $gl"
      for f in "$gl"/*.deb; do dpkg -x "$f" /; done
      ldconfig
    else
      echo "no libEGL.so.1 here and no .gl/ carried: collection will fail (see scripts/device_wheels.py)"
    fi
  fi
  local vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  if [ -f "$vendor" ] && [ -z "${__EGL_VENDOR_LIBRARY_FILENAMES:-}" ]; then
    export __EGL_VENDOR_LIBRARY_FILENAMES="$vendor"
  fi
  if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
    echo "no wheels in $wheels: run python scripts/device_wheels.py first and carry .whl" >&2
    return 2
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$wheels"/*.whl || return 1
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" MUJOCO_GL=egl PYTHONUNBUFFERED=1
  MASKLAM_BUILT_FROM="$(cat "$wheels/BUILT_FROM" 2>/dev/null || true)"
  export MASKLAM_BUILT_FROM
  echo "masklam-bench built from ${MASKLAM_BUILT_FROM:-an unknown commit}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  (cd /tmp && python3 -m masklam_bench.cli gpu-check --out "$out/gpu_check.json" \
    --max-minutes "${MAX_MINUTES:-7}" "$@")
}

main "$@" 2>&1 | tee "$out/gpu_check.log"
