"""``masklam-bench sweep``: the grid, its checks, skipping, failures, local Ray and submitit."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import signal
import textwrap
from pathlib import Path

import pytest

from masklam_bench import cli, interrupts, sweep
from masklam_bench.runner import TIME_DEPENDENT_METRICS

HAS_RAY = importlib.util.find_spec("ray") is not None
HAS_SUBMITIT = importlib.util.find_spec("submitit") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="ray is not installed (pip install .[cluster])")
needs_submitit = pytest.mark.skipif(not HAS_SUBMITIT,
                                    reason="submitit is not installed (pip install .[cluster])")

BROKEN_METHOD = '''
import os

from masklam_bench.baselines.lapo import LAPO


class Broken(LAPO):
    """A plug-in method that fails when it is built."""

    name = "broken"

    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"broken on purpose at niceness {os.nice(0)}")
'''
"""A plug-in module whose method raises: its runs fail, the others must not. Its message tells
the niceness its run had."""
BROKEN = "sweep_broken_lam:Broken"
"""``module:Class`` of the failing plug-in."""


def _args(argv: list[str]):
    """Parse ``masklam-bench`` arguments."""
    return cli._build_parser().parse_args(argv)


def _grid(argv: list[str]) -> list:
    """The expanded grid of a ``sweep`` command line."""
    args = _args(argv)
    return sweep.expand_grid(sweep.grid_values(args), sweep.options_from_args(args))


def _paths(root: Path, data: Path | None = None) -> list[str]:
    """Storage flags of a sweep under ``root``."""
    return ["--data-root", str(data or root / "data"), "--runs-root", str(root / "runs"),
            "--out", str(root / "out"), "--no-leaderboard"]


def _metrics(path: Path) -> dict:
    """A result file's metrics, less those that time the machine."""
    metrics = json.loads(path.read_text())["metrics"]
    return {k: v for k, v in metrics.items() if k not in TIME_DEPENDENT_METRICS}


# ------------------------------------------------------------------------------------------------
# The grid, without running anything
# ------------------------------------------------------------------------------------------------
GRID_TOML = """
methods = ["lapo", "bc-labels", "masklam"]
envs = ["cheetah", "walker"]
dims = [8, 16]
seeds = [0, 1]
mask-sources = ["exact", "dilate-2"]
preset = "smoke"

[set]
train.lam_steps = 5
"""


def test_grid_from_flags_and_from_a_file_agree(tmp_path, capsys):
    flags = ["sweep", "--methods", "lapo,bc-labels,masklam", "--envs", "cheetah,walker",
             "--dims", "8,16", "--seeds", "0,1", "--mask-sources", "exact,dilate-2",
             "--preset", "smoke", "--set", "train.lam_steps=5"]
    (tmp_path / "grid.toml").write_text(GRID_TOML)
    from_flags = _grid(flags)
    from_file = _grid(["sweep", "--grid", str(tmp_path / "grid.toml")])
    assert [dataclasses.asdict(c) for c in from_flags] == [dataclasses.asdict(c)
                                                           for c in from_file]
    names = [c.run_name for c in from_flags]
    # lapo 2 tasks x 2 dims x 2 seeds; bc-labels has no latent dim; masklam twice for masks.
    assert len(names) == 8 + 4 + 16 == len(set(names))
    assert any(n.startswith("cheetah-run__bc-labels__s0__smoke+fp32+set-") for n in names)
    assert sum("[dilate-2]" in n for n in names) == 8
    assert "lapo trains without agent masks" in capsys.readouterr().out
    # A flag given with --grid wins over the file.
    assert len(_grid(["sweep", "--grid", str(tmp_path / "grid.toml"), "--methods", "lapo"])) == 8


def test_set_at_the_presets_own_value_is_the_presets_run():
    """``--set`` to the value the preset already has changes nothing, so it names no variant."""
    base = ["sweep", "--methods", "lapo", "--envs", "cheetah", "--dims", "8", "--preset", "smoke"]
    plain = [c.run_name for c in _grid(base)]
    assert plain == ["cheetah-run__lapo__d8__s0__smoke+fp32"]
    assert [c.run_name for c in _grid(base + ["--set", "train.lam_steps=3",
                                              "--set", "train.lam_lr=0.0006"])] == plain
    changed = _grid(base + ["--set", "train.lam_steps=3", "--set", "train.lam_steps=4"])
    assert changed[0].overrides == {"train.lam_steps": 4}
    assert changed[0].run_name.startswith("cheetah-run__lapo__d8__s0__smoke+fp32+set-")


@pytest.mark.parametrize("grid", sorted((Path(__file__).parents[1] / "sweeps").glob("*.toml")),
                         ids=lambda p: p.name)
def test_shipped_grid_files_expand(grid):
    assert _grid(["sweep", "--grid", str(grid)])


BAD_GRIDS = [
    (["--methods", "lapp"], ["--method", "lapp"]),
    (["--methods", "lapo", "--envs", "cheetah,ant"], ["--method", "lapo", "--envs", "cheetah,ant"]),
    (["--methods", "lapo", "--dims", "64,,x"], ["--method", "lapo", "--dims", "64,,x"]),
    (["--methods", "lapo", "--dims", "99999999999"], ["--method", "lapo", "--dims", "99999999999"]),
    (["--methods", "lapo", "--seeds", "a"], ["--method", "lapo", "--seeds", "a"]),
    (["--methods", "lapo", "--set", "train.lam_stps=5"],
     ["--method", "lapo", "--set", "train.lam_stps=5"]),
    (["--methods", "lapo", "--mask-sources", "dilate-3"],
     ["--method", "lapo", "--mask-source", "dilate-3"]),
    (["--methods", "masklam", "--mask-sources", "blur-3"],
     ["--method", "masklam", "--mask-source", "blur-3"]),
    (["--methods", "lapo", "--envs", "DistractingCheetahOOD-v1"],
     ["--method", "lapo", "--envs", "DistractingCheetahOOD-v1"]),
    (["--methods", "lapo", "--preset", "cpu", "--set", "data.labelled_transitions=999999"],
     ["--method", "lapo", "--preset", "cpu", "--set", "data.labelled_transitions=999999"]),
    (["--methods", "nomodule:MyLAM"], ["--method", "nomodule:MyLAM"]),
]
"""Bad grids as ``sweep`` flags, and the same mistake as ``run`` flags."""


@pytest.mark.parametrize("sweep_flags, run_flags", BAD_GRIDS)
def test_a_bad_grid_fails_before_anything_with_runs_message(tmp_path, capsys, sweep_flags,
                                                            run_flags):
    assert cli.main(["run", *run_flags, *_paths(tmp_path)[:-1]]) == 2
    run_error = capsys.readouterr().err.partition("error: ")[2]
    assert cli.main(["sweep", *sweep_flags, *_paths(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"masklam-bench sweep: error: {run_error}" and run_error.count("\n") == 1
    assert not any((tmp_path / d).exists() for d in ("data", "runs", "out"))


def test_a_grid_without_experts_names_every_task(tmp_path, monkeypatch, capsys):
    from masklam_bench import experts

    monkeypatch.setattr(experts, "WEIGHTS_DIR", tmp_path / "no-weights")
    argv = ["sweep", "--methods", "lapo", "--envs", "cheetah,walker", *_paths(tmp_path)]
    assert cli.main(argv) == 2
    assert "no shipped expert for cheetah-run, walker-run" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    ('methods = ["lapo"]\ndim = [64]\n', "unknown key 'dim' (did you mean 'dims'?)"),
    ('methods = ["lapo"]\ndims = "sixty"\n', "key 'dims': --dims must be a comma-separated list"),
    ('methods = ["lapo"]\n[set]\ntrain.lam_stepz = 5\n', "key 'set': --set"),
    ('methods = ["lapo"]\ndims = [64, "x"]\n', "'dims' must be a list of integers"),
    ('methods = "lapo"\nseeds = true\n', "'seeds' must be a list of integers"),
    ('methods = ["lapp"]\n', "Unknown method 'lapp'; did you mean 'lapo'?"),
    ('methods = ["lapo"]\npreset = 3\n', "'preset' must be a preset name"),
    ('methods = ["lapo"]\npreset = "tiny"\n', "'tiny' is not a preset"),
    ('methods = ["lapo"]\n[set]\ntrain.lam_steps = [1]\n', "'set' must be a table"),
    ('methods = ["lapo"\n', "is not valid TOML"),
    ('envs = ["cheetah"]\n', "sweep needs methods"),
    ('methods = ["lapo"]\nmask_sources = ["exact"]\nmask-sources = ["exact"]\n',
     "'mask-sources' and an earlier key are both 'mask-sources'"),
])
def test_a_bad_grid_file_is_one_clear_sentence(tmp_path, capsys, content, message):
    (tmp_path / "grid.toml").write_text(content)
    assert cli.main(["sweep", "--grid", str(tmp_path / "grid.toml"), *_paths(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("flags, message", [
    (["--slurm-param", "account"], "give an sbatch option as KEY=VALUE"),
    (["--slurm-param", "time=5"], "--slurm-param time: the sweep sets it itself (--timeout-min)"),
    (["--slurm-param", "cpus_per_task=4"], "--slurm-param cpus-per-task: the sweep sets it"),
    (["--launcher", "ray", "--mem-gb", "8"], "--mem-gb and --slurm-param are for --launcher slurm"),
])
def test_slurm_options_are_checked(tmp_path, capsys, flags, message):
    argv = ["sweep", "--methods", "lapo", "--launcher", "slurm", "--dry-run", *flags,
            "--data-root", str(tmp_path / "data"), "--runs-root", str(tmp_path / "runs"),
            "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_launcher_resources_this_machine_lacks_are_refused_up_front(tmp_path, capsys,
                                                                       monkeypatch):
    # Slurm's tools missing: a one-line error, not submitit's traceback; a dry run only notes it.
    monkeypatch.setattr(sweep.shutil, "which", lambda name: None)
    argv = ["sweep", "--methods", "lapo", "--preset", "smoke", "--launcher", "slurm",
            *_paths(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "needs Slurm's srun and sbatch" in err and "Traceback" not in err
    assert cli.main([*argv, "--dry-run"]) == 0
    assert "note: no srun on this machine's PATH" in capsys.readouterr().out
    # More CPUs per run than the local Ray instance would have: refused before Ray starts.
    assert cli.main(["sweep", "--methods", "lapo", "--preset", "smoke", "--ray-cpus", "2",
                     "--cpus-per-run", "3", "--dry-run", *_paths(tmp_path)]) == 2
    assert "asks for 3 CPU(s) but the local Ray instance would have 2" in capsys.readouterr().err


def test_slurm_dry_run_names_memory_and_params(tmp_path, capsys):
    argv = ["sweep", "--methods", "lapo", "--launcher", "slurm", "--dry-run", "--mem-gb", "24",
            "--slurm-param", "account=lab", "--data-root", str(tmp_path / "data"),
            "--runs-root", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "180 min, 24 GB per job, --account=lab" in out and "note: preset gpu" not in out
    assert cli.main([*argv, "--preset", "gpu"]) == 0  # the gpu preset without a GPU per run
    assert "note: preset gpu with no GPU per run" in capsys.readouterr().out


def test_cluster_paths_must_be_absolute(tmp_path, capsys):
    argv = ["sweep", "--methods", "lapo", "--ray-address", "auto", "--data-root", "data"]
    assert cli.main(argv) == 2
    assert "--data-root data must be an absolute path" in capsys.readouterr().err
    # --ray-cpus sizes a local instance: beside --ray-address it would be dropped without a word.
    folders = ["--data-root", str(tmp_path / "data"), "--runs-root", str(tmp_path / "runs"),
               "--out", str(tmp_path / "out")]
    assert cli.main(["sweep", "--methods", "lapo", "--ray-address", "auto", "--ray-cpus", "2",
                     *folders]) == 2
    assert "--ray-cpus sizes a local Ray instance" in capsys.readouterr().err


def test_dry_run_prints_the_grid_and_its_resources(tmp_path, capsys):
    argv = ["sweep", "--methods", "lapo,bc-labels", "--dims", "8,16", "--seeds", "0,1",
            "--preset", "smoke", "--cpus-per-run", "2", "--ray-cpus", "4", "--dry-run",
            *_paths(tmp_path)]
    finished = tmp_path / "out" / "cheetah-run__lapo__d8__s0__smoke+fp32.json"
    finished.parent.mkdir()
    finished.write_text("{}")
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert ("6 run(s) at preset smoke, 0 finished (skipped), 1 stale (not run again), 5 to run "
            "on a local Ray instance (4 CPUs)") in out
    assert "each run asks for 2 CPU(s)" in out
    assert ("stale cheetah-run__lapo__d8__s0__smoke+fp32 (its result file is unreadable or "
            "incomplete: not run again)") in out
    assert "1 dataset job(s) first" in out and not (tmp_path / "data").exists()


class _FakeJob:
    """A submitit job that has finished, for the Slurm path without Slurm."""

    def __init__(self, job_id: str, error: str = ""):
        self.job_id, self.error = job_id, error

    def done(self) -> bool:
        return True

    def result(self):
        if self.error:
            raise RuntimeError(f"Traceback (most recent call last):\n  x\n{self.error}\n---")


def test_slurm_runs_wait_for_their_dataset_job(tmp_path, monkeypatch):
    """On Slurm the run jobs are submitted at once, each depending on its dataset job."""
    submitted = []

    class FakeExecutor:
        def __init__(self):
            self.params = {}

        def update_parameters(self, **kwargs):
            self.params = {**self.params, **kwargs}

        def submit(self, fn, config, cpus):
            if fn is sweep.run_task and config["seed"] == 2:  # as sbatch at a job-count limit
                raise RuntimeError("sbatch: error: QOSMaxSubmitJobPerUserLimit\nmore")
            submitted.append((fn.__name__, config.get("seed"), dict(self.params)))
            fail = fn is sweep.run_task and config["seed"] == 1
            return _FakeJob(str(len(submitted)), "ValueError: bad seed" if fail else "")

    monkeypatch.setattr(sweep, "_executor", lambda options: FakeExecutor())
    monkeypatch.setattr(sweep, "SUBMITIT_POLL_S", 0.0)
    options = sweep.SweepOptions(launcher="slurm", data_root=str(tmp_path), out=str(tmp_path),
                                 runs_root=str(tmp_path), slurm_params={"account": "lab"})
    runs = _grid(["sweep", "--methods", "lapo", "--seeds", "0,1,2", "--preset", "smoke"])
    runs = [dataclasses.replace(c, data_root=str(tmp_path), results_dir=str(tmp_path))
            for c in runs]
    outcomes = sweep.sweep(runs, options)
    assert [s[0] for s in submitted] == ["collect_task", "run_task", "run_task"]
    assert all(s[2]["slurm_additional_parameters"]["dependency"] == "afterok:1"
               for s in submitted[1:])
    # --slurm-param reaches every job, the dataset's too, beside the runs' dependency.
    assert all(s[2]["slurm_additional_parameters"]["account"] == "lab" for s in submitted)
    assert "dependency" not in submitted[0][2]["slurm_additional_parameters"]
    assert submitted[0][2]["gpus_per_node"] == 0  # collection renders on the CPU
    assert [(o.status, o.error) for o in outcomes] == [
        ("done", ""), ("failed", "ValueError: bad seed"),
        ("failed", "job not submitted: RuntimeError: sbatch: error: QOSMaxSubmitJobPerUserLimit")]


# ------------------------------------------------------------------------------------------------
# Real sweeps at the smoke preset: local Ray, then submitit's local executor
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    """A folder holding the failing plug-in, on the path of this process and of its workers."""
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "sweep_broken_lam.py").write_text(textwrap.dedent(BROKEN_METHOD))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder),
                                                               os.environ.get("PYTHONPATH")])))
        yield folder


@pytest.fixture(scope="module")
def ray_sweep(tmp_path_factory, plugin_path):
    """A local Ray sweep (2 CPUs) of lapo and masklam at seed 0 and the failing plug-in."""
    root = tmp_path_factory.mktemp("ray")
    argv = ["sweep", "--methods", f"lapo,masklam,{BROKEN}", "--dims", "8", "--preset", "smoke",
            "--ray-cpus", "2", *_paths(root)]
    out, err = io.StringIO(), io.StringIO()
    handlers = []  # SIGTERM's handler once Ray has started (its init sets one of its own)
    start_ray = sweep._start_ray

    def started(options):
        began = start_ray(options)
        handlers.append(signal.getsignal(signal.SIGTERM))
        return began

    with pytest.MonkeyPatch.context() as patch:
        # Ray's processes inherit these at start: a worker slow to register on a loaded 2-core
        # machine (the other test worker busy) is waited for, not failed after Ray's 60 s.
        patch.setenv("RAY_worker_register_timeout_seconds", "300")
        patch.setattr(sweep, "_start_ray", started)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
    return root, code, out.getvalue(), err.getvalue() + f"\nhandlers: {handlers}"


@needs_ray
def test_ray_sweep_runs_the_grid_and_survives_a_failing_run(ray_sweep):
    root, code, out, err = ray_sweep
    names = sorted(p.name for p in (root / "out").glob("*.json"))
    assert names == ["cheetah-run__lapo__d8__s0__smoke+fp32.json",
                     "cheetah-run__masklam__d8__s0__smoke+fp32.json"], out + err
    assert code == 2, out + err  # a run failed: the exit code says so, and the table names it
    # A SIGTERM during the sweep still gets the suite's clean-up and exit status, not Ray's.
    assert f"handlers: [{interrupts.on_signal!r}]" in err
    assert "| done | 2 |" in out and "| skipped | 0 |" in out and "| failed | 1 |" in out, (
        out + err)
    # The local instance's runs get `run`'s priority, not Ray's default worker niceness of 15.
    assert ("failed: cheetah-run__sweep_broken_lam-Broken__d8__s0__smoke+fp32: RuntimeError: "
            f"broken on purpose at niceness {os.nice(0)}") in out
    assert "1 of 3 run(s) failed (cheetah-run__sweep_broken_lam-Broken" in err


@needs_ray
def test_a_finished_sweep_is_skipped_without_starting_ray(ray_sweep, capsys, monkeypatch):
    import ray

    from masklam_bench import leaderboard

    written = []
    monkeypatch.setattr(leaderboard, "write_leaderboard", lambda *a: written.append(a))
    root = ray_sweep[0]
    before = {p: p.stat().st_mtime_ns for p in (root / "out").glob("*.json")}
    argv = ["sweep", "--methods", "lapo,masklam", "--dims", "8", "--preset", "smoke",
            *_paths(root)[:-1]]  # with the leaderboard
    assert cli.main(argv) == 0
    assert "| skipped | 2 |" in capsys.readouterr().out and not ray.is_initialized()
    assert before == {p: p.stat().st_mtime_ns for p in (root / "out").glob("*.json")}
    assert written == [(str(root / "out"), root / "out" / "leaderboard")]
    # A result made by other method source is not taken for this code's: stale, named, not rerun.
    lapo = root / "out" / "cheetah-run__lapo__d8__s0__smoke+fp32.json"
    saved = lapo.read_text()
    record = json.loads(saved)
    record["code"]["method_sha256"] = "0" * 64
    lapo.write_text(json.dumps(record))
    try:
        assert cli.main(argv) == 0
    finally:
        lapo.write_text(saved)
    out = capsys.readouterr().out
    assert "| skipped | 1 |" in out and "| stale | 1 |" in out
    assert ("stale: cheetah-run__lapo__d8__s0__smoke+fp32: made with another method source; "
            "not run again") in out


@needs_ray
@needs_submitit
def test_submitit_local_executor_runs_a_grid(ray_sweep, tmp_path, capsys):
    """Two runs as local submitit jobs on the Ray sweep's dataset; one of them fails.

    Each job is ``runner.run`` alone in a fresh process, as ``masklam-bench run`` does it: its
    result equals the Ray run's number for number.
    """
    root = ray_sweep[0]
    argv = ["sweep", "--methods", f"lapo,{BROKEN}", "--dims", "8", "--preset", "smoke",
            "--launcher", "local-submitit", *_paths(tmp_path, data=root / "data")]
    assert cli.main(argv) == 2
    out = capsys.readouterr().out
    assert "| done | 1 |" in out and "RuntimeError: broken on purpose" in out
    name = "cheetah-run__lapo__d8__s0__smoke+fp32.json"
    assert _metrics(tmp_path / "out" / name) == _metrics(root / "out" / name)
    assert list((tmp_path / "runs" / "submitit").glob("*_log.out"))


def test_the_default_preset_follows_what_the_runs_get_not_the_machine(monkeypatch):
    """Without --gpus-per-run the runs are CPU runs, named and sized ``cpu`` even where the
    machine that starts the sweep sees CUDA; with GPUs they are ``gpu`` runs wherever it starts."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cpu = sweep.SweepOptions(launcher="slurm")
    gpu = sweep.SweepOptions(launcher="slurm", gpus_per_run=1)
    values = sweep.grid_values(_args(["sweep", "--methods", "lapo"]))
    assert {c.preset for c in sweep.expand_grid(values, cpu)} == {"cpu"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert {c.preset for c in sweep.expand_grid(values, gpu)} == {"gpu"}
