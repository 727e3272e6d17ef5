"""Leaderboard: validation of result files, tables, CSVs, plots, determinism and the CLI."""

import argparse
import csv
import json

import pytest

from masklam_bench import leaderboard, metrics

TASKS = ("cheetah-run", "walker-walk")
METHODS = ("lapo", "masklam")
DIMS = (8, 64)
SEEDS = (0, 1, 2)


def _nmse(task, method, dim, seed):
    """A made-up probe NMSE, distinct for every run."""
    return round(0.3 + 0.2 * TASKS.index(task) + 0.1 * METHODS.index(method) + dim / 1000
                 + 0.01 * seed, 6)


def _result(task, method, dim, seed, preset="cpu", **metric_overrides):
    m = {
        "probe_nmse": _nmse(task, method, dim, seed),
        "probe_nmse_untrained": 0.9,
        "return_id": 100.0 + 10 * seed, "return_ood": 50.0 + 5 * seed,
        "normalized_return_id": 0.1 + 0.1 * seed, "normalized_return_ood": 0.05 + 0.05 * seed,
        "ref_min_score": 5.0, "ref_max_score": 700.0,
        "return_id_episodes": [100.0, 101.0],
    }
    m.update(metric_overrides)
    return {
        "schema_version": 1, "run_name": f"{task}__{method}__d{dim}__s{seed}__{preset}",
        "task": task, "env_id": "X-v0", "ood_env_id": "XOOD-v0", "method": method,
        "method_label": method, "latent_dim": dim, "seed": seed, "preset": preset,
        "config": {}, "versions": {"masklam_bench": "0.1.0"}, "env_versions": {},
        "device": "cpu", "machine": "test", "created": "2026-11-21T12:00:00Z",
        "metrics": m, "timings": {"total_s": 1.0},
    }


@pytest.fixture
def results(tmp_path):
    """A results folder: 2 tasks x 2 methods x 2 dims x 3 seeds, one smoke run, one run without
    its OOD return, and two malformed files."""
    root = tmp_path / "results"
    for task in TASKS:
        for method in METHODS:
            for dim in DIMS:
                for seed in SEEDS:
                    overrides = {}
                    if (task, method, dim, seed) == ("walker-walk", "lapo", 8, 2):
                        overrides = {"normalized_return_ood": None, "return_ood": None}
                    path = root / task / f"{method}_d{dim}_s{seed}.json"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(_result(task, method, dim, seed, **overrides)))
    (root / "smoke.json").write_text(json.dumps(
        _result("cheetah-run", "masklam", 8, 0, preset="smoke", probe_nmse=5.0)))
    (root / "broken.json").write_text('{"schema_version": 1, "task": ')
    bad = _result("cheetah-run", "masklam", 8, 9)
    bad["latent_dim"] = "eight"
    (root / "cheetah-run" / "bad_dim.json").write_text(json.dumps(bad))
    return root


def test_load_results_skips_and_names_malformed_files(results):
    records, problems = leaderboard.load_results(results)
    assert len(records) == 2 * 2 * 2 * 3 + 1
    assert len(problems) == 2
    assert problems[0].startswith("broken.json: not valid JSON")
    assert problems[1].startswith("cheetah-run/bad_dim.json: latent_dim must be")
    assert all(r["seed"] != 9 for r in records)


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: d.pop("task"), "missing required key"),
    (lambda d: d.update(schema_version=2), "schema_version 2"),
    (lambda d: d.update(seed=True), "seed must be"),
    (lambda d: d["metrics"].update(probe_nmse="low"), "metrics.probe_nmse"),
    (lambda d: d.update(task="../evil"), "task"),
    (lambda d: d.update(latent_dim=0), "latent_dim must be positive"),
])
def test_load_results_reports_each_kind_of_problem(tmp_path, mutate, reason):
    data = _result("cheetah-run", "lapo", 8, 0)
    mutate(data)
    (tmp_path / "r.json").write_text(json.dumps(data))
    records, problems = leaderboard.load_results(tmp_path)
    assert records == [] and len(problems) == 1 and reason in problems[0]


def test_load_results_skips_duplicates_and_fills_normalised_return(tmp_path):
    first = _result("cheetah-run", "lapo", 8, 0, normalized_return_id=None)
    (tmp_path / "a.json").write_text(json.dumps(first))
    (tmp_path / "b.json").write_text(json.dumps(first))
    records, problems = leaderboard.load_results(tmp_path)
    assert len(records) == 1 and "duplicate of a.json" in problems[0]
    assert records[0]["metrics"]["normalized_return_id"] == pytest.approx((100 - 5) / 695)


def test_leaderboard_tables_csvs_and_plots(results, tmp_path):
    out = tmp_path / "board"
    written = leaderboard.write_leaderboard(results, out)
    readme = (out / "README.md").read_text()
    assert "do not edit; regenerate with `masklam-bench leaderboard`" in readme
    assert "`broken.json`" in readme and "`cheetah-run/bad_dim.json`" in readme

    # Presets are never mixed: the smoke run has its own section, and the cpu mean ignores it.
    assert "## Preset `cpu`" in readme and "## Preset `smoke`" in readme
    cpu = readme.split("## Preset `smoke`")[0]  # sections are sorted by preset
    values = [_nmse("cheetah-run", "masklam", 8, s) for s in SEEDS]
    mean, low, high = metrics.mean_ci(values)
    assert f"| `masklam` | 8 | {mean:.3f} ± {(high - low) / 2:.3f} |" in cpu
    assert "5.000" not in cpu
    # The run without an OOD return: two OOD values in a row of three seeds.
    ood_mean, ood_low, ood_high = metrics.mean_ci([0.05, 0.10])
    assert f"{ood_mean:.3f} ± {(ood_high - ood_low) / 2:.3f} (n=2) | 3 |" in readme

    rows = list(csv.DictReader((out / "cheetah-run.csv").open()))
    assert len(rows) == 2 * 2 + 1  # cpu rows plus the smoke row
    row = next(r for r in rows if r["preset"] == "cpu" and r["method_label"] == "masklam"
               and r["latent_dim"] == "8")
    assert float(row["probe_nmse"]) == pytest.approx(mean)
    assert float(row["probe_nmse_low"]) == pytest.approx(low)
    assert row["seeds"] == "0 1 2" and row["probe_nmse_n"] == "3"

    summary = list(csv.DictReader((out / "summary.csv").open()))
    aggregate = next(r for r in summary if r["statistic"] == "iqm" and r["preset"] == "cpu"
                     and r["method_label"] == "lapo" and r["latent_dim"] == "64")
    pooled = [_nmse(t, "lapo", 64, s) for t in TASKS for s in SEEDS]
    assert float(aggregate["probe_nmse"]) == pytest.approx(metrics.iqm(pooled))
    assert float(aggregate["probe_nmse_low"]) <= float(aggregate["probe_nmse"]) \
        <= float(aggregate["probe_nmse_high"])
    assert aggregate["n_tasks"] == "2" and aggregate["return_id"] == ""

    for task in TASKS:
        for kind in ("nmse", "return"):
            png = out / f"cpu_{task}_{kind}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"]({png.name})" in readme
    assert set(written) == {p.name for p in out.iterdir()}


def test_regenerating_gives_identical_files(results, tmp_path):
    out = tmp_path / "board"
    first = {name: path.read_bytes()
             for name, path in leaderboard.write_leaderboard(results, out).items()}
    second = {name: path.read_bytes()
              for name, path in leaderboard.write_leaderboard(results, out).items()}
    assert first == second
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_no_valid_results_writes_nothing(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "x.json").write_text("[]")
    with pytest.raises(ValueError, match="no valid result files"):
        leaderboard.write_leaderboard(tmp_path / "results", tmp_path / "board")
    assert not (tmp_path / "board").exists()
    with pytest.raises(FileNotFoundError, match="no results directory"):
        leaderboard.load_results(tmp_path / "missing")


def test_cli_reports_skipped_files(results, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    leaderboard.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["leaderboard", "--results", str(results),
                              "--out", str(tmp_path / "board")])
    args.func(args)
    captured = capsys.readouterr()
    assert "broken.json" in captured.err and "bad_dim.json" in captured.err
    assert "README.md" in captured.out and (tmp_path / "board" / "README.md").exists()


def test_cli_fails_without_valid_results(tmp_path):
    parser = argparse.ArgumentParser()
    leaderboard.add_cli(parser.add_subparsers(dest="command"))
    (tmp_path / "results").mkdir()
    args = parser.parse_args(["leaderboard", "--results", str(tmp_path / "results")])
    with pytest.raises(ValueError, match="no valid result files"):
        args.func(args)
