"""Atomic writes leave the old file or the new one, never a half-written one or a stray temporary."""

from __future__ import annotations

import json

import pytest
import torch

from masklam_bench.fileio import atomic_path, atomic_torch_save, atomic_write_json


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
