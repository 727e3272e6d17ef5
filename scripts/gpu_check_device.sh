#!/usr/bin/env bash
# masklam-bench gpu-check on a lent GPU machine whose Python lacks the physics stack.
#
# Here, at the commit to measure (needs PyPI and Debian):
#                                        python scripts/device_wheels.py   # writes .whl/ and .gl/
# There, through the device tool:       bash scripts/gpu_check_device.sh   carry: .whl, .gl
#
# It unpacks the EGL loader if the machine has none, installs the carried wheels into a folder of
# its own (the machine's packages stay as they are: nothing is upgraded or removed), and runs the
# check from outside the checkout, so that Python imports the installed suite (the checkout's
# envs/ and baselines/ only become masklam_bench.envs and .baselines when installed). Everything
# it prints goes to gpu_check.log beside gpu_check.json in $OUT (default: results/, which git
# ignores), after a smoke-preset run of the whole pipeline (its result file in $OUT/smoke/).
# Extra arguments go to gpu-check (e.g. --steps 50); MAX_MINUTES (default 5) bounds when
# a measurement may start; MASKLAM_WHEELS, MASKLAM_GL and MASKLAM_SITE move the folders (the tests
# use them).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${OUT:-$root/results}" && cd "${OUT:-$root/results}" && pwd)"
site="${MASKLAM_SITE:-/tmp/masklam-site}"
wheels="${MASKLAM_WHEELS:-$root/.whl}"
gl="${MASKLAM_GL:-$root/.gl}"

egl_loader() {
  # Read ldconfig's list whole first: grep -q closing the pipe early would fail it under pipefail.
  local libs
  libs="$(ldconfig -p 2>/dev/null || true)"
  if grep -q 'libEGL\.so\.1' <<<"$libs" && grep -q 'libOpenGL\.so\.0' <<<"$libs"; then
    return
  fi
  if ! ls "$gl"/*.deb >/dev/null 2>&1; then
    echo "no libEGL.so.1 or libOpenGL.so.0 here and no .gl/ carried: collection will fail" \
      "(python scripts/device_wheels.py fetches them)"
    return
  fi
  echo "no libEGL.so.1 or libOpenGL.so.0 here: unpacking $gl"
  for f in "$gl"/*.deb; do dpkg -x "$f" / || echo "dpkg -x $f failed"; done
  ldconfig || echo "ldconfig failed"
}

main() {
  egl_loader
  local vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  if [ -f "$vendor" ] && [ -z "${__EGL_VENDOR_LIBRARY_FILENAMES:-}" ]; then
    export __EGL_VENDOR_LIBRARY_FILENAMES="$vendor"
  fi
  echo "EGL: vendor file ${__EGL_VENDOR_LIBRARY_FILENAMES:-none}; libraries:" \
    "$( (ldconfig -p 2>/dev/null || true) | grep -oE 'lib(EGL|OpenGL|EGL_nvidia|cuda)\.so[.0-9]*' \
        | sort -u | tr '\n' ' ')"
  if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
    echo "no wheels in $wheels: run python scripts/device_wheels.py first and carry .whl" >&2
    return 2
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$wheels"/*.whl || return 1
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" MUJOCO_GL=egl PYTHONUNBUFFERED=1
  MASKLAM_BUILT_FROM="$(cat "$wheels/BUILT_FROM" 2>/dev/null || true)"
  export MASKLAM_BUILT_FROM
  local here
  here="$(git -C "$root" rev-parse HEAD 2>/dev/null || true)"
  echo "masklam-bench built from ${MASKLAM_BUILT_FROM:-an unknown commit}"
  if [ -n "$here" ] && [ -n "$MASKLAM_BUILT_FROM" ] && [ "${MASKLAM_BUILT_FROM%+dirty}" != "$here" ]; then
    echo "warning: the checkout here is at $here; the wheels were built from another commit"
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  # The whole pipeline once at the smoke preset on the machine's default device (CUDA there):
  # collection, LAM, probe, latent BC, decoder and rollouts, in seconds; its result file comes
  # back in smoke/. A failure is reported and the check goes on.
  # (run from /tmp with -P: neither the checkout nor stray files in /tmp shadow a module)
  local scratch
  scratch="$(mktemp -d)"
  (cd /tmp && timeout 300 python3 -P -m masklam_bench.cli run --method masklam --preset smoke \
    --dims 8 --runs-root "$scratch/runs" --data-root "$scratch/data" --out "$out/smoke") \
    || echo "the smoke run failed (exit $?); going on with gpu-check"
  rm -rf "$scratch"  # its dataset and run folder; the result file is in $out/smoke
  (cd /tmp && python3 -P -m masklam_bench.cli gpu-check --out "$out/gpu_check.json" \
    --max-minutes "${MAX_MINUTES:-5}" "$@")
}

main "$@" 2>&1 | tee "$out/gpu_check.log"
