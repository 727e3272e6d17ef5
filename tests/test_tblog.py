"""TensorBoard curves: what a stage writes, and how a resumed stage replaces its points."""

from __future__ import annotations

import pytest

from masklam_bench.tblog import Curves

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def _scalars(folder, tag):
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_a_resumed_stage_replaces_its_later_points(tmp_path):
    with Curves(tmp_path, "lam") as curves:
        for step in range(10):
            curves.scalars({"loss": 1.0}, step, "lam")
    # A resume from a checkpoint at step 5: the first run's points from 5 on are dropped.
    with Curves(tmp_path, "lam", purge_step=5) as curves:
        for step in range(5, 8):
            curves.scalars({"loss": 2.0}, step, "lam")
    assert _scalars(tmp_path / "tb" / "lam", "lam/loss") == (
        [(s, 1.0) for s in range(5)] + [(s, 2.0) for s in range(5, 8)])


def test_series_keep_every_nth_point_and_the_last_and_skip_non_numbers(tmp_path):
    with Curves(tmp_path, "bc") as curves:
        curves.series("bc/loss", [float(i) for i in range(25)], every=10)
        curves.scalars({"nmse": 0.5, "episodes": [1.0, 2.0], "none": None, "nan": float("nan"),
                        "flag": True}, 0, "final")
    folder = tmp_path / "tb" / "bc"
    assert _scalars(folder, "bc/loss") == [(0, 0.0), (10, 10.0), (20, 20.0), (24, 24.0)]
    acc = EventAccumulator(str(folder))
    acc.Reload()
    assert acc.Tags()["scalars"] == ["bc/loss", "final/nmse"]


def test_disabled_curves_write_nothing(tmp_path):
    with Curves(tmp_path, "lam", enabled=False) as curves:
        curves.scalars({"loss": 1.0}, 0)
        curves.series("x", [1.0])
        assert not curves.enabled
    assert not (tmp_path / "tb").exists()
