"""masklam-bench reproduce's pure parts: thread count, comparison and protocol check (no runs)."""

import json
import math
import re

import pytest

from masklam_bench import reproduce
from masklam_bench.errors import UserError
from masklam_bench.presets import get_preset, preset_record
from masklam_bench.runner import TIME_DEPENDENT_METRICS


def _record(**run):
    return {"config": {"run": {"method": "lapo", "preset": "cpu", "threads": 0, **run},
                       "preset": preset_record(get_preset("cpu"))},
            "metrics": {"probe_nmse": 0.5, "return_id_episodes": [1.0, 2.0],
                        "lam_samples_per_s": 100.0},
            "dataset": {"sha256": {"main_data.hdf5": "ab"}},
            "machine": "x86_64  2 CPUs, torch threads 2"}


def test_the_thread_count_is_the_runs_own_else_the_one_its_machine_gave():
    assert reproduce.recorded_threads(_record(threads=1)) == 1
    assert reproduce.recorded_threads(_record()) == 2  # --threads 0: all cores of that machine
    record = _record()
    record["machine"] = "x86_64"  # nothing to read: all cores here too
    assert reproduce.recorded_threads(record) == 0


def test_the_config_writes_into_the_workdir_and_keeps_the_settings(tmp_path):
    config = reproduce.config_from_record(_record(seed=3, overrides={"train.lam_steps": 10}),
                                          tmp_path)
    assert (config.seed, config.threads, config.overrides) == (3, 2, {"train.lam_steps": 10})
    assert config.runs_root == str(tmp_path / "runs")
    assert config.results_dir == str(tmp_path / "results")
    with pytest.raises(UserError, match="pass --data-root"):
        reproduce.config_from_record(_record(data_root=".../tmp/data"), tmp_path)


def test_speeds_are_not_compared_and_nan_equals_nan():
    old, new = _record(), _record()
    new["metrics"]["lam_samples_per_s"] = 200.0
    old["metrics"]["distractor_nmse"] = new["metrics"]["distractor_nmse"] = math.nan
    diffs, compared = reproduce.differences(old, new)
    assert diffs == [] and compared == len(old["metrics"]) - len(TIME_DEPENDENT_METRICS) + 1
    new["metrics"]["return_id_episodes"] = [1.0, 2.5]
    new["dataset"]["sha256"] = {"main_data.hdf5": "cd"}
    diffs, _ = reproduce.differences(old, new)
    assert [name for name, _, _ in diffs] == ["metrics.return_id_episodes", "dataset.sha256"]
    assert "2 of" in reproduce.report("f.json", diffs, compared)
    # A sam2 run: the SAM 2 mask file it trained on is compared too.
    old["sam_masks"], new["sam_masks"] = {"sha256": "ab"}, {"sha256": "ef"}
    diffs, more = reproduce.differences(old, new)
    assert more == compared + 1 and ("sam_masks.sha256", "ab", "ef") in diffs


def test_an_older_protocol_is_refused_and_the_current_one_passes(tmp_path):
    record = _record()
    config = reproduce.config_from_record(record, tmp_path)
    reproduce.check_protocol("f.json", record, config)  # this version's cpu preset: passes
    record["config"]["preset"]["train"]["lam_steps"] = 1500
    record["code"] = {"git_commit": "0123456789abcdef"}
    with pytest.raises(UserError, match=r"train.lam_steps 1500 -> 3000.*check out commit 0123456"):
        reproduce.check_protocol("f.json", record, config)
    del record["config"]["preset"]
    with pytest.raises(UserError, match="records no preset values"):
        reproduce.check_protocol("f.json", record, config)


@pytest.mark.parametrize("fast", [True, False])
def test_a_bf16_file_rerun_on_a_cpu_without_bf16_says_so(tmp_path, monkeypatch, fast):
    from masklam_bench import precision

    monkeypatch.setattr(precision, "fast_bf16", lambda device: fast)
    bf16 = reproduce.config_from_record(_record(bf16=True), tmp_path)
    fp32 = reproduce.config_from_record(_record(bf16=False), tmp_path)
    assert bf16.bf16 is True and fp32.bf16 is False  # the file's precision, whatever the CPU
    assert bool(reproduce.precision_notes(bf16)) is not fast
    assert reproduce.precision_notes(fp32) == []


@pytest.mark.parametrize("change, message", [
    ({"threads": "x"}, "config.run.threads is 'x'"),
    ({"overrides": [1]}, "config.run.overrides is [1]"),
    ({"latent_dim": "abc"}, "config.run.latent_dim is 'abc'"),
    ({"seed": True}, "config.run.seed is True"),
    ({"preset": None}, "records no preset"),
])
def test_a_hand_edited_result_file_is_refused_with_the_entry_named(tmp_path, change, message):
    record = _record(latent_dim=64, seed=0, overrides={}, bf16=None)
    record["config"]["run"].update(change)
    if change.get("preset", "") is None:
        del record["config"]["run"]["preset"]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(record))
    with pytest.raises(UserError, match=re.escape(message)):
        reproduce.load_record(path)
    record = _record(latent_dim=64, seed=0, overrides={}, bf16=None)
    path.write_text(json.dumps(record))
    assert reproduce.load_record(path) == record


def test_every_run_setting_has_its_types_for_the_check():
    """A RunConfig field of a new annotation would make the check of a result file raise
    KeyError instead of checking it."""
    import dataclasses

    from masklam_bench.runner import RunConfig

    assert {f.type for f in dataclasses.fields(RunConfig)} <= set(reproduce._SETTING_TYPES)
