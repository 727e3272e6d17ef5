"""Shared test set-up: headless rendering before anything imports mujoco, and a fake expert."""

import os
import signal
import subprocess
import sys

os.environ.setdefault("MUJOCO_GL", "egl")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two test workers share the machine's cores: one thread each (before torch loads its
    # OpenMP; child processes inherit it).
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _float32_unless_asked():
    """Runs that ask for no precision train in float32 here, on every machine, so that their names
    (``+fp32``) and speed do not depend on whether the CPU has bf16 instructions (bf16 autocast
    is 9-77x slower without them); tests of bf16 ask for it (``bf16=True``)."""
    from masklam_bench import precision

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "fast_bf16", lambda device: not device.startswith("cpu"))
        yield


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A smoke dataset for cheetah, collected once for each module that asks for it (the
    pipeline's tests: ``test_runner.py``, ``test_resume.py``)."""
    root = tmp_path_factory.mktemp("data")
    from masklam_bench.collect import collect
    from masklam_bench.envs import env_id
    from masklam_bench.presets import get_preset

    data = get_preset("smoke").data
    from masklam_bench.experts import available_experts

    policy = "expert" if "cheetah-run" in available_experts() else "random"
    collect(env_id("cheetah-run", "id"), root / "smoke" / "cheetah-run",
            episodes=data.train_episodes + data.test_episodes, test_episodes=data.test_episodes,
            episode_steps=data.episode_steps, action_noise=data.action_noise, seed=0,
            workers=1, policy=policy, preset="smoke", progress=False)
    return root


def write_fake_cheetah_expert(path, *, hidden: int = 16, seed: int = 0,
                              eval_return: float = 1.0) -> str:
    """Write a small random cheetah-run actor in the shipped weights format; return its path.

    Collection tests use it so they need no trained expert; different ``seed`` or ``hidden``
    give different weights (and so a different sha256)."""
    gen = torch.Generator().manual_seed(seed)
    actor = {"w0": torch.randn(17, hidden, generator=gen), "b0": torch.zeros(hidden),
             "w1": torch.randn(hidden, 12, generator=gen), "b1": torch.zeros(12)}
    torch.save({"task": "cheetah-run", "obs_dim": 17, "act_dim": 6, "hidden": [hidden],
                "actor": actor, "eval_return_mean": float(eval_return)}, path)
    return str(path)


@pytest.fixture(scope="session")
def fake_cheetah_expert():
    """The writer of fake cheetah experts, as a fixture (``conftest`` is not importable)."""
    return write_fake_cheetah_expert


@pytest.fixture(scope="session")
def benchmark_script():
    """A loader of ``benchmarks/<name>.py`` (or ``<folder>/<name>.py``, e.g. ``scripts``) as a
    module (those folders are not packages)."""
    import importlib.util
    from pathlib import Path

    def load(name: str, folder: str = "benchmarks"):
        path = Path(__file__).resolve().parents[1] / folder / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def run_python(code: str, timeout: float, stdin: str | None = None,
               cwd: str | None = None, script: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python -c code`` (or, with ``script``, that file: spawned workers re-import a
    ``__main__`` only from a file) in a fresh interpreter; fail the test if it outlives
    ``timeout``.

    On a timeout the whole process group is killed, so workers a hung run started (e.g. forked
    vector-env workers) do not outlive the test.
    """
    args = [sys.executable, script] if script is not None else [sys.executable, "-c", code]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            start_new_session=True)
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"still running after {timeout} s (killed); its output ended with:\n"
                    f"{out[-1000:]}\n{err[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="session")
def fresh_python():
    """:func:`run_python`, as a fixture."""
    return run_python


_KILL_ON_WRITE = """
import os, pathlib, signal
_real_write_bytes, _writes = pathlib.Path.write_bytes, []

def _write_bytes(self, data):  # write number {n} of {name}: half of it, then SIGKILL
    if self.name.startswith(".{name}."):  # the temporary file fileio renames into place
        _writes.append(self)
        if len(_writes) == {n}:
            with open(self, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
    return _real_write_bytes(self, data)

pathlib.Path.write_bytes = _write_bytes
"""


def kill_on_write(name: str, n: int = 1) -> str:
    """Code to put first in a :func:`run_python` child: its ``n``-th atomic write of a file
    called ``name`` writes half its bytes, then the process is killed with SIGKILL (no cleanup
    runs, as after a power cut or the OOM killer)."""
    return _KILL_ON_WRITE.format(name=name, n=n)


@pytest.fixture(scope="session")
def killed_mid_write():
    """:func:`kill_on_write`, as a fixture."""
    return kill_on_write
