"""The pipeline at the smoke preset, killed and resumed: a resumed run ends where a run never
killed ends, bit for bit; a changed input is refused; a redone stage redoes what was made from it.

Split from ``test_runner.py`` (whose run configuration it shares; the dataset fixture is conftest's) so that
the two halves of the pipeline's tests can run in separate test workers."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_runner import _config

from masklam_bench import runner
from masklam_bench.baselines.lapo import LAPO
from masklam_bench.fileio import load_checkpoint
from masklam_bench.presets import get_preset
from masklam_bench.runner import TIME_DEPENDENT_METRICS


def test_resume_after_kill_never_redoes_a_finished_stage(tmp_path, data_root, monkeypatch):
    config = _config(tmp_path, data_root, "lapo")
    calls = {"train": 0}
    original = LAPO.train_step

    def counting(self, batch):
        calls["train"] += 1
        return original(self, batch)

    monkeypatch.setattr(LAPO, "train_step", counting)
    monkeypatch.setattr(runner, "CHECKPOINT_EVERY", 1)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    # Killed during stage 2: stage 1 is finished and saved.
    monkeypatch.setattr(runner, "probe", killed)
    with pytest.raises(KeyboardInterrupt):
        runner.run(config, progress=False)
    lam_steps = get_preset("smoke").train.lam_steps
    assert calls["train"] == lam_steps
    assert not (tmp_path / "results" / f"{config.run_name}.json").exists()
    monkeypatch.undo()
    monkeypatch.setattr(LAPO, "train_step", counting)
    result = runner.run(config, progress=False)
    assert calls["train"] == lam_steps  # stage 1 was not redone
    path = tmp_path / "results" / f"{config.run_name}.json"
    assert path.exists()
    assert result["metrics"]["probe_nmse"] is not None

    # Run again once finished: nothing is trained and the file keeps when it was made; a
    # half-written file that a SIGKILL left behind is cleared away.
    stale = tmp_path / "runs" / result["run_name"] / ".lam_final.pt.x1y2z3.tmp"
    stale.write_bytes(b"half a checkpoint")
    recorded = json.loads(path.read_text())
    recorded["created"] = "2000-01-01T00:00:00Z"
    path.write_text(json.dumps(recorded))
    assert runner.run(config, progress=False)["created"] == "2000-01-01T00:00:00Z"
    assert calls["train"] == lam_steps
    assert json.loads(path.read_text()) == recorded
    assert not stale.exists()
    # A file that differs in what it holds is written again.
    recorded["metrics"]["probe_nmse"] = -1.0
    path.write_text(json.dumps(recorded))
    assert runner.run(config, progress=False)["created"] != "2000-01-01T00:00:00Z"
    assert json.loads(path.read_text())["metrics"] == result["metrics"]


def test_resume_inside_lam_training_matches_an_uninterrupted_run(tmp_path, data_root,
                                                                  monkeypatch):
    monkeypatch.setattr(runner, "CHECKPOINT_EVERY", 1)
    full = runner.run(_config(tmp_path / "a", data_root, "lapo"), progress=False)
    original = LAPO.train_step
    monkeypatch.setattr(LAPO, "train_step", _killed_at_step_two(original))
    with pytest.raises(KeyboardInterrupt):
        runner.run(_config(tmp_path / "b", data_root, "lapo"), progress=False)
    monkeypatch.setattr(LAPO, "train_step", original)
    resumed = runner.run(_config(tmp_path / "b", data_root, "lapo"), progress=False)
    assert resumed["metrics"]["probe_nmse"] == full["metrics"]["probe_nmse"]  # bit for bit
    name = full["run_name"]
    weights = [load_checkpoint(tmp_path / d / "runs" / name / "lam_final.pt")["method"]
               for d in ("a", "b")]
    tensors = [dict(_tensors(w)) for w in weights]  # networks and AdamW state
    assert tensors[0].keys() == tensors[1].keys() and len(tensors[0]) > 10
    assert all(torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0])


def _killed_at_step_two(train_step):
    """``train_step`` as a method that raises KeyboardInterrupt (as Ctrl-C would) at its second
    call, after one step has been checkpointed."""
    calls = {"n": 0}

    def dies_at_step_two(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return train_step(self, batch)

    return dies_at_step_two


def _tensors(tree, prefix=""):
    """(path, tensor) for every tensor in nested dicts and lists."""
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _tensors(v, f"{prefix}/{i}")


@pytest.mark.parametrize("stage", [3, 4])
def test_resume_in_latent_bc_or_decoder_matches_an_uninterrupted_run(tmp_path, data_root,
                                                                      monkeypatch, stage):
    """Killed in stage 3 (latent BC) or 4 (decoder): the resumed run builds the policy and the
    decoder from the same seeded weights and ends with the same returns as a run never killed."""
    full = runner.run(_config(tmp_path / "a", data_root, "lapo"), progress=False)
    original = runner._fit_indexed
    calls = {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == stage - 2:  # call 1 is stage 3's latent BC, call 2 stage 4's decoder
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    config = _config(tmp_path / "b", data_root, "lapo")
    monkeypatch.setattr(runner, "_fit_indexed", dies)
    with pytest.raises(KeyboardInterrupt):
        runner.run(config, progress=False)
    run_dir = Path(config.runs_root) / config.run_name
    assert (run_dir / "bc.pt").exists() == (stage == 4)
    assert not (run_dir / "decoder.pt").exists()
    monkeypatch.setattr(runner, "_fit_indexed", original)
    resumed = runner.run(config, progress=False)
    a_dir = Path(tmp_path / "a" / "runs") / config.run_name
    for name, key in (("bc.pt", "policy"), ("decoder.pt", "decoder")):
        want = torch.load(a_dir / name, weights_only=True)[key]
        got = torch.load(run_dir / name, weights_only=True)[key]
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want), name
    for name in ("return_id_episodes", "return_ood_episodes"):
        assert resumed["metrics"][name] == full["metrics"][name]


@pytest.mark.parametrize("shift", [0, 2])
def test_resume_inside_latent_bc_matches_an_uninterrupted_run(tmp_path, data_root, monkeypatch,
                                                              shift):
    """Killed between two BC checkpoints: the fit resumes from the last one (weights, AdamW,
    schedule, sampler and its random shifts) and ends on the weights of a fit never killed; the
    checkpoint then goes."""
    monkeypatch.setattr(runner, "BC_CHECKPOINT_EVERY", 1)
    sets = {"overrides": {"train.bc_random_shift": shift}} if shift else {}
    full = runner.run(_config(tmp_path / "a", data_root, "lapo", **sets), progress=False)
    original = runner.LatentPolicy.forward
    calls = {"n": 0}

    def dies_in_step_three(self, x):
        if self.training:
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
        return original(self, x)

    config = _config(tmp_path / "b", data_root, "lapo", **sets)
    run_dir = Path(config.runs_root) / config.run_name
    monkeypatch.setattr(runner.LatentPolicy, "forward", dies_in_step_three)
    with pytest.raises(KeyboardInterrupt):
        runner.run(config, progress=False)
    assert load_checkpoint(run_dir / "bc_ckpt.pt")["step"] == 2  # a weights-only load
    monkeypatch.setattr(runner.LatentPolicy, "forward", original)
    resumed = runner.run(config, progress=False)
    assert resumed["metrics"]["return_id_episodes"] == full["metrics"]["return_id_episodes"]
    want = torch.load(tmp_path / "a" / "runs" / config.run_name / "bc.pt", weights_only=True)
    got = torch.load(run_dir / "bc.pt", weights_only=True)
    assert all(torch.equal(want["policy"][k], got["policy"][k]) for k in want["policy"])
    assert not (run_dir / "bc_ckpt.pt").exists()


def test_paper_networks_run_through_the_pipeline(tmp_path, data_root, monkeypatch):
    """The gpu preset's IMPALA networks, at the smoke preset's sizes on the CPU: every stage
    (LAM, probe, latent BC, decoder, rollouts) runs with them, not only with the light encoder.
    masklam-full is the widest case: the same networks plus the mask channel and k-step futures."""
    import dataclasses

    smoke = get_preset("smoke")
    impala = dataclasses.replace(smoke, train=dataclasses.replace(smoke.train, encoder="impala"))
    monkeypatch.setattr(runner, "get_preset", lambda name: impala)
    result = runner.run(_config(tmp_path, data_root, "masklam-full"), progress=False)
    assert result["config"]["lam"]["encoder"] == "impala"
    assert result["metrics"]["probe_nmse"] >= 0
    assert len(result["metrics"]["return_ood_episodes"]) == smoke.train.eval_episodes


def test_a_resume_with_other_inputs_is_refused(tmp_path, data_root):
    config = _config(tmp_path, data_root, "lapo")
    run_dir = tmp_path / "runs" / config.run_name
    run_dir.mkdir(parents=True)
    runner.run(config, progress=False)
    identity = json.loads((run_dir / "identity.json").read_text())
    assert identity["cpu_threads"] == 1 and identity["compiled"] is False
    assert "sam_masks_sha256" not in identity  # exact masks: no SAM 2 file to follow
    (run_dir / "identity.json").write_text(json.dumps({**identity, "method_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="method_sha256"):  # as if lapo.py had been edited
        runner.run(config, progress=False)
    (run_dir / "identity.json").write_text(json.dumps({**identity, "harness_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="harness_sha256"):  # as if sampling.py had been edited
        runner.run(config, progress=False)
    # Another thread count rounds differently on the CPU: refused, naming both counts ...
    (run_dir / "identity.json").write_text(json.dumps(identity))
    threads = torch.get_num_threads()
    try:
        with pytest.raises(ValueError, match="cpu_threads: 1 then, 2 now"):
            runner.run(dataclasses.replace(config, threads=2), progress=False)
    finally:
        torch.set_num_threads(threads)
    # ... except in a folder recorded before thread counts (and the harness's code) were: it is
    # checked without them.
    del identity["cpu_threads"], identity["harness_sha256"]
    (run_dir / "identity.json").write_text(json.dumps(identity))
    assert runner.run(config, progress=False)["metrics"]["probe_nmse"] is not None


def test_a_redone_stage_redoes_the_stages_made_from_it(tmp_path, data_root):
    """Deleting lam_final.pt (as the advice for a damaged checkpoint says) retrains the LAM, and
    the probe, latent BC, decoder and rollouts are made again from it, not loaded."""
    config = _config(tmp_path, data_root, "lapo")
    first = runner.run(config, progress=False)["metrics"]
    run_dir = tmp_path / "runs" / config.run_name
    probe = json.loads((run_dir / "probe.json").read_text())
    (run_dir / "probe.json").write_text(json.dumps({**probe, "probe_nmse": 123.0}))
    eval_json = json.loads((run_dir / "eval.json").read_text())
    (run_dir / "eval.json").write_text(json.dumps({k: [0.0] * len(v)
                                                   for k, v in eval_json.items()}))
    (run_dir / "lam_final.pt").unlink()
    again = runner.run(config, progress=False)["metrics"]
    assert {k: v for k, v in again.items() if k not in TIME_DEPENDENT_METRICS} == {
        k: v for k, v in first.items() if k not in TIME_DEPENDENT_METRICS}


def test_settings_that_change_a_result_give_the_run_its_own_name(tmp_path, data_root):
    base = _config(tmp_path, data_root, "lapo", bf16=True)
    fp32 = _config(tmp_path, data_root, "lapo", bf16=False)
    longer = _config(tmp_path, data_root, "lapo", bf16=True, overrides={"train.lam_steps": 4})
    names = {base.run_name, fp32.run_name, longer.run_name}
    assert len(names) == 3 and "+fp32" in fp32.run_name and "+set-" in longer.run_name
    result = runner.run(longer, progress=False)
    assert result["overrides"] == {"train.lam_steps": 4}
    assert result["config"]["preset"]["train"]["lam_steps"] == 4
    assert (tmp_path / "runs" / longer.run_name / "lam_final.pt").exists()


# LAOM, LAOM+labels and masked LAOM through the whole pipeline.

@pytest.mark.parametrize("method", ["laom", "laom-labels", "laom-masked"])
def test_laom_methods_run_the_smoke_pipeline_and_resume_after_a_kill(tmp_path, data_root,
                                                                       monkeypatch, method):
    """Each writes its result file; killed inside LAM training, it resumes to the same metrics
    (the EMA target, the augmentation generator and, for laom-labels, the labelled batches'
    generator are all checkpointed)."""
    from masklam_bench.baselines.laom import LAOM

    monkeypatch.setattr(runner, "CHECKPOINT_EVERY", 1)
    full = runner.run(_config(tmp_path / "a", data_root, method), progress=False)
    assert (tmp_path / "a" / "results" / f"{full['run_name']}.json").exists()
    assert full["method"] == method and full["metrics"]["probe_nmse"] >= 0
    assert full["config"]["lam"]["max_future"] == 10
    original = LAOM.train_step
    config = _config(tmp_path / "b", data_root, method)
    monkeypatch.setattr(LAOM, "train_step", _killed_at_step_two(original))
    with pytest.raises(KeyboardInterrupt):
        runner.run(config, progress=False)
    assert (Path(config.runs_root) / config.run_name / "lam_ckpt.pt").exists()
    monkeypatch.setattr(LAOM, "train_step", original)
    resumed = runner.run(config, progress=False)
    same = {k: v for k, v in full["metrics"].items() if k not in TIME_DEPENDENT_METRICS}
    assert {k: v for k, v in resumed["metrics"].items()
            if k not in TIME_DEPENDENT_METRICS} == same


def test_laom_labels_supervision_reads_only_the_labelled_subset(tmp_path, data_root):
    """Actions outside the labelled subset are NaN: LAM training stays finite. NaN inside it
    makes the loss NaN, so the first check would fail if an unlabelled action were read."""
    import dataclasses
    import math

    from masklam_bench.dataset import labelled_subset, load_frames
    from masklam_bench.sampling import TransitionSampler

    preset = get_preset("smoke")
    config = _config(tmp_path, data_root, "laom-labels")
    train = load_frames(runner.dataset_path(config), "train", clean=False)
    labelled = labelled_subset(train, preset.data.labelled_transitions)
    assert len(labelled) < len(train.transitions)
    inside = np.zeros(len(train.actions), dtype=bool)
    inside[labelled] = True
    for name, poisoned, finite in (("outside", ~inside, True), ("inside", inside, False)):
        actions = train.actions.copy()
        actions[poisoned] = np.nan
        data = dataclasses.replace(train, actions=actions)
        method = runner.build_method(config, preset, train.image_size, train.action_dim, 0)
        sampler = TransitionSampler(data, method.config.context_frames, method.config.max_future)
        (tmp_path / name).mkdir()
        log = runner.train_lam(method, sampler, 4, preset.train.lam_batch, tmp_path / name,
                               seed=0, progress=False, labelled=labelled)
        assert all(math.isfinite(loss) for loss in log["loss"]) is finite, name
        if finite:
            assert all(torch.isfinite(p).all() for p in method.nets.parameters())
    with pytest.raises(ValueError, match="pass the labelled subset"):
        runner.train_lam(method, sampler, 1, 2, tmp_path, seed=0, progress=False)


def test_a_damaged_json_file_in_a_run_folder_is_a_clear_error(tmp_path, data_root):
    """A hand-edited or half-written JSON file of a run folder is named, with what to do, as a
    damaged checkpoint is; nothing is overwritten."""
    from masklam_bench.errors import CheckpointError

    config = _config(tmp_path, data_root, "lapo")
    runner.run(config, progress=False)
    run_dir = tmp_path / "runs" / config.run_name
    for name, hint in (("probe.json", "delete it to redo the stage"),
                       ("timings.json", "delete it (only the stages' recorded times go)"),
                       ("identity.json", "delete the run folder to start the run again")):
        good = (run_dir / name).read_text()
        (run_dir / name).write_text("{bad")
        with pytest.raises(CheckpointError, match=f"{name} is unreadable .*; {re.escape(hint)}"):
            runner.run(config, progress=False)
        assert (run_dir / name).read_text() == "{bad"
        (run_dir / name).write_text(good)
    assert runner.run(config, progress=False)["metrics"]["probe_nmse"] is not None
