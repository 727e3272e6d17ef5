"""Leaderboard: validation of result files, tables, CSVs, plots, determinism and the CLI."""

import argparse
import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from rliable.metrics import aggregate_iqm

from masklam_bench import leaderboard, metrics, presets

TASKS = ("cheetah-run", "walker-walk")
METHODS = ("lapo", "masklam")
DIMS = (8, 64)
SEEDS = (0, 1, 2)
REPS = 200
"""Bootstrap replicates in these tests: rliable's bootstrap runs in Python, and 2000 (the
leaderboard's default) would make every regeneration take seconds."""


def _iqm(values):
    """rliable's IQM of all values."""
    return float(aggregate_iqm(np.asarray(values, dtype=float)))


def _nmse(task, method, dim, seed):
    """A made-up probe NMSE, distinct for every run of the fixture's tasks and methods."""
    def index(options, x):
        return options.index(x) if x in options else len(options)

    return round(0.3 + 0.2 * index(TASKS, task) + 0.1 * index(METHODS, method) + dim / 1000
                 + 0.01 * seed, 6)


REPO = Path(__file__).resolve().parents[1]


def _preset_dict(name="cpu"):
    """The resolved preset as the runner writes it into ``config.preset``."""
    return presets.preset_record(presets.get_preset(name))


def _result(task, method, dim, seed, preset="cpu", **metric_overrides):
    m = {
        "probe_nmse": _nmse(task, method, dim, seed),
        "probe_nmse_untrained": 0.9,
        "return_id": 100.0 + 10 * seed, "return_ood": 50.0 + 5 * seed,
        "normalized_return_id": 0.1 + 0.1 * seed, "normalized_return_ood": 0.05 + 0.05 * seed,
        "ref_min_score": 5.0, "ref_max_score": 700.0,
        "return_id_episodes": [99.0 + 10 * seed, 101.0 + 10 * seed],
        "return_ood_episodes": [49.0 + 5 * seed, 51.0 + 5 * seed],
    }
    m.update(metric_overrides)
    return {
        "schema_version": 1, "run_name": f"{task}__{method}__d{dim}__s{seed}__{preset}",
        "task": task, "env_id": "X-v0", "ood_env_id": "XOOD-v0", "method": method,
        "method_label": method, "latent_dim": dim, "seed": seed, "preset": preset,
        "config": {"preset": _preset_dict(preset)}, "versions": {"masklam_bench": "0.1.0"},
        "env_versions": {},
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
                        overrides = {"normalized_return_ood": None, "return_ood": None,
                                     "return_ood_episodes": None}
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


def test_read_records_skips_and_names_malformed_files(results):
    records, problems = leaderboard.read_records(results)
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
    (lambda d: d.update(mask_source="sam2", sam_masks=None), "does not record which"),
    (lambda d: d.update(mask_source="sam2", sam_masks={"sha256": "ab", "checkpoint": "random"}),
     "SAM 2 masks of random weights"),
])
def test_read_records_reports_each_kind_of_problem(tmp_path, mutate, reason):
    data = _result("cheetah-run", "lapo", 8, 0)
    mutate(data)
    (tmp_path / "r.json").write_text(json.dumps(data))
    records, problems = leaderboard.read_records(tmp_path)
    assert records == [] and len(problems) == 1 and reason in problems[0]


def test_read_records_skips_duplicates_and_fills_normalised_return(tmp_path):
    first = _result("cheetah-run", "lapo", 8, 0, normalized_return_id=None)
    (tmp_path / "a.json").write_text(json.dumps(first))
    (tmp_path / "b.json").write_text(json.dumps(first))
    records, problems = leaderboard.read_records(tmp_path)
    assert len(records) == 1 and "duplicate of a.json" in problems[0]
    assert records[0]["metrics"]["normalized_return_id"] == pytest.approx((100 - 5) / 695)


def test_two_methods_that_declare_one_name_are_not_pooled(tmp_path):
    """A plug-in whose class declares a built-in's name (or another plug-in's) would be pooled
    into that method's row, its seeds counted as the other's: the later file is refused."""
    (tmp_path / "a.json").write_text(json.dumps(_result("cheetah-run", "masklam", 8, 0)))
    mine = {**_result("cheetah-run", "masklam", 8, 1), "method_path": "my_lam:MyLAM"}
    (tmp_path / "b.json").write_text(json.dumps(mine))
    theirs = {**_result("cheetah-run", "soft", 8, 0), "method_path": "theirs:Soft"}
    (tmp_path / "c.json").write_text(json.dumps(theirs))
    (tmp_path / "d.json").write_text(json.dumps({**theirs, "method_path": "mine:Soft"}))
    (tmp_path / "e.json").write_text(json.dumps({**theirs, "seed": 1}))  # the same plug-in
    records, problems = leaderboard.read_records(tmp_path)
    assert sorted(r["_path"] for r in records) == ["a.json", "c.json", "e.json"]
    assert problems == [
        ("b.json: method 'masklam' here is the plug-in my_lam:MyLAM, but in a.json it is the "
        "built-in one; one row cannot hold two methods: give the plug-in class a `name` of its "
        "own"),
        ("d.json: method 'soft' here is the plug-in mine:Soft, but in c.json it is the plug-in "
        "theirs:Soft; one row cannot hold two methods: give the plug-in class a `name` of its own")]


def test_leaderboard_tables_csvs_and_plots(results, tmp_path):
    out = tmp_path / "board"
    written = leaderboard.write_leaderboard(results, out, reps=REPS)
    readme = (out / "README.md").read_text()
    assert f"`masklam-bench reproduce {results.as_posix()}/<run>.json`" in readme
    assert "do not edit; regenerate with `masklam-bench leaderboard`" in readme
    assert "`broken.json`" in readme and "`cheetah-run/bad_dim.json`" in readme

    # Presets are never mixed: the smoke run has its own section, and the cpu mean ignores it.
    assert "## Preset `cpu`" in readme and "## Preset `smoke`" in readme
    cpu = readme.split("## Preset `smoke`")[0]  # sections are sorted by preset
    values = [_nmse("cheetah-run", "masklam", 8, s) for s in SEEDS]
    mean, low, high = metrics.mean_ci(values)
    assert f"| `masklam` | 8 | {mean:.3f} ± {(high - low) / 2:.3f} |" in cpu
    assert "5.000" not in cpu
    # The run without an OOD return: the episodes of two seeds in a row of three seeds.
    episodes = [(r - 5.0) / 695.0 for r in (49.0, 51.0, 54.0, 56.0)]
    ood_mean, ood_low, ood_high = metrics.mean_ci(episodes)
    assert f"{ood_mean:.3f} ± {(ood_high - ood_low) / 2:.3f} (2 of 3 seeds) †" in readme

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
    assert float(aggregate["probe_nmse"]) == pytest.approx(_iqm(pooled))
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
             for name, path in leaderboard.write_leaderboard(results, out, reps=REPS).items()}
    second = {name: path.read_bytes()
              for name, path in leaderboard.write_leaderboard(results, out, reps=REPS).items()}
    assert first == second
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_no_valid_results_writes_nothing(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "x.json").write_text("[]")
    with pytest.raises(ValueError, match="no valid result files"):
        leaderboard.write_leaderboard(tmp_path / "results", tmp_path / "board", reps=REPS)
    assert not (tmp_path / "board").exists()
    with pytest.raises(FileNotFoundError, match="no results directory"):
        leaderboard.read_records(tmp_path / "missing")


def test_cli_reports_skipped_files(results, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    leaderboard.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["leaderboard", "--results", str(results),
                              "--out", str(tmp_path / "board"), "--bootstrap-reps", str(REPS)])
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


# --- Rules of issues 17 and 18, on small synthetic result sets


def _board(tmp_path, records):
    """Write ``records`` as result files, regenerate, and return the README and summary rows."""
    root = tmp_path / "results"
    root.mkdir(exist_ok=True)
    for i, record in enumerate(records):
        (root / f"{i:03d}.json").write_text(json.dumps(record))
    out = tmp_path / "board"
    leaderboard.write_leaderboard(root, out, reps=REPS)
    return (out / "README.md").read_text(), list(csv.DictReader((out / "summary.csv").open()))


def _bc(task, seed, norm, raw, dim=6):
    """A bc-labels run: its latent is the true action, its probe NMSE is ~0."""
    return _result(task, "bc-labels", dim, seed, probe_nmse=2e-8, probe_nmse_untrained=None,
                   normalized_return_id=norm, return_id=raw,
                   return_id_episodes=[raw - 1.0, raw + 1.0])


def _line(readme, label, section=None):
    """The Markdown table rows of ``label`` (within ``section``'s text when given)."""
    text = readme if section is None else section
    return [ln for ln in text.splitlines() if ln.startswith(f"| `{label}` |")]


def _iqm_row(summary, label, **where):
    return next(r for r in summary if r["statistic"] == "iqm" and r["method_label"] == label
                and all(r[k] == v for k, v in where.items()))


def test_protocol_id_is_the_short_hash_of_the_sorted_preset():
    preset = {"name": "cpu", "train": {"lam_steps": 10, "bc_steps": 2}}
    shuffled = {"train": {"bc_steps": 2, "lam_steps": 10}, "name": "cpu"}
    expected = hashlib.sha256(json.dumps(preset, sort_keys=True).encode()).hexdigest()[:8]
    assert leaderboard.protocol_id({"config": {"preset": preset}}) == expected
    assert leaderboard.protocol_id({"config": {"preset": shuffled}}) == expected
    assert leaderboard.protocol_id({"config": {}}) == "unknown"
    assert leaderboard.protocol_id({}) == "unknown"
    assert leaderboard.current_protocol("cpu") == leaderboard.protocol_id(
        {"config": {"preset": _preset_dict("cpu")}})
    assert leaderboard.current_protocol("no-such-preset") is None
    # Fields added since (presets.LATE_FIELDS) leave the committed rows' protocol as it was.
    committed = REPO / "leaderboards" / "results" / "cheetah-run__masklam__d64__s0__cpu.json"
    assert leaderboard.current_protocol("cpu") == leaderboard.protocol_id(
        json.loads(committed.read_text()))
    assert leaderboard.overrides_text({"train.lam_steps": 6000, "data.x": "a"}) == \
        "data.x=a, train.lam_steps=6000"


def test_other_protocols_get_their_own_sections_and_stay_out_of_main_aggregates(tmp_path):
    current = [_result("cheetah-run", "lapo", 8, s) for s in SEEDS]
    older_preset = _preset_dict()
    older_preset["train"]["lam_steps"] += 1
    older = [_result("cheetah-run", "lapo", 8, s, probe_nmse=7.0) for s in SEEDS]
    overridden = [_result("cheetah-run", "lapo", 8, s, probe_nmse=9.0) for s in SEEDS]
    for r in older:
        r["config"]["preset"] = older_preset
    for r in overridden:
        r["overrides"] = {"train.lam_steps": 6000, "train.bc_steps": 10}
    readme, summary = _board(tmp_path, current + older + overridden)  # same seeds: no duplicates

    now, old = leaderboard.current_protocol("cpu"), leaderboard.protocol_id(older[0])
    assert "Skipped result files" not in readme
    main = readme.split("## Preset `cpu`, protocol")[0]
    assert f"Protocol `{now}`: the current `cpu` preset" in main
    assert "7.000" not in main and "9.000" not in main
    assert (f"Made with an older version of the `cpu` preset (protocol `{old}`; current `{now}`)"
            in readme)
    assert (f"Made with --set train.bc_steps=10, train.lam_steps=6000 (protocol `{now}`; "
            f"current `{now}`)") in readme
    assert readme.count("## Preset `cpu`, protocol") == 2
    main_iqm = _iqm_row(summary, "lapo", protocol=now, overrides="")
    assert main_iqm["current_protocol"] == "1"
    assert float(main_iqm["probe_nmse"]) == pytest.approx(
        _iqm([_nmse("cheetah-run", "lapo", 8, s) for s in SEEDS]))
    assert float(_iqm_row(summary, "lapo", protocol=old)["probe_nmse"]) == pytest.approx(7.0)
    other = _iqm_row(summary, "lapo", overrides="train.bc_steps=10, train.lam_steps=6000")
    assert other["current_protocol"] == "0" and float(other["probe_nmse"]) == pytest.approx(9.0)


def _beside_the_main_rows(tmp_path, main_kind, other_kind, overrides_text):
    """Three main-table runs of lapo d8 and three others (probe 7.0) made ``other_kind`` after
    ``main_kind`` marked the first three; the board, its summary, the current protocol and the
    other runs (checked: never in the main section, and in a table of ``overrides_text``)."""
    main_runs = [_result("cheetah-run", "lapo", 8, s) for s in SEEDS]
    others = [_result("cheetah-run", "lapo", 8, s, probe_nmse=7.0) for s in SEEDS]
    for r in main_runs:
        main_kind(r)
    for r in others:
        other_kind(r)
    readme, summary = _board(tmp_path, main_runs + others)  # same seeds: no duplicates
    main = readme.split("## Preset `cpu`, protocol")[0]
    assert "Skipped result files" not in readme and "7.000" not in main
    assert _iqm_row(summary, "lapo", overrides="")["current_protocol"] == "1"
    other = _iqm_row(summary, "lapo", overrides=overrides_text)
    assert other["current_protocol"] == "0" and float(other["probe_nmse"]) == pytest.approx(7.0)
    return readme, leaderboard.current_protocol("cpu"), others


def test_runs_on_davis_videos_get_their_own_section(tmp_path):
    def davis(r):
        r["dataset"] = {"distractor_videos": "DAVIS-2017"}
        r["overrides"] = {"train.bc_steps": 10}

    readme, now, davis_runs = _beside_the_main_rows(
        tmp_path, lambda r: r.update(dataset={"distractor_videos": "procedural"}), davis,
        "train.bc_steps=10, videos=DAVIS-2017")
    assert f"protocol `{now}` with DAVIS-2017 videos and `--set` overrides" in readme
    assert ("Made with DAVIS-2017 distractor videos, not the procedural ones of the main tables "
            f"and --set train.bc_steps=10 (protocol `{now}`; current `{now}`)") in readme
    assert f"(protocol `{now}`, DAVIS-2017 videos, overrides)" in readme  # the tables' titles

    # DAVIS runs alone: the main section says there is no procedural result yet.
    for r in davis_runs:
        r["overrides"] = {}
    (tmp_path / "alone").mkdir()
    readme, _ = _board(tmp_path / "alone", davis_runs)
    assert "without `--set` overrides on the procedural videos in bf16 yet" in readme
    assert f"protocol `{now}` with DAVIS-2017 videos\n" in readme
    assert f"(protocol `{now}`, DAVIS-2017 videos)" in readme


def test_float32_runs_get_their_own_section(tmp_path):
    def fp32(r):
        r["config"]["run"] = {"bf16": False}
        r["run_name"] += "+fp32"

    readme, now, _ = _beside_the_main_rows(
        tmp_path, lambda r: r["config"].update(run={"bf16": True}), fp32, "precision=float32")
    assert f"## Preset `cpu`, protocol `{now}` with float32\n" in readme
    assert ("Made with float32 training, not the bf16 autocast of the main tables "
            f"(protocol `{now}`; current `{now}`)") in readme
    assert f"(protocol `{now}`, float32)" in readme


def test_return_gate_marks_uninformative_returns_and_drops_them_from_aggregates(tmp_path):
    records = [_bc("cheetah-run", 0, norm=0.8, raw=560.0), _bc("walker-walk", 0, 0.2, 140.0)]
    for task in ("cheetah-run", "walker-walk", "hopper-hop"):  # hopper-hop: no bc-labels run
        records += [_result(task, "lapo", 8, s, normalized_return_id=0.3 + 0.1 * s)
                    for s in SEEDS]
    readme, summary = _board(tmp_path, records)

    sections = {t: readme.split(f"### Task `{t}`")[1].split("###")[0]
                for t in ("cheetah-run", "walker-walk", "hopper-hop")}
    assert "†" not in _line(readme, "lapo", sections["cheetah-run"])[0]
    assert "**bc-labels ceiling** is 0.800 ≥ 0.5" in sections["cheetah-run"]
    assert all(c.endswith("†") for c in _line(readme, "lapo", sections["walker-walk"])[0]
               .split(" | ")[4:7])
    assert "**bc-labels ceiling** is 0.200 < 0.5" in sections["walker-walk"]
    assert "**bc-labels ceiling** was not measured" in sections["hopper-hop"]
    assert "†" in _line(readme, "lapo", sections["hopper-hop"])[0]

    # Return / bc-labels: raw ID return over bc-labels' mean raw ID return, "–" without one.
    ratio = metrics.mean_ci([r / 560.0 for s in SEEDS for r in (99.0 + 10 * s, 101.0 + 10 * s)])
    assert f"| {ratio[0]:.3f} ± {(ratio[2] - ratio[1]) / 2:.3f} | 3 |" in \
        _line(readme, "lapo", sections["cheetah-run"])[0] + " | 3 |"
    assert _line(readme, "lapo", sections["hopper-hop"])[0].endswith("| – | 3 |")

    # Aggregates: probe over all three tasks, returns over the one gated-in task only.
    agg = _iqm_row(summary, "lapo")
    assert agg["n_tasks"] == "3" and agg["return_tasks"] == "cheetah-run"
    assert float(agg["normalized_return_id"]) == pytest.approx(_iqm([0.3, 0.4, 0.5]))
    per_task = {r["task"]: r for r in summary if r["statistic"] == "mean"
                and r["method_label"] == "lapo"}
    assert per_task["cheetah-run"]["returns_informative"] == "1"
    assert per_task["walker-walk"]["returns_informative"] == "0"
    assert per_task["walker-walk"]["bc_labels_ceiling"] == "0.2"
    assert per_task["hopper-hop"]["bc_labels_ceiling"] == ""


def test_every_compared_row_aggregates_a_metric_over_the_same_tasks(tmp_path):
    """A run without returns on one task takes that task out of every compared row's return
    aggregate, so no row is ranked over fewer tasks than its neighbours."""
    tasks = ("cheetah-run", "walker-walk")
    records = [_bc(t, 0, norm=0.9, raw=630.0) for t in tasks]
    no_return = {"normalized_return_id": None, "return_id": None, "return_id_episodes": None}
    for t in tasks:
        records += [_result(t, "lapo", 8, s, normalized_return_id=0.2 + 0.1 * s) for s in SEEDS]
        records += [_result(t, "masklam", 8, s, **(no_return if t == "walker-walk" else
                                                   {"normalized_return_id": 0.6 + 0.1 * s}))
                    for s in SEEDS]
    readme, summary = _board(tmp_path, records)
    lapo, masklam = _iqm_row(summary, "lapo"), _iqm_row(summary, "masklam")
    assert lapo["return_tasks"] == masklam["return_tasks"] == "cheetah-run"
    assert float(lapo["normalized_return_id"]) == pytest.approx(_iqm([0.2, 0.3, 0.4]))
    assert float(masklam["normalized_return_id"]) == pytest.approx(_iqm([0.6, 0.7, 0.8]))
    assert lapo["n_tasks"] == "2" and lapo["probe_nmse"] != ""  # the probe keeps both tasks
    assert _line(readme, "lapo")[0].startswith("| `lapo` | 8 | 2 | 1 |")
    assert "takes its task out of that column for all of them" in readme


def test_a_row_without_returns_passing_the_gate_has_no_return_aggregate(tmp_path):
    records = [_bc("cheetah-run", 0, 0.1, 70.0)] + [_result("cheetah-run", "lapo", 8, s)
                                                    for s in SEEDS]
    _, summary = _board(tmp_path, records)
    agg = _iqm_row(summary, "lapo")
    assert agg["return_tasks"] == "" and agg["normalized_return_id"] == ""
    assert agg["probe_nmse"] != ""


def test_rows_whose_latent_is_the_action_show_no_probe_and_no_dim(tmp_path):
    records = [_bc("cheetah-run", 0, 0.8, 560.0, dim=64), _bc("cheetah-run", 1, 0.7, 490.0, dim=6)]
    records += [_result("cheetah-run", "labels", 6, s, latent_is_action=True) for s in (0, 1)]
    for r in records[2:]:
        r["latent_is_action"] = True
    records += [_result("cheetah-run", "lapo", 8, s) for s in SEEDS]
    readme, summary = _board(tmp_path, records)

    bc_rows = _line(readme, "bc-labels")
    # IQM and mean/gap summary rows, one task row: latent_dim 64 and 6 merged
    assert len(bc_rows) == 3
    assert all(row.startswith("| `bc-labels` | – |") for row in bc_rows)
    assert bc_rows[-1].startswith("| `bc-labels` | – | – | – | ")
    assert _line(readme, "labels")[-1].startswith("| `labels` | – | – | – | ")
    assert "0.000" not in bc_rows[-1].split(" | ")[2]
    task_row = next(r for r in summary if r["method_label"] == "bc-labels"
                    and r["statistic"] == "mean")
    assert task_row["latent_dim"] == "" and task_row["probe_nmse"] == ""
    assert task_row["seeds"] == "0 1"
    agg = _iqm_row(summary, "bc-labels")
    assert agg["probe_nmse"] == "" and agg["probe_nmse_n"] == "0"
    assert float(agg["normalized_return_id"]) == pytest.approx(0.75)


def test_cross_task_aggregates_compare_rows_only_over_common_tasks(tmp_path):
    tasks = ("a-task", "b-task", "c-task")
    records = [_result(t, m, 8, s) for t in tasks for m in ("lapo", "masklam") for s in SEEDS]
    records += [_result(t, "oracle", 8, s, probe_nmse=0.1 * s) for t in tasks for s in SEEDS]
    records += [_result("d-task", "oracle", 8, s, probe_nmse=50.0 + s) for s in SEEDS]
    records += [_result("a-task", "masklam[x]", 8, s) for s in SEEDS]
    readme, summary = _board(tmp_path, records)

    # The oracle's extra task is left out: it is aggregated over the tasks all rows cover.
    oracle = _iqm_row(summary, "oracle")
    assert oracle["compared"] == "1" and oracle["tasks"] == "a-task b-task c-task"
    assert float(oracle["probe_nmse"]) == pytest.approx(_iqm([0.0, 0.1, 0.2] * 3))
    apart = _iqm_row(summary, "masklam[x]")
    assert apart["compared"] == "0" and apart["n_tasks"] == "1"
    summary_text = readme.split("### All tasks")[1].split("### Task")[0]
    assert "over tasks that all of them cover" in summary_text
    shown_apart = summary_text.split("Shown apart")[1]
    assert _line(readme, "masklam[x]", shown_apart)[0].startswith(
        "| `masklam[x]` | 8 | over 1 task: a-task |")
    assert not _line(readme, "lapo", shown_apart)


def test_a_single_run_shows_no_interval(tmp_path):
    records = [_result(t, "lapo", 8, 0) for t in ("cheetah-run", "walker-walk")]
    records[0]["metrics"]["return_id_episodes"] = [100.0]
    readme, summary = _board(tmp_path, records)
    row = _line(readme, "lapo", readme.split("### Task `cheetah-run`")[1])[0]
    assert row.startswith(f"| `lapo` | 8 | {_nmse('cheetah-run', 'lapo', 8, 0):.3f} "
                          "(n=1, no interval) |")
    assert "(n=1, no interval) †" in row  # the one-episode return
    assert "± 0.000" not in readme
    assert "(one run per task, no interval)" in _line(readme, "lapo")[0]
    agg = _iqm_row(summary, "lapo")
    assert agg["probe_nmse_low"] == "" and agg["probe_nmse"] != ""


def test_intervals_are_named_and_return_cells_pool_episodes(tmp_path):
    records = [_bc("cheetah-run", 0, 0.8, 560.0)]
    records += [_result("cheetah-run", "lapo", 8, s) for s in SEEDS]
    readme, summary = _board(tmp_path, records)
    assert "Student-t interval over seeds" in readme
    assert "Student-t interval over all evaluation episodes of all seeds" in readme
    assert "stratified-bootstrap" in readme
    episodes = [(r - 5.0) / 695.0 for s in SEEDS for r in (99.0 + 10 * s, 101.0 + 10 * s)]
    mean, low, high = metrics.mean_ci(episodes)
    assert f"| {mean:.3f} ± {(high - low) / 2:.3f} |" in _line(readme, "lapo")[-1]
    row = next(r for r in summary if r["method_label"] == "lapo" and r["statistic"] == "mean")
    assert float(row["normalized_return_id_episodes_low"]) == pytest.approx(low)
    assert row["normalized_return_id_episodes_n"] == "6"
    assert "R_data" in readme and "R_expert" not in readme
    assert "data-collecting policy" in readme


def test_oracle_ood_return_is_marked_same_env_and_left_out_of_ood_aggregates(tmp_path):
    records = [_bc("cheetah-run", 0, 0.8, 560.0)]
    records += [_result("cheetah-run", "lapo", 8, s) for s in SEEDS]
    oracle = [_result("cheetah-run", "oracle", 8, s) for s in SEEDS]
    for r in oracle:
        r["env_id"] = r["ood_env_id"] = "CleanCheetah-v0"
    readme, summary = _board(tmp_path, records + oracle)
    task_row = _line(readme, "oracle")[-1]
    assert "(same env)" in task_row.split(" | ")[5]
    assert "(same env)" not in _line(readme, "lapo")[-1]
    assert _line(readme, "oracle")[0].split(" | ")[7] == "same env"
    agg = _iqm_row(summary, "oracle")
    assert agg["normalized_return_ood"] == "" and agg["ood_same_env"] == "1"
    assert agg["normalized_return_id"] != ""
    assert _iqm_row(summary, "lapo")["normalized_return_ood"] != ""


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: d.update(overrides=["train.lam_steps=1"]), "overrides must be"),
    (lambda d: d.update(latent_is_action=1), "latent_is_action must be"),
    (lambda d: d["metrics"].update(return_id_episodes=[1.0, "x"]), "return_id_episodes"),
    (lambda d: d.update(dataset={"distractor_videos": ["a", "b"]}), "distractor_videos must be"),
    (lambda d: d.update(dataset={"distractor_videos": ""}), "distractor_videos must be"),
    (lambda d: d.update(dataset=[]), "dataset must be"),
])
def test_read_records_checks_the_new_fields(tmp_path, mutate, reason):
    data = _result("cheetah-run", "lapo", 8, 0)
    mutate(data)
    (tmp_path / "r.json").write_text(json.dumps(data))
    records, problems = leaderboard.read_records(tmp_path)
    assert records == [] and len(problems) == 1 and reason in problems[0]


def test_read_records_accepts_the_new_fields(tmp_path):
    data = _result("cheetah-run", "lapo", 8, 0)
    data.update(overrides={}, latent_is_action=False)
    (tmp_path / "r.json").write_text(json.dumps(data))
    records, problems = leaderboard.read_records(tmp_path)
    assert problems == [] and records[0]["_table"].overrides == ""
    assert not records[0]["_no_probe"] and np.isclose(records[0]["metrics"]["probe_nmse"],
                                                       _nmse("cheetah-run", "lapo", 8, 0))


def test_probability_of_improvement_and_performance_profiles_come_from_rliable(tmp_path):
    from rliable.metrics import aggregate_optimality_gap, probability_of_improvement

    tasks = ("cheetah-run", "walker-walk")
    records = [_bc(t, 0, 0.8, 560.0) for t in tasks]
    records += [_result(t, m, 8, s, normalized_return_id=0.1 * s + (0.3 if m == "lapo" else 0.0))
                for t in tasks for m in METHODS for s in SEEDS]
    readme, summary = _board(tmp_path, records)
    out = tmp_path / "board"

    def scores(method, one_minus_nmse):
        return np.array([[1 - _nmse(t, method, 8, s) if one_minus_nmse else
                          0.1 * s + (0.3 if method == "lapo" else 0.0) for t in tasks]
                         for s in SEEDS])

    # P(lapo < masklam in NMSE), computed by rliable on 1 - NMSE, in the table and the CSV.
    expected = probability_of_improvement(scores("lapo", True), scores("masklam", True))
    table = readme.split("### Probability of improvement")[1].split("###")[0]
    assert "1 − NMSE" in table
    assert f"| 8 | `lapo` | `masklam` | {expected:.3f} [" in table
    row = next(csv.DictReader((out / "improvement.csv").open()))
    assert float(row["probe_nmse_p_x_better"]) == pytest.approx(expected)
    assert float(row["normalized_return_id_p_x_better"]) == pytest.approx(
        probability_of_improvement(scores("lapo", False), scores("masklam", False)))
    # rliable's plots, linked from the README (main protocol only).
    for name in ("cpu_d8_poi_nmse.png", "cpu_d8_poi_return-id.png", "cpu_d8_profile_id.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG") and f"]({name})" in readme
    # Mean and optimality gap rows next to the IQM, from rliable.
    gap = next(r for r in summary if r["statistic"] == "optimality_gap"
               and r["method_label"] == "lapo")
    assert float(gap["normalized_return_id"]) == pytest.approx(
        aggregate_optimality_gap(scores("lapo", False)))
    assert "### All tasks (mean and optimality gap)" in readme
    assert gap["probe_nmse"] == "" and gap["probe_nmse_low"] == ""  # a return statistic only


def test_no_performance_profile_without_returns_past_the_gate(tmp_path):
    records = [_result(t, m, 8, s) for t in TASKS for m in METHODS for s in SEEDS]
    readme, _ = _board(tmp_path, records)
    assert "No performance profile" in readme
    assert not list((tmp_path / "board").glob("*_profile_*.png"))
    assert (tmp_path / "board" / "cpu_d8_poi_nmse.png").exists()


def test_the_summary_caption_names_the_seed_counts_it_has():
    from masklam_bench.leaderboard import _summary_caption

    assert "With 2 seeds per task these intervals are too narrow" in _summary_caption(10, [2])
    assert "With 1-3 seeds per task" in _summary_caption(10, [1, 3])
    assert "too narrow" not in _summary_caption(10, [1])  # one run per task: no interval
