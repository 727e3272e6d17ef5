"""Scale curves at the smoke preset: snapshots are probed, the ceiling runs bc-labels per size."""

from __future__ import annotations

import json

import pytest

from masklam_bench import cli, curves
from masklam_bench.collect import collect
from masklam_bench.envs import env_id
from masklam_bench.presets import get_preset


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A smoke dataset for cheetah (random policy: no expert needed)."""
    root = tmp_path_factory.mktemp("data")
    data = get_preset("smoke").data
    collect(env_id("cheetah-run", "id"), root / "smoke" / "cheetah-run",
            episodes=data.train_episodes + data.test_episodes, test_episodes=data.test_episodes,
            episode_steps=data.episode_steps, action_noise=data.action_noise, seed=0,
            workers=1, policy="random", preset="smoke", progress=False)
    return root


def test_probe_curve_reads_snapshots_of_one_run(tmp_path, data_root):
    points = curves.probe_curve("cheetah-run", ["masklam"], [2, 4], [0], 8, "smoke", {},
                                str(data_root), str(tmp_path / "runs"), threads=1,
                                progress=False)
    assert [p["step"] for p in points] == [2, 4]
    run_dirs = list((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 1  # one run to the longest step, not one run per point
    assert (run_dirs[0] / "lam_step2.pt").exists() and (run_dirs[0] / "lam_step4.pt").exists()
    # The last snapshot is the finished LAM, whose probe stage 2 already measured.
    stage2 = json.loads((run_dirs[0] / "probe.json").read_text())
    assert points[-1]["probe_nmse"] == pytest.approx(stage2["probe_nmse"])
    rows = curves.summarise_probe(points)
    assert rows[0]["lo"] is None  # one seed: no interval
    assert curves.plot_probe(rows, "t")[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def ceiling_runs(tmp_path_factory, data_root):
    """A two-point smoke ceiling curve: (its folder, its points)."""
    root = tmp_path_factory.mktemp("ceiling")
    points = curves.ceiling_curve("cheetah-run", [3, 4], [2], [0], "smoke", {}, str(data_root),
                                  str(root / "runs"), str(root / "results"), threads=1,
                                  progress=False)
    return root, points


def test_ceiling_curve_runs_bc_labels_at_each_size(ceiling_runs):
    root, points = ceiling_runs
    assert [p["bc_steps"] for p in points] == [3, 4]
    saved = [json.loads(p.read_text())["overrides"] for p in (root / "results").glob("*.json")]
    # The smoke preset's own 3 BC steps need no override: that point is the preset's run.
    assert {} in saved and {"train.bc_steps": 4} in saved
    assert curves.plot_ceiling(points, "t")[:4] == b"\x89PNG"


def test_ceiling_curve_sweeps_random_shift_as_its_own_line(ceiling_runs, data_root):
    root, plain = ceiling_runs
    points = curves.ceiling_curve("cheetah-run", [3], [2], [0], "smoke", {}, str(data_root),
                                  str(root / "runs"), str(root / "shift"), threads=1,
                                  progress=False, shifts=(0, 2))
    assert [p["bc_random_shift"] for p in points] == [0, 2]
    # Shift 0 is the preset's own run (its stages reused); shift 2 trains another policy.
    assert points[0]["episodes"] == plain[0]["episodes"]
    files = {json.loads(f.read_text())["overrides"].get("train.bc_random_shift", 0): f
             for f in (root / "shift").glob("*.json")}
    shifted = json.loads(files[2].read_text())["config"]["preset"]["train"]
    assert shifted["bc_random_shift"] == 2
    assert "bc_random_shift" not in json.loads(files[0].read_text())["config"]["preset"]["train"]
    read, _ = curves.ceiling_points_from_results([root / "results", root / "shift"],
                                                 "cheetah-run", "smoke")
    assert [(p["bc_random_shift"], p["bc_steps"]) for p in read] == [(0, 3), (0, 4), (2, 3)]
    line = [dict(p, bc_steps=s, normalized_return_id=r)
            for p, s, r in ((points[1], 3, 0.1), (points[1], 6, 0.2))]
    fits = curves.fit_ceiling(read[:2] + line)
    assert [(f["bc_random_shift"], f["runs"]) for f in fits] == [(0, 2), (2, 2)]
    assert "shift 2" in curves.describe_fit(fits[1])
    assert curves.plot_ceiling(read, "t", fits)[:4] == b"\x89PNG"


def test_curve_command_rejects_bad_steps(capsys):
    assert cli.main(["curve", "probe", "--steps", "a,b"]) == 2
    assert "--steps must be" in capsys.readouterr().err


def test_ceiling_curve_is_read_back_from_result_files(ceiling_runs, tmp_path):
    root, _ = ceiling_runs
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in (root / "results").glob("*.json"):
        (copy / f.name).write_text(f.read_text())
    other = json.loads(next(copy.glob("*.json")).read_text())
    other["overrides"] = {"train.decoder_steps": 9}
    other["config"]["preset"]["train"]["decoder_steps"] = 9
    (copy / "other.json").write_text(json.dumps(other))
    (copy / "broken.json").write_text("{")
    more = json.loads(next(copy.glob("*bc-labels__s0__smoke+fp32.json")).read_text())  # 3 steps
    more["overrides"] = {**more["overrides"], "train.eval_episodes": 4}
    more["config"]["preset"]["train"]["eval_episodes"] = 4
    more["seed"] = 7
    (copy / "more.json").write_text(json.dumps(more))
    davis = dict(more, seed=8, dataset={**more["dataset"], "distractor_videos": "DAVIS-2017"})
    (copy / "davis.json").write_text(json.dumps(davis))  # another kind of video: not this curve
    four = next(copy.glob("*bc-labels__s0__smoke+fp32+set*.json"))  # 4 steps, measured again
    again = json.loads(four.read_text())
    again["metrics"]["return_id_episodes"] *= 2
    four.write_text(json.dumps(again))
    points, skipped = curves.ceiling_points_from_results([root / "results", copy],
                                                         "cheetah-run", "smoke")
    # seed 7's point differs in its evaluation episodes only: it is measured, not made, otherwise
    assert [(p["bc_steps"], p["seed"]) for p in points] == [(3, 0), (3, 7), (4, 0)]
    reasons = "\n".join(skipped)
    assert "broken.json: not a readable result file" in reasons
    assert "other.json: its preset differs" in reasons
    assert "davis.json: made on DAVIS-2017 distractor videos" in reasons
    assert reasons.count("the same size and seed") == 2  # the copies of the two runs
    # Of the 4-step run and its copy with two episodes, the one with more episodes is kept.
    assert points[-1]["file"] == str(four) and len(points[-1]["episodes"]) == 2
    assert curves.ceiling_points_from_results([copy], "walker-run", "smoke")[0] == []
    fits = curves.fit_ceiling(points)
    assert len(fits) == 1 and curves.plot_ceiling(points, "t", fits)[:4] == b"\x89PNG"


def test_fit_ceiling_extrapolates_along_log_steps():
    points = [{"bc_steps": s, "train_episodes": 24, "normalized_return_id": r}
              for s, r in [(1000, 0.1), (2000, 0.2), (4000, 0.3)]]
    (fit,) = curves.fit_ceiling(points, gate=0.5)
    assert fit["per_doubling"] == pytest.approx(0.1)
    assert fit["steps_to_gate"] == pytest.approx(16000)
    assert fit["per_doubling_ci95"] == pytest.approx([0.1, 0.1])  # on the line: no spread
    noisy = [dict(p, normalized_return_id=r) for p, r in zip(points, [0.1, 0.25, 0.3])]
    (fit,) = curves.fit_ceiling(noisy, gate=0.5)
    lo, hi = fit["per_doubling_ci95"]
    assert lo < fit["per_doubling"] < hi and 0 < fit["p_value"] < 1
    assert fit["steps_to_gate_fastest"] < fit["steps_to_gate"]  # a steeper line gets there first
    assert "95% interval" in curves.describe_fit(fit)
    flat = [dict(p, normalized_return_id=0.2 - 0.01 * i) for i, p in enumerate(points)]
    assert curves.fit_ceiling(flat)[0]["steps_to_gate"] is None  # falling: never reaches it
    assert curves.fit_ceiling(points[:1]) == []  # one size: no line
    (two,) = curves.fit_ceiling(points[:2])  # two sizes: a line, but no interval
    assert two["per_doubling_ci95"] is None and "interval" not in curves.describe_fit(two)


def test_curve_from_results_without_matches_says_so(tmp_path, capsys):
    assert cli.main(["curve", "ceiling", "--from-results", str(tmp_path)]) == 2
    assert "no bc-labels result of cheetah-run" in capsys.readouterr().err
    assert cli.main(["curve", "ceiling", "--from-results", str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def _curve(seed: int, value: float, **extra) -> dict:
    point = {"method": "masklam", "seed": seed, "step": 10, "probe_nmse": value,
             "probe_nmse_untrained": 0.7, "lr": 2e-3, "warmup": 100, "schedule_steps": 10}
    return {"task": "cheetah-run", "preset": "cpu", "dim": 64, "overrides": {},
            "points": [dict(point, **extra)], "summary": []}


def test_probe_curves_of_several_seeds_merge_into_one(tmp_path, capsys):
    files = []
    for seed, value in [(0, 0.2), (1, 0.3), (0, 0.2)]:  # the third repeats the first
        files.append(tmp_path / f"c{len(files)}.json")
        files[-1].write_text(json.dumps(_curve(seed, value)))
    points, overrides, dim, videos = curves.merge_probe_curves(files, "cheetah-run", "cpu")
    assert [(p["seed"], p["probe_nmse"]) for p in points] == [(0, 0.2), (1, 0.3)]
    assert overrides == {} and dim == 64 and videos == "procedural"  # not recorded: procedural
    (row,) = curves.summarise_probe(points)
    assert row["n"] == 2 and row["mean"] == pytest.approx(0.25) and row["lo"] is not None
    out = tmp_path / "out"
    args = ["curve", "probe", "--out", str(out)] + [f"--merge={f}" for f in files]
    assert cli.main(args) == 0
    merged = json.loads((out / "probe_curve_cheetah-run.json").read_text())
    assert len(merged["points"]) == 2 and merged["dim"] == 64
    assert merged["distractor_videos"] == "procedural"

    lapo = _curve(1, 0.3, warmup=0)
    lapo["points"][0]["method"] = "lapo"
    old = _curve(2, 0.3)
    del old["points"][0]["lr"]
    bad = {"disagree": _curve(0, 0.25), "schedule": _curve(1, 0.3, lr=6e-4),
           "task": dict(_curve(2, 0.3), task="walker-run"),
           "control": _curve(0, 0.2, probe_nmse_untrained=0.3),  # same probe, other control
           "dim": dict(_curve(2, 0.3), dim=8192), "nodim": {**_curve(2, 0.3), "dim": None},
           "method_schedule": lapo, "old": old,
           "davis": dict(_curve(2, 0.3), distractor_videos="DAVIS-2017"),
           "fp32": _curve(1, 0.3, bf16=False)}  # files[0]'s points, made before bf16 was kept
    del bad["nodim"]["dim"]
    for name, curve in bad.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(curve))
        assert cli.main(["curve", "probe", "--merge", str(files[0]),
                         "--merge", str(tmp_path / f"{name}.json")]) == 2
    err = capsys.readouterr().err
    assert "disagree on masklam seed 0 at step 10 (probe_nmse)" in err
    assert "disagree on masklam seed 0 at step 10 (probe_nmse_untrained)" in err
    assert err.count("different LAM schedules") == 2 and "is a curve of walker-run" in err
    assert "at latent dim 8192" in err and "records no latent dim" in err
    assert "its points lack lr" in err and "Traceback" not in err
    assert "made on DAVIS-2017 distractor videos" in err
    assert "the points mix bf16 and float32 runs" in err


def test_fit_ceiling_above_the_gate_has_no_fastest_line():
    points = [{"bc_steps": s, "train_episodes": 24, "normalized_return_id": r}
              for s, r in [(1000, 0.6), (2000, 0.75), (4000, 0.8)]]
    (fit,) = curves.fit_ceiling(points, gate=0.5)
    assert fit["steps_to_gate"] < 1000 and fit["steps_to_gate_fastest"] is None


def test_probe_curve_points_without_a_precision_merge_with_bf16_ones(tmp_path):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(_curve(0, 0.2)))  # made before points recorded their precision
    new.write_text(json.dumps(_curve(0, 0.2, bf16=True)))
    points, *_ = curves.merge_probe_curves([old, new], "cheetah-run", "cpu")
    assert [p["bf16"] for p in points] == [True]


def test_float32_ceiling_points_are_a_line_of_their_own():
    points = [{"bc_steps": s, "train_episodes": 24, "normalized_return_id": r, "bf16": bf16}
              for bf16 in (True, False) for s, r in [(1000, 0.1), (2000, 0.2)]]
    fits = curves.fit_ceiling(points)
    assert [(f["bf16"], f["runs"]) for f in fits] == [(False, 2), (True, 2)]
    assert "float32" in curves.describe_fit(fits[0]) and "float32" not in curves.describe_fit(
        fits[1])
    legacy = [{k: v for k, v in p.items() if k != "bf16"} for p in points[:2]]  # bf16 runs
    assert curves.fit_ceiling(legacy)[0]["bf16"] is True
