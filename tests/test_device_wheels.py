"""The GPU machine's preparation (``scripts/device_wheels.py``) and its one command
(``scripts/gpu_check_device.sh``), run here with this project's wheel alone: the physics stack
comes from this machine's packages, which the real run brings as downloaded wheels."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check_device.sh"


@pytest.fixture(scope="module")
def wheels(benchmark_script):
    return benchmark_script("device_wheels", folder="scripts")


def test_the_carried_versions_are_the_suites_pins(wheels):
    pins = {}
    for spec in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        name, _, version = spec.partition("==")
        pins[name.lower().replace("_", "-")] = version
    carried = {name.lower().replace("_", "-"): v for name, v in wheels.WHEELS.items()}
    shared = carried.keys() & pins.keys()
    assert {"mujoco", "dm-control", "pyopengl", "gymnasium", "shimmy", "minari"} <= shared
    assert {name: carried[name] for name in shared} == {name: pins[name] for name in shared}


def _record_of(names_and_data: dict[str, bytes]) -> str:
    lines = []
    for name, data in names_and_data.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{name},sha256={digest},{len(data)}")
    return "\n".join(lines + ["pkg-1.0.dist-info/RECORD,,"]) + "\n"


def test_slimming_keeps_modules_drops_data_and_pip_installs_it(wheels, tmp_path):
    files = {
        "pkg/__init__.py": b"",
        "pkg/big/__init__.py": b"X = 1\n",
        "pkg/big/mesh.stl": b"\0" * 50_000,
        "pkg/big/deeper/model.xml": b"<mujoco/>" * 1000,
        "pkg/kept.xml": b"<mujoco/>",
        "pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n",
        "pkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                   b"Tag: py3-none-any\n",
    }
    path = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("pkg-1.0.dist-info/RECORD", _record_of(files))
    assert wheels.slim_wheel(path, ("pkg/big/",)) > 0
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        record = z.read("pkg-1.0.dist-info/RECORD").decode()
    kept = {n: d for n, d in files.items() if n not in ("pkg/big/mesh.stl",
                                                         "pkg/big/deeper/model.xml")}
    assert names == set(kept) | {"pkg-1.0.dist-info/RECORD"}
    assert record == _record_of(kept)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--target", str(target), str(path)], check=True, timeout=120)
    assert (target / "pkg" / "big" / "__init__.py").read_text() == "X = 1\n"
    assert (target / "pkg" / "kept.xml").exists()
    assert not (target / "pkg" / "big" / "mesh.stl").exists()


def test_only_a_folder_of_its_own_files_is_replaced(wheels, tmp_path):
    wheels._check_replaceable(tmp_path / "new")
    ours = tmp_path / "whl"
    ours.mkdir()
    for name in ("a-1.0-py3-none-any.whl", "libegl1_1.6.0-1_amd64.deb", "BUILT_FROM"):
        (ours / name).write_text("")
    wheels._check_replaceable(ours)
    (ours / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="holds other files \\(notes.txt\\)"):
        wheels._check_replaceable(ours)


def _device_script(tmp_path: Path, wheel_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(tmp_path / "out"), "MASKLAM_WHEELS": str(wheel_dir),
           "MASKLAM_GL": str(tmp_path / "no-gl"), "MASKLAM_SITE": str(tmp_path / "site"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(["bash", str(SCRIPT), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:  # the script's Python children go too, not only bash
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the device script ran over 600 s; its output ended with:\n{out[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_the_device_command_installs_the_suite_and_runs_the_check(wheels, tmp_path):
    wheel_dir = tmp_path / "whl"
    had_build = (ROOT / "build").exists()
    wheels.own_wheel(wheel_dir)
    assert (ROOT / "build").exists() == had_build  # built from a copy, the checkout untouched
    (wheel_dir / "BUILT_FROM").write_text(wheels.built_from() + "\n")
    done = _device_script(tmp_path, wheel_dir, "--preset", "smoke", "--device", "cpu",
                          "--dims", "8", "--steps", "1", "--workers", "1", "--no-compile")
    assert done.returncode == 0, done.stdout + done.stderr
    site = tmp_path / "site" / "masklam_bench"
    # The check ran on the installed copy, which holds the experts and the mapped packages.
    assert list((site / "experts" / "weights").glob("*.pt"))
    assert (site / "envs" / "floor_tiles.py").exists() and (site / "baselines" / "lapo.py").exists()
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [r["method"] for r in result["lam"]] == ["lapo", "masklam"] and "errors" not in result
    assert result["collect"]["frames_per_s"] > 0
    # No checkout beside the installed copy: the commit comes from the wheels' BUILT_FROM.
    assert result["code"]["git_commit"] is None
    assert result["code"]["built_from"] == (wheel_dir / "BUILT_FROM").read_text().strip()
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "wrote" in log and "LAM masklam d8" in log
    # The smoke run of the whole pipeline came first, its result file beside the check's.
    # (named +fp32 where the CPU has no bf16 instructions: the script runs in a fresh process)
    (smoke,) = (tmp_path / "out" / "smoke").glob("cheetah-run__masklam__d8__s0__smoke*.json")
    assert json.loads(smoke.read_text())["metrics"]["probe_nmse"] > 0
    assert log.index("probe NMSE") < log.index("LAM lapo d8")


def test_the_device_command_without_wheels_says_what_to_do(tmp_path):
    done = _device_script(tmp_path, tmp_path / "empty")
    assert done.returncode == 2
    assert "run python scripts/device_wheels.py first" in done.stdout
    assert (tmp_path / "out" / "gpu_check.log").exists()
