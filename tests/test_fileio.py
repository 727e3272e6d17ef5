"""Atomic writes leave the old file or the new one, never a half-written one or a stray temporary."""

from __future__ import annotations

import json

import pytest
import torch

from masklam_bench.errors import BenchError, CheckpointError
from masklam_bench.fileio import (
    atomic_path,
    atomic_torch_save,
    atomic_write_csv,
    atomic_write_json,
    load_checkpoint,
)


def test_json_round_trips_numpy_and_paths(tmp_path):
    import numpy as np

    path = tmp_path / "deep" / "result.json"
    atomic_write_json(path, {"b": np.float32(0.5), "a": np.arange(3), "p": tmp_path})
    assert json.loads(path.read_text()) == {"a": [0, 1, 2], "b": 0.5, "p": str(tmp_path)}
    assert list(path.parent.iterdir()) == [path]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "result.json"
    atomic_write_json(path, {"old": 1})
    with pytest.raises(RuntimeError, match="interrupted"), atomic_path(path) as tmp:
        tmp.write_text('{"new": ')
        raise RuntimeError("interrupted")
    assert json.loads(path.read_text()) == {"old": 1}
    assert list(tmp_path.iterdir()) == [path]


def test_unserialisable_payload_is_a_clear_error_and_writes_nothing(tmp_path):
    path = tmp_path / "result.json"
    with pytest.raises(TypeError, match="Cannot write object"):
        atomic_write_json(path, {"x": object()})
    assert not any(tmp_path.iterdir())


def test_torch_save_is_readable_and_world_readable(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"w": torch.ones(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert path.stat().st_mode & 0o044 == 0o044


def test_atomic_csv_round_trips_through_dict_reader(tmp_path):
    import csv

    path = tmp_path / "log.csv"
    rows = [{"step": 120, "eval_return": 1.5, "note": "a,b"}, {"step": 240, "eval_return": -2.0}]
    atomic_write_csv(path, ["step", "eval_return", "note"], rows)
    with open(path, newline="") as f:
        back = list(csv.DictReader(f))
    assert back == [{"step": "120", "eval_return": "1.5", "note": "a,b"},
                    {"step": "240", "eval_return": "-2.0", "note": ""}]


# Safe loading: checkpoints as the suite writes them load with weights_only=True; nothing else does.

def _lam_checkpoint() -> dict:
    """A stage-1 checkpoint laid out as ``runner.train_lam`` writes it (PCG64 states: plain ints)."""
    import numpy as np

    rng, labelled = np.random.default_rng([0, 1]), np.random.default_rng([0, 5])
    rng.random(3)
    return {"method": {"nets": {"w": torch.randn(3, 2)}, "optimizer": {"state": {}, "param_groups":
                                                                        [{"lr": 1e-3}]}},
            "rng": rng.bit_generator.state, "labelled_rng": labelled.bit_generator.state,
            "torch_rng": torch.get_rng_state(), "step": 500, "log": {"loss": [0.5, 0.25]},
            "elapsed": 1.5}


def _sac_checkpoint() -> dict:
    """A SAC checkpoint laid out as ``experts.sac.train`` writes it: each env's legacy
    ``RandomState.get_state()`` holds a uint32 NumPy array."""
    import numpy as np

    envs = [np.random.RandomState(seed) for seed in (0, 1)]
    envs[1].random_sample(5)
    return {"config": {"task": "cheetah-run", "hidden": (32, 32), "stop_return": None},
            "agent": {"actor": {"w0": torch.ones(2)}, "gen": torch.Generator().get_state()},
            "buffer": None, "env_random": [e.get_state() for e in envs],
            "np_rng": np.random.default_rng(3).bit_generator.state, "step": 240,
            "last_eval": None, "best_eval": -float("inf"), "train_returns": [1.0, 2.0]}


@pytest.mark.parametrize("make", [_lam_checkpoint, _sac_checkpoint])
def test_checkpoints_written_the_current_way_load_with_weights_only(tmp_path, make):
    import numpy as np

    state = make()
    atomic_torch_save(state, tmp_path / "ckpt.pt")
    back = load_checkpoint(tmp_path / "ckpt.pt")
    assert back.keys() == state.keys()
    if "env_random" in state:  # the restored generators continue exactly where they stopped
        for saved, loaded in zip(state["env_random"], back["env_random"]):
            a, b = np.random.RandomState(), np.random.RandomState()
            a.set_state(saved)
            b.set_state(loaded)
            assert (a.random_sample(4) == b.random_sample(4)).all()
    else:
        a, b = np.random.default_rng(), np.random.default_rng()
        a.bit_generator.state, b.bit_generator.state = state["rng"], back["rng"]
        assert (a.random(4) == b.random(4)).all()
        assert torch.equal(back["torch_rng"], state["torch_rng"])


class _Exploit:
    """What a hostile checkpoint pickles: unpickling it calls ``open(path, "w")``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("payload", ["bare", "nested"])
def test_a_file_with_a_pickled_callable_is_refused_and_never_run(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = _Exploit(marker)
    bad = tmp_path / "lam_ckpt.pt"
    torch.save(evil if payload == "bare" else {"method": {}, "rng": evil}, bad)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    message = str(err.value)
    assert message.startswith(f"Checkpoint {bad} is unreadable (")
    assert message.endswith("; delete it to redo the stage.")
    assert "it holds io.open" in message and "\n" not in message  # what it met, on one line
    assert not marker.exists()  # refused before the callable ran
    assert isinstance(err.value, BenchError)


def test_a_damaged_checkpoint_is_the_same_clear_error(tmp_path):
    path = tmp_path / "lam_ckpt.pt"
    atomic_torch_save(_lam_checkpoint(), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"^Checkpoint .* is unreadable \(.*\); delete it"):
        load_checkpoint(path)


def test_a_kill_half_way_through_a_write_leaves_the_previous_file(tmp_path, fresh_python,
                                                                 killed_mid_write):
    """SIGKILL in the middle of writing (no cleanup runs): the destination keeps its old content,
    a later write succeeds, and readers that glob results skip the dot-named leftover."""
    import signal

    path = tmp_path / "settings.json"
    atomic_write_json(path, {"old": 1})
    code = killed_mid_write("settings.json") + (
        "from masklam_bench.fileio import atomic_write_json\n"
        f"atomic_write_json({str(path)!r}, {{'new': list(range(1000))}})\n")
    result = fresh_python(code, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert json.loads(path.read_text()) == {"old": 1}
    leftovers = [p for p in tmp_path.iterdir() if p != path]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".settings.json.")
    assert list(tmp_path.glob("*.json")) == [path]
    atomic_write_json(path, {"new": 2})
    assert json.loads(path.read_text()) == {"new": 2}
