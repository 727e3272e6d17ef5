"""Result files as a pandas DataFrame."""

import csv
import json

import pytest
from test_leaderboard import DIMS, METHODS, REPS, SEEDS, _nmse, _result

import masklam_bench
from masklam_bench import frame, leaderboard


@pytest.fixture
def results(tmp_path):
    """Result files of 2 methods x 2 dims x 3 seeds on cheetah-run, and one malformed file."""
    root = tmp_path / "results"
    for method in METHODS:
        for dim in DIMS:
            for seed in SEEDS:
                path = root / "cheetah-run" / f"{method}_d{dim}_s{seed}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(_result("cheetah-run", method, dim, seed)))
    (root / "broken.json").write_text('{"schema_version": 1, "task": ')
    return root


def test_flatten_joins_nested_keys_and_keeps_lists():
    nested = {"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": "x"}
    assert frame.flatten(nested) == {"a.b": 1, "a.c.d": [1, 2], "e": {}, "f": "x"}


def test_one_row_per_run_with_flattened_columns(results):
    with pytest.warns(UserWarning) as caught:
        runs = masklam_bench.load_results(results)
    assert len(runs) == len(METHODS) * len(DIMS) * len(SEEDS)
    assert {"metrics.probe_nmse", "config.preset.train.lam_steps", "timings.total_s",
            "protocol", "path", "dim"} <= set(runs.columns)
    row = runs[runs["path"] == "cheetah-run/masklam_d8_s1.json"].iloc[0]
    assert row["metrics.probe_nmse"] == pytest.approx(_nmse("cheetah-run", "masklam", 8, 1))
    assert row["protocol"] == leaderboard.current_protocol("cpu")
    assert row["metrics.return_id_episodes"] == [109.0, 111.0]
    # Malformed files: named in a warning each, skipped, and listed in attrs.
    assert [str(w.message) for w in caught] == [
        f"skipped result file {runs.attrs['problems'][0]}"]
    assert runs.attrs["problems"][0].startswith("broken.json: not valid JSON")


def test_group_means_match_the_leaderboards_per_task_table(results, tmp_path):
    with pytest.warns(UserWarning):
        runs = masklam_bench.load_results(results)
    cpu = runs[(runs["preset"] == "cpu") & (runs["task"] == "cheetah-run")]
    means = cpu.groupby(["method", "latent_dim"])["metrics.probe_nmse"].mean()
    leaderboard.write_leaderboard(results, tmp_path / "board", reps=REPS)
    for row in csv.DictReader((tmp_path / "board" / "cheetah-run.csv").open()):
        if row["preset"] == "cpu":
            key = (row["method"], int(row["latent_dim"]))
            assert float(row["probe_nmse"]) == pytest.approx(means[key])
    assert len(means) == 4
