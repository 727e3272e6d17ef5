"""The command line's shape: no import cycle, a light ``--help``, and errors that are either the
suite's own (one line, exit 2) or a bug (its traceback, never disguised as bad input)."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import numpy as np
import pytest

from masklam_bench import cli, errors

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"masklam_bench": ROOT / "masklam_bench", "masklam_bench.envs": ROOT / "envs",
                "masklam_bench.baselines": ROOT / "baselines"}
"""Where each package's source lives (``envs/`` and ``baselines/`` are installed under
``masklam_bench``)."""


def _modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name."""
    modules = {}
    for package, folder in PACKAGE_DIRS.items():
        for file in folder.rglob("*.py"):
            parts = [p for p in file.relative_to(folder).with_suffix("").parts if p != "__init__"]
            modules[".".join([package, *parts])] = file
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, anywhere in its body (function-level imports
    too, and the modules ``cli`` imports by name to add their sub-commands)."""
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                edges |= {owner(a.name) for a in node.names if a.name.startswith("masklam_bench")}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("masklam_bench"):
                for alias in node.names:  # `from pkg import module` names a module
                    full = f"{node.module}.{alias.name}"
                    edges.add(full if full in modules else owner(node.module))
        graph[name] = edges - {None, name}
    graph["masklam_bench.cli"] |= set(cli._EXTRA_COMMANDS)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]`` of ``graph``, or None (depth-first search)."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert {"masklam_bench.cli", "masklam_bench.checks", "masklam_bench.sam_masks",
            "masklam_bench.envs", "masklam_bench.baselines.registry"} <= graph.keys()
    assert "masklam_bench.checks" in graph["masklam_bench.sam_masks"]
    assert find_cycle(graph) is None


def test_nothing_imports_the_command_line_and_errors_imports_nothing():
    graph = import_graph()
    assert [m for m, edges in graph.items() if "masklam_bench.cli" in edges] == []
    assert graph["masklam_bench.errors"] == set()


def test_help_imports_neither_torch_nor_the_methods(fresh_python):
    code = ("import sys\n"
            "from masklam_bench import cli\n"
            "for argv in (['--help'], ['run', '--help'], ['masks', '--help'], ['sweep', '--help']):\n"
            "    try:\n"
            "        cli.main(argv)\n"
            "    except SystemExit as e:\n"
            "        assert e.code == 0, (argv, e.code)\n"
            "print('imported:', 'torch' in sys.modules, 'masklam_bench.baselines' in sys.modules)\n")
    result = fresh_python(code, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: masklam-bench" in result.stdout and "mask-quality" in result.stdout
    assert result.stdout.strip().endswith("imported: False False")  # neither torch nor methods


def test_the_suites_errors_share_one_base_class():
    from masklam_bench.dataset import DatasetError
    from masklam_bench.sam_masks import SamMaskError

    for cls in (errors.UserError, errors.CheckpointError, DatasetError, SamMaskError):
        assert issubclass(cls, errors.BenchError) and issubclass(cls, ValueError), cls
    assert issubclass(errors.MissingFileError, FileNotFoundError)
    assert not issubclass(ValueError, errors.BenchError)


_RUN = ["run", "--method", "lapo", "--preset", "smoke", "--device", "cpu"]


def _raise(error: BaseException):
    def fail(*args, **kwargs):
        raise error

    return fail


@pytest.mark.parametrize("argv, module, name", [
    (_RUN, "masklam_bench.runner", "run"),
    (["leaderboard", "--results", "."], "masklam_bench.leaderboard", "read_records"),
])
def test_a_bug_keeps_its_traceback(argv, module, name, monkeypatch, tmp_path):
    """A ValueError from deep inside is a bug, not bad input: it leaves ``main`` as it is."""
    import importlib

    monkeypatch.chdir(tmp_path)
    if argv[0] == "run":
        from masklam_bench.experts import available_experts

        if "cheetah-run" not in available_experts():
            pytest.skip("no shipped cheetah-run expert")
    monkeypatch.setattr(importlib.import_module(module), name,
                        _raise(ValueError("operands could not be broadcast together")))
    with pytest.raises(ValueError, match="could not be broadcast"):
        cli.main(argv)


def test_the_suites_own_error_from_deep_inside_is_one_line(monkeypatch, tmp_path, capsys):
    from masklam_bench import runner
    from masklam_bench.experts import available_experts

    if "cheetah-run" not in available_experts():
        pytest.skip("no shipped cheetah-run expert")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner, "run", _raise(errors.CheckpointError(
        "Checkpoint runs/x/lam_ckpt.pt is unreadable (truncated); delete it to redo the stage.")))
    assert cli.main(_RUN) == 2
    err = capsys.readouterr().err
    assert err == ("masklam-bench run: error: Checkpoint runs/x/lam_ckpt.pt is unreadable "
                   "(truncated); delete it to redo the stage.\n")


@pytest.mark.parametrize("argv, message", [
    (["leaderboard", "--results", "nowhere"], "no results directory at nowhere"),
    (["leaderboard", "--results", "a_file"], "a_file is a file; pass the folder of result JSON"),
    (["leaderboard", "--results", ".", "--bootstrap-reps", "0"], "--bootstrap-reps must be"),
    (["eval-expert", "--task", "cheetah", "--weights", "missing.pt"], "No expert weights"),
    (["train-expert", "--task", "cheetah", "--stand-bonus", "0.1"], "stand_bonus applies"),
    (["bench-env", "--envs", "DistractingAnt-v0"], "Unknown environment"),
    (["curve", "probe", "--methods", "lapp"], "Unknown method 'lapp'"),
    (["bench-train", "--methods", "lapp"], "Unknown method 'lapp'"),
    (["mask-quality", "--dataset", "nowhere"], "nowhere"),
    (["show", "DistractingCheetah-v0", "--frames", "2", "--every", "1001"], "step 1001, past"),
    (["show", "DistractingCheetah-v0", "--out", "strip.txt"], "expected a picture file"),
    (["show", "DistractingCheetah-v0", "--out", "a_file/strip.png"], "a_file is a file"),
    (["run", "--method", "lapo", "--preset", "smoke", "--out", "a_file/x"],
     "--out a_file/x: a_file is a file, not a folder"),
    (["run", "--method", "lapo", "--preset", "smoke", "--data-root", "a_file"],
     "--data-root a_file is a file, not a folder"),
    (["run", "--method", "lapo", "--preset", "smoke", "--runs-root", "a_file/runs"],
     "--runs-root a_file/runs: a_file is a file"),
    (["sweep", "--methods", "lapo", "--preset", "smoke", "--dry-run", "--out", "a_file"],
     "a_file is a file, not a folder"),
    (["run", "--method", "lapo", "--preset", "smoke", "--out", "dead/results"],
     "--out dead/results: dead is a link to nothing"),
    (["curve", "probe", "--methods", "lapo", "--out", "a_file"], "--out a_file is a file"),
    (["curve", "ceiling", "--runs-root", "a_file/x"], "--runs-root a_file/x: a_file is a file"),
    (["leaderboard", "--out", "a_file"], "--out a_file is a file, not a folder"),
    (["collect", "--env", "DistractingCheetah-v0", "--out", "d", "--policy", "random",
      "--expert", "x.pt"], "--expert gives the weights of --policy expert"),
    (["collect", "--env", "DistractingCheetah-v0", "--out", "a_file"], "--out a_file is a file"),
    (["train-expert", "--task", "cheetah", "--out", "a_file"], "--out a_file is a file"),
    (["gpu-check", "--out", "."], "--out . is a folder; give the path of a file"),
    (["gpu-check", "--out", "a_file/g.json"], "--out a_file/g.json: a_file is a file"),
    (["reproduce", "r.json", "--workdir", "a_file"], "--workdir a_file is a file"),
    (["mask-quality", "--dataset", "d", "--out", "a_file"], "--out a_file is a file"),
    (["sweep", "--methods", "lapo", "--launcher", "local-submitit", "--slurm-logs", "a_file",
      "--dry-run"], "--slurm-logs a_file is a file, not a folder"),
])
def test_bad_input_to_other_commands_is_one_line(argv, message, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")  # where a folder is asked for
    (tmp_path / "dead").symlink_to(tmp_path / "gone")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


_CHECKED_IN_THE_COMMAND = {"sweep"}
"""Sub-commands that check their output paths themselves (``sweep``: only for a local launcher,
since a cluster's shared storage need not be mounted where it is launched)."""


def test_every_output_path_is_declared_for_checking():
    """A sub-command with an output flag declares it (``output_folders``/``output_files``), so
    ``main`` refuses an unwritable path before the work: a new sub-command cannot forget."""
    parser = cli._build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = []
    for name, sub in commands.choices.items():
        declared = {*sub._defaults.get("output_folders", ()), *sub._defaults.get("output_files", ())}
        for action in sub._actions:
            if action.dest in _OUTPUT_DESTS and action.dest not in declared and (
                    name not in _CHECKED_IN_THE_COMMAND):
                missing.append(f"{name} {action.option_strings[0]}")
    assert not missing


_OUTPUT_DESTS = {"out", "data_root", "runs_root", "workdir", "slurm_logs"}


def test_a_foreign_checkpoint_given_as_expert_weights_is_refused(tmp_path, capsys):
    import torch

    marker = tmp_path / "ran"
    torch.save({"task": "cheetah-run", "actor": _Exploit(marker)}, tmp_path / "x.pt")
    argv = ["eval-expert", "--task", "cheetah", "--weights", str(tmp_path / "x.pt")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "unreadable (it holds io.open" in err and "pass an expert file exported" in err
    assert not marker.exists()


class _Exploit:
    """Unpickling it would call ``open(path, "w")``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_main_restores_sigterm_and_runs_from_another_thread(monkeypatch, tmp_path):
    """main() sets its SIGTERM handler only for its own duration, and only on the main thread."""
    import signal
    import threading

    monkeypatch.chdir(tmp_path)
    before = signal.getsignal(signal.SIGTERM)
    argv = ["leaderboard", "--results", "nowhere"]  # fails fast with a one-line error
    assert cli.main(argv) == 2
    assert signal.getsignal(signal.SIGTERM) is before
    codes = []
    thread = threading.Thread(target=lambda: codes.append(cli.main(argv)))
    thread.start()
    thread.join()
    assert codes == [2]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the __del__
def test_an_interrupt_swallowed_where_python_ignores_exceptions_is_raised_again(monkeypatch,
                                                                                 tmp_path):
    """A SIGTERM whose handler ran inside a __del__ (Python prints "Exception ignored" and goes
    on) is raised again by the next step of a long loop: here the first progress report of a
    run's data collection. main() then reports it as interrupted, forgets it and puts back the
    SIGINT and SIGTERM handlers it replaced."""
    import gc
    import signal

    from masklam_bench import interrupts

    class Finalised:
        def __del__(self):
            interrupts.on_signal(signal.SIGTERM, None)

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    obj = Finalised()
    del obj  # the handler's Terminated is swallowed (a warning), the interrupt is remembered
    gc.collect()
    with pytest.raises(interrupts.Terminated):
        interrupts.raise_pending()
    monkeypatch.chdir(tmp_path)
    code = cli.main(["run", "--method", "lapo", "--preset", "smoke", "--threads", "1",
                     "--data-root", str(tmp_path / "data"), "--runs-root", str(tmp_path / "runs"),
                     "--out", str(tmp_path / "results"), "--no-tensorboard"])
    assert code == 128 + signal.SIGTERM
    assert not list((tmp_path / "results").glob("*.json"))  # stopped before any result
    interrupts.raise_pending()  # forgotten: raises nothing
    assert {s: signal.getsignal(s) for s in before} == before


def test_run_with_set_at_the_presets_value_is_the_presets_run(monkeypatch, tmp_path, capsys):
    """``run --set`` to the preset's own value says so and runs under the preset's own name."""
    from masklam_bench import runner

    seen = []

    def fake_run(config):
        seen.append(config)
        return {"metrics": {}, "timings": {"total_s": 0.0}}

    monkeypatch.setattr(runner, "run", fake_run)
    code = cli.main([*_RUN, "--dims", "8", "--set", "train.lam_steps=3", "--set",
                     "train.bc_steps=4", "--out", str(tmp_path / "results")])
    assert code == 0
    assert seen[0].overrides == {"train.bc_steps": 4}
    assert "train.lam_steps already is the smoke preset's value" in capsys.readouterr().out


def test_show_writes_a_strip_of_every_row(monkeypatch, tmp_path, capsys):
    """``show``: ID, mask, OOD and clean rows of one seeded trajectory, one column per frame."""
    from masklam_bench import show

    rows = show.rollout_frames("DistractingCheetah-v0", frames=3, every=2, seed=0)
    assert list(rows) == list(show.ROWS)
    assert {name: images.shape[0] for name, images in rows.items()} == dict.fromkeys(show.ROWS, 3)
    assert not np.array_equal(rows["in-distribution"], rows["OOD"])
    assert set(np.unique(rows["agent mask"])) == {0, 255}
    out = tmp_path / "strip.png"
    assert cli.main(["show", "DistractingCheetah-v0", "--frames", "2", "--every", "1",
                     "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG") and f"wrote {out}" in capsys.readouterr().out


def test_a_plug_in_that_inherits_a_built_in_name_is_refused(tmp_path, monkeypatch, capsys):
    """A subclass of MaskLAM that sets no `name` of its own would be labelled, and pooled on the
    leaderboard, as the built-in masklam: refused before anything runs."""
    (tmp_path / "inherits.py").write_text(
        "from masklam_bench.baselines.masklam import MaskLAM\n\n\n"
        "class Mine(MaskLAM):\n    pass\n\n\n"
        "class Named(MaskLAM):\n    name = 'my-masklam'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--method", "inherits:Mine", "--preset", "smoke"]) == 2
    assert "inherits:Mine calls itself 'masklam'" in capsys.readouterr().err
    from masklam_bench.checks import method_class

    assert method_class("inherits:Named").name == "my-masklam"
    assert method_class("masklam_bench.baselines.masklam:MaskLAM").name == "masklam"
