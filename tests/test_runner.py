"""The whole pipeline at the smoke preset: result files, resume after a kill, plug-ins, bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from masklam_bench import cli, runner
from masklam_bench.baselines.lapo import LAPO
from masklam_bench.collect import collect
from masklam_bench.envs import env_id
from masklam_bench.errors import UserError
from masklam_bench.presets import get_preset
from masklam_bench.runner import TIME_DEPENDENT_METRICS


class MyLAM(LAPO):
    """A plug-in method defined outside the package, found through ``module:Class``."""

    name = "my-lam"


class NarrowLatents(LAPO):
    """A plug-in whose ``encode`` returns 3 of its latent's columns."""

    name = "narrow-latents"

    def encode(self, batch):
        return super().encode(batch)[:, :3]


class NoLoss(LAPO):
    """A plug-in whose ``train_step`` logs its loss under another key."""

    name = "no-loss"

    def train_step(self, batch):
        return {"total": super().train_step(batch)["loss"]}


def _config(tmp_path, data_root, method="masklam", **kwargs):
    return runner.RunConfig(method=method, task="cheetah-run", latent_dim=8, seed=0,
                            preset="smoke", device="cpu", data_root=str(data_root),
                            runs_root=str(tmp_path / "runs"),
                            results_dir=str(tmp_path / "results"), threads=1, **kwargs)


BUILT_IN = ("masklam", "lapo", "oracle", "bc-labels", "masklam-full", "untrained-idm",
            "bc-labelled", "laom", "laom-labels", "laom-masked")
"""Every registered method, run once at the smoke preset for the module."""


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory, data_root):
    """One smoke run of every built-in method: (results folder, {method: result})."""
    root = tmp_path_factory.mktemp("smoke")
    return root, {m: runner.run(_config(root, data_root, m), progress=False) for m in BUILT_IN}


def test_smoke_pipeline_writes_result_and_leaderboard(smoke_results):
    from masklam_bench.leaderboard import read_records, write_leaderboard

    root, results = smoke_results
    for method, result in results.items():
        metrics = result["metrics"]
        if result["latent_is_action"]:  # bc-labels, bc-labelled: nothing to probe
            assert metrics["probe_nmse"] is None and metrics["probe_nmse_untrained"] is None
            assert "__d" not in result["run_name"]
        else:
            assert metrics["probe_nmse"] >= 0
            assert metrics["distractor_nmse"] >= 0  # the dataset records the background's motion
        assert result["code"]["method_sha256"] and "git_commit" in result["code"]
        # Result files get committed: they name no folder of this machine (tmp_path here).
        folders = [result["dataset"]["path"], *(result["config"]["run"][k]
                                                for k in ("data_root", "runs_root", "results_dir"))]
        assert not any(Path(f).is_absolute() or str(root) in f for f in folders), folders
        # The oracle's clean env plays none, but it records its batch's videos.
        assert result["dataset"]["distractor_videos"] == "procedural"
        # Methods without a LAM stage have no LAM throughput; every LAM does.
        no_lam = result["latent_is_action"] or method == "untrained-idm"
        assert (metrics["lam_samples_per_s"] is None) == no_lam
        if not no_lam:
            assert metrics["lam_samples_per_s"] > 0
        assert len(metrics["return_id_episodes"]) == get_preset("smoke").train.eval_episodes
        path = root / "results" / f"{result['run_name']}.json"
        saved = json.loads(path.read_text())
        assert saved["config"]["run"]["method"] == method
        assert saved["versions"]["torch"] == torch.__version__
    assert results["masklam-full"]["latent_dim"] == 8
    records, problems = read_records(root / "results")
    assert len(records) == len(BUILT_IN) and not problems
    written = write_leaderboard(root / "results", root / "board")
    readme = (root / "board" / "README.md").read_text()
    assert "masklam" in readme and "lapo" in readme
    assert written


def test_plugin_method_runs_through_module_class(tmp_path, data_root):
    result = runner.run(_config(tmp_path, data_root, f"{__name__}:MyLAM"), progress=False)
    # The row carries the name the class declares; the module path and the source's hash say
    # which code made it.
    assert result["method"] == "my-lam" and result["method_path"] == f"{__name__}:MyLAM"
    assert Path(__file__).name in result["code"]["method_files"]
    assert len(result["code"]["method_sha256"]) == 64
    assert list((tmp_path / "results").glob("*MyLAM*"))


@pytest.mark.parametrize("cls, message", [
    ("NarrowLatents", (r"NarrowLatents.encode returned latents of shape \(\d+, 3\) for a batch "
                      r"of \d+; it must return \(batch, latent_dim\) = \(\d+, 8\)")),
    ("NoLoss", r"NoLoss.train_step must return a dict holding at least 'loss'"),
])
def test_a_plug_in_that_breaks_the_interface_is_told_what_it_broke(tmp_path, data_root, cls,
                                                                     message):
    from masklam_bench.errors import PluginError

    with pytest.raises(PluginError, match=message):
        runner.run(_config(tmp_path, data_root, f"{__name__}:{cls}"), progress=False)


def test_worked_example_submission_runs(tmp_path, data_root, monkeypatch):
    examples = Path(__file__).resolve().parents[1] / "examples"
    monkeypatch.syspath_prepend(str(examples))
    result = runner.run(_config(tmp_path, data_root, "soft_masklam:SoftMaskLAM"), progress=False)
    assert result["metrics"]["probe_nmse"] >= 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--method", "lapp"], "lapo"),
        (["run", "--method", "masklam", "--dims", "64,,x"], "--dims must be"),
        (["run", "--method", "masklam", "--dims", "0"], "--dims must be"),
        (["run", "--method", "masklam", "--envs", "cheetah,ant"], "Unknown task 'ant'"),
        (["run", "--method", "masklam", "--seeds", "a"], "e.g. --seeds 0,1,2"),
        (["run", "--method", "nomodule:MyLAM"], "PYTHONPATH"),
        (["run", "--method", "masklam", "--device", "tpu"], "--device must be"),
        (["run", "--method", "masklam", "--dims", "99999999999"], "largest latent size"),
        (["run", "--method", "masklam", "--set", "train.lam_stps=5"], "Did you mean 'train.lam_steps'"),
        (["run", "--method", "masklam", "--set", "train.lam_lr=fast"], "expected a number"),
        (["run", "--method", "masklam", "--set", "lam_steps"], "KEY=VALUE"),
        (["run", "--method", "masklam", "--set", "train.bc_random_shift=40"], "at most 16"),
        (["run", "--method", "masklam", "--set", "train.lam_batch=0"], "at least 1"),
        (["run", "--method", "masklam", "--set", "data.test_episodes=0"], "at least 1"),
        (["run", "--method", "masklam", "--set", "data.episode_steps=2000"], "at most 1000"),
        (["curve", "ceiling", "--shifts", "0,40"], "at most 16"),
        (["curve", "ceiling", "--set", "train.bc_steps=9"], "the ceiling curve sweeps it"),
        (["run", "--method", "lapo", "--mask-source", "dilate-3"], "trains without agent masks"),
        (["run", "--method", "lapo", "--preset", "cpu", "--labels", "999999"], "label fewer"),
        (["run", "--method", "masklam", "--envs", "DistractingCheetahOOD-v1"], "name the task"),
        (["run", "--method", "masklam", "--device", "meta"], "--device must be"),
        (["bench-train", "--device", "tpu"], "--device must be"),
        (["bench-train", "--dims", "100000000"], "largest latent size"),
        (["gpu-check", "--dims", "100000000"], "largest latent size"),
        (["curve", "probe", "--methods", "lapo,bc-labels"], "bc-labels trains no LAM"),
        (["masks", "--dataset", "x", "--checkpoint", "random", "--device", "tpu"],
         "--device must be"),
        (["eval-expert", "--task", "cheetah,,walker"], "Unknown task ''"),
    ],
)
def test_bad_run_arguments_are_clear_errors(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--method", "masklam", "--threads", "-2"], "--threads: must be at least 0"),
        (["train-expert", "--task", "cheetah", "--threads", "0"], "--threads: must be at least 1"),
        (["masks", "--dataset", "x", "--threads", "-1"], "--threads: must be at least 0"),
        (["show", "DistractingCheetah-v0", "--frames", "-1"], "--frames: must be at least 1"),
        (["show", "DistractingCheetah-v0", "--every", "0"], "--every: must be at least 1"),
        (["bench-env", "--steps", "0"], "--steps: must be at least 1"),
        (["eval-expert", "--task", "cheetah", "--episodes", "x"], "expected an integer"),
        (["show", "DistractingCheetah-v0", "--seed", "-1"], "--seed: must be at least 0"),
        (["train-expert", "--task", "cheetah", "--steps", "0"], "--steps: must be at least 1"),
        (["bench-train", "--batch", "0"], "--batch: must be at least 1"),
        (["gpu-check", "--steps", "-1"], "--steps: must be at least 1"),
        (["gpu-check", "--max-minutes", "nan"], "--max-minutes: must be a finite number above 0"),
        (["curve", "probe", "--dim", "0"], "--dim: must be at least 1"),
        (["curve", "probe", "--threads", "-1"], "--threads: must be at least 0"),
    ],
)
def test_out_of_range_counts_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_run_names_every_task_without_an_expert_before_starting(tmp_path, monkeypatch, capsys):
    from masklam_bench import experts

    monkeypatch.setattr(experts, "WEIGHTS_DIR", tmp_path / "no-weights")
    argv = ["run", "--method", "lapo", "--envs", "cheetah,walker", "--preset", "smoke",
            "--out", str(tmp_path / "results"), "--data-root", str(tmp_path / "data")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "no shipped expert for cheetah-run, walker-run" in err
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


def test_dataset_of_another_expert_is_refused(tmp_path, fake_cheetah_expert):
    """A dataset collected with other expert weights (e.g. an older shipped expert) is reported,
    never silently reused by a run of the current expert."""
    other = fake_cheetah_expert(tmp_path / "other-cheetah.pt", hidden=8, seed=1)
    from masklam_bench.experts import available_experts

    if "cheetah-run" not in available_experts():
        pytest.skip("no shipped cheetah-run expert to compare against")
    data = get_preset("smoke").data
    root = tmp_path / "data"
    collect(env_id("cheetah-run", "id"), root / "smoke" / "cheetah-run",
            episodes=data.train_episodes + data.test_episodes, test_episodes=data.test_episodes,
            episode_steps=data.episode_steps, action_noise=data.action_noise, seed=0,
            workers=1, preset="smoke", progress=False, expert_path=other)
    config = _config(tmp_path, root)
    with pytest.raises(ValueError, match="expert_sha256"):
        runner.ensure_dataset(config, get_preset("smoke"), progress=False)


@pytest.mark.parametrize("method", BUILT_IN)
def test_every_builtin_method_reproduces_its_result_file(tmp_path, data_root, smoke_results,
                                                         method):
    # Same seed, same thread count, same machine: identical metrics, bit for bit.
    first = smoke_results[1][method]["metrics"]
    again = runner.run(_config(tmp_path, data_root, method), progress=False)["metrics"]
    assert ({k: v for k, v in first.items() if k not in TIME_DEPENDENT_METRICS}
            == {k: v for k, v in again.items() if k not in TIME_DEPENDENT_METRICS})


def test_a_dataset_corrupted_in_place_is_refused_before_training(tmp_path, data_root):
    """A byte changed in the dataset file (same size, so the cheap checks pass) is caught by
    its sha256 when the run opens, with one sentence that says what to do."""
    import shutil

    from masklam_bench import dataset as ds
    from masklam_bench.dataset import DatasetError

    root = tmp_path / "data"
    shutil.copytree(data_root / "smoke", root / "smoke")
    (main,) = (root / "smoke" / "cheetah-run").rglob(ds.MAIN_FILE)
    raw = bytearray(main.read_bytes())
    raw[-100] ^= 0xFF
    main.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="is corrupted .* collect it again"):
        runner.run(_config(tmp_path, root, "lapo"), progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt"))


def test_a_run_folder_in_use_by_another_process_is_refused(tmp_path, data_root):
    """Two processes on one run folder (a sweep launched again while its jobs run) would build
    stages on each other's: the second is refused while the first holds the folder's lock."""
    import fcntl

    from masklam_bench.provenance import RUN_LOCK_FILE

    config = _config(tmp_path, data_root, "lapo")
    run_dir = tmp_path / "runs" / config.run_name
    run_dir.mkdir(parents=True)
    with open(run_dir / RUN_LOCK_FILE, "a") as other:  # another open file: as another process
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(UserError, match="in use by another process"):
            runner.run(config, progress=False)
    assert runner.run(config, progress=False)["metrics"]["probe_nmse"] is not None
    assert runner.run(config, progress=False)  # released at the end of each run


def test_labelled_only_bc_sees_only_the_labelled_subset(tmp_path, data_root, monkeypatch):
    seen = []
    original = runner._fit_indexed

    def spy(module, inputs, targets, pool, *args, **kwargs):
        seen.append(np.asarray(pool).copy())
        return original(module, inputs, targets, pool, *args, **kwargs)

    monkeypatch.setattr(runner, "_fit_indexed", spy)
    runner.run(_config(tmp_path, data_root, "bc-labelled"), progress=False)
    budget = get_preset("smoke").data.labelled_transitions
    assert len(seen[0]) == budget  # stage 3 pool: the labelled subset only


def test_sampler_gives_next_frame_and_target_stack(data_root):
    from masklam_bench.dataset import load_frames
    from masklam_bench.sampling import TransitionSampler

    train = load_frames(data_root / "smoke" / "cheetah-run", "train", clean=False)
    sampler = TransitionSampler(train, context_frames=3, max_future=10)
    index = train.transitions
    k = np.full(len(index), 10)
    batch = sampler.batch(index, k)
    frames = torch.from_numpy(train.frames).permute(0, 3, 1, 2)
    assert torch.equal(batch["next"], frames[index + 1])
    assert torch.equal(batch["target_context"][:, -1], batch["target"])
    target = index + batch["k"].numpy()
    for lag in (1, 2):
        expected = np.maximum(target - lag, train.episode_start[index])
        assert torch.equal(batch["target_context"][:, -1 - lag], frames[expected])
    assert torch.equal(batch["next_mask"], torch.from_numpy(train.unpack_masks(index + 1)))
    # The padding at episode start repeats the first frame, as the context's does.
    first = index == train.episode_start[index]
    assert first.any() and torch.equal(batch["context"][first, 0], frames[index[first]])


def test_decoder_can_train_on_the_latent_policys_predictions(tmp_path, data_root, monkeypatch):
    calls = []
    original = runner.policy_latents

    def spy(policy, sampler, index):
        calls.append(len(index))
        return original(policy, sampler, index)

    monkeypatch.setattr(runner, "policy_latents", spy)
    config = _config(tmp_path, data_root, "lapo", overrides={"train.decoder_inputs": "policy"})
    result = runner.run(config, progress=False)
    assert calls == [get_preset("smoke").data.labelled_transitions]  # LAOM's protocol
    assert result["config"]["preset"]["train"]["decoder_inputs"] == "policy"


def test_a_finished_run_loads_and_refits_its_decoder_exactly(smoke_results, data_root):
    root, _ = smoke_results
    trained = runner.load_trained(_config(root, data_root, "lapo"))
    saved = trained.decoder.state_dict()
    # Stage 4 refitted in memory under the run's own protocol gives the saved weights bit for bit.
    again = trained.other_decoder("idm").state_dict()
    assert all(torch.equal(saved[k], again[k]) for k in saved)
    other = trained.other_decoder("policy").state_dict()
    assert not all(torch.equal(saved[k], other[k]) for k in saved)
    assert (root / "runs" / trained.run.config.run_name / "decoder.pt").exists()


def test_loading_an_unfinished_run_is_a_clear_error(tmp_path, data_root):
    with pytest.raises(UserError, match="has not finished stage 4"):
        runner.load_trained(_config(tmp_path, data_root, "lapo"))
    assert not (tmp_path / "runs").exists()  # nothing was opened or run


def test_runs_leave_tensorboard_curves_and_images(smoke_results):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, results = smoke_results
    tb = root / "runs" / results["masklam"]["run_name"] / "tb"
    tags = {}
    for stage in ("lam", "bc", "decoder", "final"):
        acc = EventAccumulator(str(tb / stage))
        acc.Reload()
        tags[stage] = acc.Tags()
    assert {"lam/loss", "lam/recon_loss", "lam/probe_mse", "lam/grad_norm",
            "lam/lr"} <= set(tags["lam"]["scalars"])
    assert set(tags["lam"]["images"]) == {"fdm/predicted", "fdm/target", "fdm/agent_mask"}
    assert tags["bc"]["scalars"] == ["bc/loss"] and tags["decoder"]["scalars"] == ["decoder/loss"]
    assert {"final/probe_nmse", "final/probe_nmse_untrained",
            "final/normalized_return_id"} <= set(tags["final"]["scalars"])


def test_no_tensorboard_writes_no_curves_and_changes_no_result(tmp_path, data_root,
                                                               smoke_results):
    config = _config(tmp_path, data_root, "masklam", tensorboard=False)
    metrics = runner.run(config, progress=False)["metrics"]
    assert not (tmp_path / "runs" / config.run_name / "tb").exists()
    first = smoke_results[1]["masklam"]["metrics"]
    assert ({k: v for k, v in first.items() if k not in TIME_DEPENDENT_METRICS}
            == {k: v for k, v in metrics.items() if k not in TIME_DEPENDENT_METRICS})


def test_batches_hold_only_the_keys_asked_for_and_draw_the_same_transitions(data_root):
    from masklam_bench.dataset import load_frames
    from masklam_bench.sampling import BATCH_ORDER, TransitionSampler

    train = load_frames(data_root / "smoke" / "cheetah-run", "train", clean=False)
    sampler = TransitionSampler(train, context_frames=3, max_future=10)
    full = sampler.sample(np.random.default_rng(7), 16)
    assert tuple(full) == BATCH_ORDER
    for keys in (("context", "target"), ("target_mask", "k"), ("next_mask",), ("action",)):
        part = sampler.sample(np.random.default_rng(7), 16, keys=keys)
        assert set(part) == set(keys)
        assert all(torch.equal(part[key], full[key]) for key in keys)
    with pytest.raises(ValueError, match="Unknown batch keys"):
        sampler.batch(train.transitions[:2], keys=("context", "nope"))
    # What LAM training asks each built-in method's batches for: exactly its batch_keys().

    preset = get_preset("smoke")
    for name in ("lapo", "masklam", "laom", "laom-masked", "laom-labels"):
        config = runner.RunConfig(method=name, preset="smoke", latent_dim=8)
        method = runner.build_method(config, preset, train.image_size, train.action_dim, 0)
        assert runner.method_batch_keys(method) == frozenset(method.batch_keys()) - {"labelled"}
        assert runner.method_batch_keys(method) < frozenset(BATCH_ORDER)


def test_laom_latent_use_diagnostic_reads_finished_runs(smoke_results, benchmark_script):
    """benchmarks/laom_latent_use.py on the smoke runs: finite losses for the LAOM family, and a
    clear refusal for a method without a latent FDM."""
    root, results = smoke_results
    module = benchmark_script("laom_latent_use")
    for method in ("laom", "laom-masked", "laom-labels"):
        figures = module.latent_use(root / "runs" / results[method]["run_name"])
        assert set(figures) == {"own_z", "shuffled_z", "zero_z", "target_variance", "z_std"}
        assert all(np.isfinite(v) and v >= 0 for v in figures.values())
        assert figures["target_variance"] > 0
    with pytest.raises(SystemExit, match="no latent FDM"):
        module.latent_use(root / "runs" / results["lapo"]["run_name"])


def test_decoder_protocols_script_scores_finished_runs(smoke_results, tmp_path, capsys,
                                                     benchmark_script):
    """benchmarks/decoder_protocols.py on smoke runs: the saved decoder is reproduced by this code,
    every NMSE is finite, and a folder that is not a run is refused with exit status 2."""
    root, results = smoke_results
    module = benchmark_script("decoder_protocols")
    dirs = [str(root / "runs" / results[m]["run_name"]) for m in ("lapo", "bc-labels")]
    out = tmp_path / "dec.json"
    assert module.main([*dirs, "--threads", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["lapo", "bc-labels"]
    for row in rows:
        assert row["idm_refit_identical"] is True
        assert all(np.isfinite(row[c]) and row[c] >= 0 for c in module.COLUMNS)
    assert "| cheetah-run | lapo | 8 | 1 |" in capsys.readouterr().out
    assert module.main([str(tmp_path)]) == 2


def test_probe_split_script_refits_stage_2s_probe(smoke_results, tmp_path, capsys,
                                                  benchmark_script):
    """benchmarks/probe_split.py on a smoke run: its stage-2 protocol gives the run's probe.json
    to the bit (the script stops otherwise), the test-best strength is never beaten by either
    choice, the summary prints, and a folder without a finished LAM is refused."""
    from masklam_bench.metrics import RIDGE_GRID

    root, results = smoke_results
    module = benchmark_script("probe_split")
    run_dir = root / "runs" / results["masklam"]["run_name"]
    out = tmp_path / "split.json"
    module.main([str(run_dir), "--threads", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    (record,) = saved["runs"]
    assert str(root) not in saved["command"]  # committed outputs name no folder of this machine
    for suffix in ("", "_untrained"):
        cell = record[f"probe_nmse{suffix}"]
        assert cell["frames"]["nmse"] == results["masklam"]["metrics"][f"probe_nmse{suffix}"]
        assert len(cell["test_nmse_by_ridge"]) == len(RIDGE_GRID)
        best = cell["test_best"]["nmse"]
        assert best == min(cell["test_nmse_by_ridge"].values())
        assert cell["episodes"]["nmse"] >= best and cell["frames"]["nmse"] >= best - 1e-9
        assert cell["val_episodes"] >= 1
    capsys.readouterr()
    module.main(["--summary", str(out)])
    assert "| d8, trained LAM | 1 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no lam_final.pt"):
        module.main([str(tmp_path), "--out", str(tmp_path / "none.json")])


def test_reproduce_reruns_a_result_file_and_names_what_differs(smoke_results, data_root,
                                                                tmp_path, capsys):
    """masklam-bench reproduce: a smoke result file reproduces in every metric (status 0); a copy
    with one metric changed is reported field by field (status 1); a file naming its dataset only
    as '.../a/b' needs --data-root, and a missing file, an older protocol and a plug-in that does
    not import are refused (status 2)."""
    from masklam_bench.cli import main

    root, results = smoke_results
    src = root / "results" / f"{results['lapo']['run_name']}.json"
    work = tmp_path / "work"
    args = ["reproduce", str(src), "--workdir", str(work), "--data-root", str(data_root)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "reproduced: all" in out and "threads 1" in out
    assert (work / "results" / src.name).exists()
    changed = json.loads(src.read_text())
    changed["metrics"]["probe_nmse"] += 1.0
    tampered = tmp_path / src.name
    tampered.write_text(json.dumps(changed))
    assert main(["reproduce", str(tampered), "--workdir", str(work), "--data-root",
                 str(data_root)]) == 1  # resumes the finished run folder: no training again
    out = capsys.readouterr().out
    assert "1 of" in out and "| metrics.probe_nmse |" in out
    assert main(["reproduce", str(tampered), "--workdir", str(work), "--dry-run"]) == 2
    assert "pass --data-root" in capsys.readouterr().err
    assert main(["reproduce", str(tmp_path / "missing.json")]) == 2
    # An older protocol (other preset values) and a plug-in that does not import are refused
    # before anything runs, with the suite's one-line error.
    for edit, message in ((lambda r: r["config"]["preset"]["train"].update(lam_steps=999),
                           "older protocol"),
                          (lambda r: r["config"]["run"].update(method="no_such_pkg.mod:LAM"),
                           "no_such_pkg")):
        other = json.loads(src.read_text())
        edit(other)
        tampered.write_text(json.dumps(other))
        assert main(["reproduce", str(tampered), "--data-root", str(data_root), "--dry-run"]) == 2
        assert message in capsys.readouterr().err


def test_more_episodes_script_extends_a_finished_runs_rollouts(smoke_results, tmp_path, capsys,
                                                             benchmark_script):
    """benchmarks/more_episodes.py: episode 0 of a smoke run comes out as in its result file, a
    second episode is added, and bc-labels rows become ceiling points; a result file that does not
    match the run (another run's returns) stops the script with exit status 2."""
    root, results = smoke_results
    module = benchmark_script("more_episodes")
    run_dir = root / "runs" / results["bc-labels"]["run_name"]
    out, png = tmp_path / "more.json", tmp_path / "more.png"
    args = [str(run_dir), "--episodes", "2", "--results", str(root / "results"), "--threads",
            "1", "--out", str(out), "--png", str(png)]
    assert module.main(args) == 0
    (row,) = json.loads(out.read_text())["rows"]
    saved = results["bc-labels"]["metrics"]["return_id_episodes"]
    assert len(row["returns"]) == 2 and row["returns"][:1] == saved[:1]
    assert png.read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert module.main(["--refit", str(out)]) == 0  # the trend again, nothing rolled out
    assert "bc-labels trend" not in capsys.readouterr().out  # one size: no trend to fit
    # A run already in the file is not rolled out again; a new one would be appended.
    assert module.main(["--refit", str(out), str(run_dir), "--results", str(root / "results"),
                        "--out", str(out)]) == 0
    assert "normalised return" not in capsys.readouterr().out
    assert json.loads(out.read_text())["rows"] == [row]
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    record = dict(results["bc-labels"])
    record["metrics"] = dict(record["metrics"], return_id_episodes=[x + 1.0 for x in saved])
    (wrong / f"{record['run_name']}.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert module.main([str(run_dir), "--episodes", "1", "--results", str(wrong)]) == 2
    assert "does not reproduce the run" in capsys.readouterr().err
    # A result file with enough stage-5 episodes is a row without its run folder.
    result_file = root / "results" / f"{results['bc-labels']['run_name']}.json"
    assert module.main(["--result", str(result_file), "--episodes", str(len(saved)), "--out",
                        str(out)]) == 0
    (from_file,) = json.loads(out.read_text())["rows"]
    assert from_file["returns"] == saved and from_file["bc_random_shift"] == 0
    assert {k: from_file[k] for k in ("run", "bc_steps", "train_episodes", "seed", "latent_dim",
                                           "task", "method")} == {
        k: row[k] for k in ("run", "bc_steps", "train_episodes", "seed", "latent_dim", "task",
                            "method")}
    assert from_file["preset"] == "smoke" and from_file["other_overrides"] == {}
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / result_file.name).write_bytes(result_file.read_bytes())
    assert module.main(["--result", str(result_file), "--result", str(copy / result_file.name),
                        "--episodes", "1", "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())["rows"]) == 1  # one run, counted once
    other = dict(record, run_name="other", overrides={"train.lam_lr": 1e-3},
                 metrics=results["bc-labels"]["metrics"])
    (copy / "other.json").write_text(json.dumps(other))
    capsys.readouterr()
    assert module.main(["--result", str(result_file), "--result", str(copy / "other.json"),
                        "--episodes", "1"]) == 2
    assert "not one curve" in capsys.readouterr().err
    assert module.main(["--result", str(result_file), "--episodes", str(len(saved) + 1)]) == 2
    assert "give its run folder instead" in capsys.readouterr().err


def test_load_run_folder_names_what_is_wrong(tmp_path):
    with pytest.raises(UserError, match="not a run folder"):
        runner.load_run_folder(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(UserError, match="config.json is unreadable"):
        runner.load_run_folder(tmp_path)


def test_the_harness_hash_follows_code_not_comments_or_docstrings(tmp_path, monkeypatch):
    """A run's identity covers the suite's stage, sampling, probe and env code: an edit that
    changes what runs changes the hash; a comment, a docstring, another indentation or a line
    broken inside brackets does not."""
    from masklam_bench import provenance

    package = tmp_path / "harness_probe_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    module = package / "stage.py"
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(provenance, "HARNESS_MODULES", ("harness_probe_pkg.stage",))
    versions = {
        "base": '"""Doc."""\nX = 1\n"""What X is."""\n\ndef f(a):\n    """Doc."""\n'
                '    return g(a, X)\n',
        "comments": '# new comment\nX = 1\n\n\ndef f(a):  # why\n  """Other doc."""\n'
                    '  return g(a,\n           X)\n',
        "code": '"""Doc."""\nX = 1\n"""What X is."""\n\ndef f(a):\n    """Doc."""\n'
                '    return g(X, a)\n',
    }
    hashes = {}
    for name, text in versions.items():
        module.write_text(text)
        hashes[name] = provenance.harness_sha256()
    assert hashes["base"] == hashes["comments"] != hashes["code"]
    monkeypatch.undo()
    names = {p.name for p in provenance.harness_files()}
    assert {"runner.py", "sampling.py", "metrics.py", "rendering.py", "distracting.py"} <= names


def test_code_hashes_do_not_depend_on_how_the_suite_is_installed(tmp_path, fresh_python):
    """Editable from a checkout (envs/ and baselines/ beside masklam_bench/) or as a wheel lays
    the files (inside it): the same code has the same harness and method hashes, so run folders
    resume and result files agree across the two."""
    import shutil

    from masklam_bench import provenance
    from masklam_bench.baselines.registry import get_method

    root = Path(__file__).resolve().parent.parent
    site = tmp_path / "site"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(root / "masklam_bench", site / "masklam_bench", ignore=ignore)
    for part in ("envs", "baselines"):
        shutil.copytree(root / part, site / "masklam_bench" / part, ignore=ignore)
    code = (f"import sys; sys.path.insert(0, {str(site)!r})\n"
            "from masklam_bench import provenance as p\n"
            "from masklam_bench.baselines.registry import get_method\n"
            "assert all(str(f).startswith(sys.path[0]) for f in p.harness_files())\n"
            "print(p.harness_sha256(), p.method_sha256(get_method('laom-masked')))\n")
    result = fresh_python(code, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    here = [provenance.harness_sha256(), provenance.method_sha256(get_method("laom-masked"))]
    assert result.stdout.split() == here


def test_a_sam2_run_waits_for_its_masks_and_records_them(tmp_path, data_root, monkeypatch):
    """Started before its SAM 2 masks exist, a ``sam2`` run stops with the command that makes
    them and records nothing, so it runs once they exist; its result file says which masks it
    trained on, and the leaderboard refuses a result made on random-weight masks."""
    pytest.importorskip("sam2")
    import shutil

    from masklam_bench import leaderboard, sam_masks

    root = tmp_path / "data"
    shutil.copytree(data_root / "smoke", root / "smoke")
    config = _config(tmp_path, root, "masklam", mask_source="sam2")
    with pytest.raises(sam_masks.SamMaskError, match="masklam-bench masks --dataset"):
        runner.run(config, progress=False)
    assert not (tmp_path / "runs" / config.run_name / "identity.json").exists()
    # The plumbing of storage is real; tracking (tested in test_sam_masks) is replaced by the
    # whole frame, so that no SAM 2 forward pass is paid for here.
    monkeypatch.setattr(sam_masks, "track_episode",
                        lambda predictor, frames, box, chunk: np.ones(frames.shape[:3], bool))
    file = sam_masks.add_sam_masks(runner.dataset_path(config), "random", image_size=64,
                                   chunk=8, progress=False)
    result = runner.run(config, progress=False)
    from masklam_bench.dataset import file_sha256

    assert result["sam_masks"]["sha256"] == file_sha256(file)
    assert result["sam_masks"]["random_weights"] is True
    assert result["sam_masks"]["hole_filling"] == sam_masks._hole_filling()  # kernel or CPU
    assert result["method_label"] == "masklam[sam2]"
    stats = result["mask_stats"]  # the whole frame: nothing empty, all of it "agent"
    assert stats["empty_frames"] == 0.0 and stats["agent_share"] == 1.0
    assert 0 < stats["exact_agent_share"] < 0.5
    records, problems = leaderboard.read_records(tmp_path / "results")
    assert records == [] and "SAM 2 masks of random weights" in problems[0]


def test_a_mask_source_that_empties_most_frames_is_warned_about_and_recorded(capsys):
    class Frames:  # the exact masks of 4 frames: one agent pixel each
        num_frames = 4

        def unpack_masks(self, index):
            masks = np.zeros((len(index), 8, 8), bool)
            masks[:, 3, 3] = True
            return masks

        @property
        def masks(self):  # packed as FrameData holds them
            return np.packbits(self.unpack_masks(range(4)), axis=-1)

    eroded = np.zeros((4, 8, 8), bool)
    eroded[0, 3, 3] = True  # 3 of 4 frames left without an agent pixel
    stats = runner.mask_stats("erode-2", eroded, Frames())
    assert stats == {"empty_frames": 0.75, "agent_share": 1 / 256, "exact_agent_share": 1 / 64}
    assert "mask source erode-2 leaves 75% of the train frames without" in capsys.readouterr().err
    runner.mask_stats("dilate-1", Frames().unpack_masks(range(4)), Frames())
    assert capsys.readouterr().err == ""


def test_clip_gradients_is_clip_grad_norm_bit_for_bit():
    """The BC and decoder fits skip the clip's multiply by exactly 1 on the CPU: same weights."""
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    ours = copy.deepcopy(ref)
    opts = [torch.optim.AdamW(net.parameters(), lr=1e-2, fused=True) for net in (ref, ours)]
    clipped = []
    for scale in (0.01, 100.0, 0.01, 30.0, 0.1):  # gradient norms below and above the clip
        x, y = torch.randn(8, 16) * scale, torch.randn(8, 4)
        for net, opt in zip((ref, ours), opts):
            opt.zero_grad(set_to_none=True)
            ((net(x) - y) ** 2).mean().backward()
            if net is ref:
                clipped.append(float(torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)) > 1.0)
            else:
                runner.clip_gradients(list(net.parameters()), 1.0)
            opt.step()
    assert any(clipped) and not all(clipped)  # both branches were taken
    for a, b in zip(ref.parameters(), ours.parameters()):
        assert torch.equal(a, b)
    # A NaN norm scales every gradient to NaN in both (a diverged fit stays visibly diverged).
    for net in (ref, ours):
        for p in net.parameters():
            p.grad = torch.ones_like(p)
        next(net.parameters()).grad[0, 0] = float("nan")
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
    runner.clip_gradients(list(ours.parameters()), 1.0)
    for a, b in zip(ref.parameters(), ours.parameters()):
        assert torch.isnan(a.grad).all() and torch.isnan(b.grad).all()


def test_davis_runs_get_names_and_dataset_folders_of_their_own(tmp_path, monkeypatch):
    config = runner.RunConfig(method="lapo", task="cheetah-run", latent_dim=64, seed=0,
                              preset="cpu", data_root=str(tmp_path))
    procedural = (config.run_name, runner.dataset_path(config))
    monkeypatch.setenv("MASKLAM_DAVIS_DIR", str(tmp_path / "davis"))
    assert config.run_name == procedural[0] + "+davis"  # never overwrites a procedural result
    assert runner.dataset_path(config) == tmp_path / "cpu+davis" / "cheetah-run"
    assert procedural[1] == tmp_path / "cpu" / "cheetah-run"


def test_portable_path_names_no_folder_of_this_machine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert runner._portable_path(tmp_path / "data" / "cpu") == "data/cpu"
    assert runner._portable_path("results") == "results"
    assert runner._portable_path("/elsewhere/runs/x") == ".../runs/x"
    monkeypatch.chdir("/")  # inside "/" is everything: still only the last two parts
    assert runner._portable_path(tmp_path / "data" / "cpu") == ".../data/cpu"


def test_a_mask_source_spelled_another_way_is_the_same_run(tmp_path):
    """ERODE-2 and erode-2.0 name erode-2's run and record it so: a resume in either spelling
    finds the other's run folder instead of refusing it for other settings."""
    resolved = [runner.resolve(_config(tmp_path, tmp_path, "masklam", mask_source=text))[0]
                for text in ("erode-2", "ERODE-2", " erode-2.0 ")]
    assert {c.mask_source for c in resolved} == {"erode-2"}
    assert len({c.run_name for c in resolved}) == 1
