"""The GPU check's CPU path at the smoke preset, so the script a GPU session runs cannot rot."""

from __future__ import annotations

import json

from masklam_bench import cli
from masklam_bench.gpu_check import gpu_check


def test_gpu_check_measures_every_stage_and_extrapolates_a_run():
    out = gpu_check("smoke", "cpu", dims=[8], steps=1, workers=1, compile_modes=(False,),
                    collect_steps=10)
    assert out["machine"]["versions"]["torch"] and not out["machine"]["missing"]
    assert out["collect"]["frames_per_s"] > 0
    assert {(r["method"], r["dim"]) for r in out["lam"]} == {("lapo", 8), ("masklam", 8)}
    assert all(r["samples_per_s"] > 0 for r in out["lam"])
    stages = out["extrapolated"]["masklam_d8"]
    assert stages["run_s_without_collect"] == sum(
        v for k, v in stages.items() if k not in ("collect_s", "run_s_without_collect"))
    json.dumps(out)  # the CLI writes it as JSON


def test_gpu_check_rejects_a_missing_device(capsys):
    assert cli.main(["gpu-check", "--device", "tpu"]) == 2
    assert "--device must be" in capsys.readouterr().err
