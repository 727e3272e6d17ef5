"""The GPU check's CPU path at the smoke preset, so the script a GPU session runs cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from masklam_bench import cli
from masklam_bench import gpu_check as check
from masklam_bench.gpu_check import gpu_check
from masklam_bench.presets import get_preset
from masklam_bench.provenance import git_state


def test_gpu_check_measures_every_stage_and_extrapolates_a_run(tmp_path):
    path = tmp_path / "gpu_check.json"
    out = gpu_check("smoke", "cpu", dims=[8], steps=1, workers=1, compile_modes=(False,),
                    collect_steps=10, out=str(path))
    assert out["machine"]["versions"]["torch"] and not out["machine"]["missing"]
    assert out["code"] == {**git_state(), "built_from": None}
    assert out["collect"]["frames_per_s"] > 0 and set(out["collect"]["seconds"]) == {10, 30}
    assert {(r["method"], r["dim"]) for r in out["lam"]} == {("lapo", 8), ("masklam", 8)}
    assert all(r["samples_per_s"] > 0 for r in out["lam"])
    stages = out["extrapolated"]["masklam_d8"]
    assert stages["run_s_without_collect"] == sum(
        stages[k] for k in ("lam_s", "probe_s", "bc_s", "decoder_s", "eval_s"))
    assert "errors" not in out and json.loads(path.read_text()) == json.loads(json.dumps(out))


def test_a_failed_or_late_measurement_keeps_the_others_on_disk(tmp_path, monkeypatch):
    """One measurement raising (a compile error, EGL) is recorded and the rest still run; past
    --max-minutes nothing starts, and what was measured is already in the file."""
    real = check.lam_rate

    def lam_rate(method, *args):
        if method == "masklam":
            raise RuntimeError("no kernel image is available")
        return real(method, *args)

    monkeypatch.setattr(check, "lam_rate", lam_rate)
    path = tmp_path / "gpu_check.json"
    out = gpu_check("smoke", "cpu", dims=[8], steps=1, workers=1, compile_modes=(False,),
                    collect_steps=10, out=str(path))
    assert [r["method"] for r in out["lam"]] == ["lapo"] and out["downstream"]
    (error,) = out["errors"]
    assert error["measurement"] == "LAM masklam d8 compile=False"
    assert "no kernel image" in error["error"] and "masklam_d8" not in out["extrapolated"]
    late = gpu_check("smoke", "cpu", dims=[8], steps=1, workers=1, compile_modes=(False,),
                     out=str(path), max_minutes=0)
    assert late["lam"] == [] and late["collect"] is None and len(late["skipped"]) == 4
    assert json.loads(path.read_text())["machine"]["versions"]["torch"]


def test_the_extrapolation_follows_the_gpu_preset():
    """Stage times are the preset's sizes over the measured rates."""
    preset = get_preset("gpu")
    t, data = preset.train, preset.data
    lam = {"samples_per_s": 1000.0, "dim": 8192}
    down = {"probe_fit_s": 10.0, "probe_rows": 20_000, "bc_step_s": 0.01, "decoder_step_s": 0.002}
    stages = check.extrapolate(preset, lam, down, {"frames_per_s": 800.0, "workers": 16})
    frames = (data.train_episodes + data.test_episodes) * data.episode_steps
    assert stages["lam_s"] == t.lam_steps * t.lam_batch / 1000.0
    assert stages["probe_s"] == 2 * 10.0 * t.probe_fit_transitions / 20_000
    assert stages["bc_s"] == t.bc_steps * 0.01 and stages["decoder_s"] == t.decoder_steps * 0.002
    assert stages["collect_s"] == frames / 800.0 and stages["collect_s_in_run"] == frames / 100.0
    assert stages["eval_s"] == 2 * t.eval_episodes * t.eval_episode_steps / 800.0
    assert stages["bc_latents_gib"] == data.train_episodes * data.episode_steps * 8192 * 4 / 2**30
    no_collect = check.extrapolate(preset, lam, down, None)
    assert no_collect["collect_s"] is None and no_collect["run_s_without_collect"] is None


def test_gpu_check_rejects_a_missing_device(capsys):
    assert cli.main(["gpu-check", "--device", "tpu"]) == 2
    assert "--device must be" in capsys.readouterr().err


@pytest.mark.parametrize("modes", [(False, True), (True,), (False,), ()])
def test_the_compiled_rows_come_last_so_a_time_limit_costs_them_first(tmp_path, monkeypatch,
                                                                        modes):
    """Uncompiled LAM rows, then latent BC/decoder/probe, then collection, then the compiled
    rows (whose compile time on a GPU is the least known); extrapolated for each kind run."""
    order = []

    def lam_rate(method, dim, encoder, batch, steps, device, compile_):
        order.append(f"lam {method} {compile_}")
        return {"method": method, "dim": dim, "compile": compile_, "batch": batch,
                "samples_per_s": 100.0 * (1 + compile_), "first_step_s": 1.0, "peak_gib": None}

    def downstream_rates(dim, *args):
        order.append("downstream")
        return {"dim": dim, "bc_step_s": 0.01, "decoder_step_s": 0.002, "probe_fit_s": 1.0,
                "probe_rows": 20_000, "peak_gib": None}

    def collect_rate(task, workers, steps):
        order.append("collect")
        return {"frames_per_s": 500.0, "workers": workers}

    for name, fn in (("lam_rate", lam_rate), ("downstream_rates", downstream_rates),
                     ("collect_rate", collect_rate)):
        monkeypatch.setattr(check, name, fn)
    out = gpu_check("gpu", "cpu", dims=[64], steps=1, workers=2, compile_modes=modes,
                    out=str(tmp_path / "gpu_check.json"))
    lam = {c: [f"lam lapo {c}", f"lam masklam {c}"] for c in (False, True)}
    assert order == (lam[False] if False in modes else []) + ["downstream", "collect"] + (
        lam[True] if True in modes else [])
    suffixes = [("_compiled" if c else "") for c in (False, True) if c in modes]
    assert set(out["extrapolated"]) == {f"{m}_d64{x}" for m in ("lapo", "masklam")
                                        for x in suffixes}
    if modes == (False, True):
        compiled, plain = out["extrapolated"]["lapo_d64_compiled"], out["extrapolated"]["lapo_d64"]
        assert compiled["lam_s"] == plain["lam_s"] / 2


def test_a_compiled_row_compiles_in_fresh_caches(monkeypatch):
    """LAPO and MaskLAM share their networks: without fresh on-disk caches (Inductor's graphs,
    Triton's kernels) the second compiled row would load the first's and show no compile cost."""
    import contextlib

    import torch._inductor.utils

    from masklam_bench.baselines import get_method

    entered, folders = [], []

    @contextlib.contextmanager
    def fresh_cache(dir=None):  # torch's keeps its folder (made in ``dir``) when a step raises
        folders.append(Path(dir))
        entered.append("in")
        (Path(dir) / "kept").mkdir()
        yield
        entered.append("out")

    monkeypatch.setattr(torch._inductor.utils, "fresh_cache", fresh_cache)
    lapo = get_method("lapo")
    steps, compiled = [], []
    real_step = lapo.train_step
    monkeypatch.setattr(torch._dynamo, "reset", lambda: compiled.append("reset"))
    # The wiring, not a real compile (minutes of C++ on a CPU).
    monkeypatch.setattr(lapo, "compile", lambda self: compiled.append("compile"))
    monkeypatch.setattr(lapo, "train_step",
                        lambda self, batch: steps.append(list(entered)) or real_step(self, batch))
    row = check.lam_rate("lapo", 8, "light", 2, 1, "cpu", True)
    assert row["compile"] and entered == ["in", "out"] and compiled == ["reset", "compile"]
    assert steps and all(seen == ["in"] for seen in steps)  # every step inside the fresh caches
    check.lam_rate("lapo", 8, "light", 2, 1, "cpu", False)
    assert entered == ["in", "out"]  # an uncompiled row needs none
    monkeypatch.setattr(lapo, "train_step", lambda self, batch: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        check.lam_rate("lapo", 8, "light", 2, 1, "cpu", True)
    assert len(folders) == 2 and not any(folder.exists() for folder in folders)
