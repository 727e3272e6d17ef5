"""Fast tests of the SAC expert trainer and the expert-loading API."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from masklam_bench import experts
from masklam_bench.envs.tasks import flatten_state
from masklam_bench.experts.sac import NStepAccumulator, SACConfig, export, make_env, train
from masklam_bench.fileio import load_checkpoint

TINY = {
    "task": "cheetah-run",
    "seed": 3,
    "total_steps": 360,
    "num_envs": 2,
    "episode_steps": 60,
    "hidden": (32, 32),
    "batch_size": 32,
    "buffer_size": 5_000,
    "learning_starts": 120,
    "eval_every": 10**9,
    "eval_episodes": 1,
    "checkpoint_every": 120,
}


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """One uninterrupted tiny run and one interrupted after 240 steps, then resumed."""
    whole = tmp_path_factory.mktemp("whole")
    split = tmp_path_factory.mktemp("split")
    full = train(SACConfig(**TINY), whole, resume=False, progress=False)
    first = train(SACConfig(**{**TINY, "total_steps": 240}), split, resume=False, progress=False)
    resumed = train(SACConfig(**TINY), split, resume=True, progress=False)
    return full, first, resumed, whole, split


def test_resume_is_exact(tiny_runs):
    full, first, resumed, _, _ = tiny_runs
    assert first["step"] == 240
    assert resumed["step"] == full["step"] == TINY["total_steps"]
    assert resumed["updates"] == full["updates"] > 0
    a, b = full["agent"].state_dict(), resumed["agent"].state_dict()
    for group in ("actor", "critic", "critic_target"):
        for name, tensor in a[group].items():
            assert torch.equal(tensor, b[group][name]), f"{group}.{name} differs after resume"
    assert torch.equal(a["log_alpha"], b["log_alpha"])


def test_resume_refuses_other_config(tiny_runs, tmp_path):
    _, _, _, whole, _ = tiny_runs
    with pytest.raises(ValueError, match="batch_size"):
        train(SACConfig(**{**TINY, "batch_size": 64}), whole, resume=True, progress=False)


def test_same_seed_same_parameters(tmp_path):
    cfg = SACConfig(**{**TINY, "total_steps": 180, "checkpoint_every": 10**9})
    a = train(cfg, tmp_path / "a", resume=False, progress=False)["agent"].state_dict()
    b = train(cfg, tmp_path / "b", resume=False, progress=False)["agent"].state_dict()
    assert all(torch.equal(v, b["critic"][k]) for k, v in a["critic"].items())


def test_n_step_rows():
    acc = NStepAccumulator(3, 0.5)
    o = [np.full(2, float(i), np.float32) for i in range(5)]
    a = np.zeros(1, np.float32)
    rows = []
    for t in range(4):
        rows += acc.push(o[t], a, reward=1.0, discount=1.0, next_obs=o[t + 1])
    rows += acc.flush(o[4])
    # rows: [obs(2), act(1), return, discount, next_obs(2)]
    assert len(rows) == 4
    np.testing.assert_allclose(rows[0][3:5], [1.75, 0.125])
    np.testing.assert_allclose(rows[0][5:], o[3])
    np.testing.assert_allclose([r[3] for r in rows], [1.75, 1.75, 1.5, 1.0])
    np.testing.assert_allclose([r[4] for r in rows], [0.125, 0.125, 0.25, 0.5])
    assert all(np.array_equal(r[5:], o[4]) for r in rows[1:])


def test_missing_expert_error(tmp_path, monkeypatch):
    monkeypatch.setattr(experts, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="masklam-bench train-expert --task cheetah-run"):
        experts.load_expert("cheetah-run")
    assert experts.available_experts() == []


def test_export_roundtrip(tiny_runs, tmp_path):
    _, _, _, whole, _ = tiny_runs
    dest = export(
        whole, "cheetah", dest=tmp_path / "cheetah-run.pt", eval_episodes=1, source="last"
    )
    payload = torch.load(dest, weights_only=True)
    assert payload["obs_dim"] == 17 and payload["act_dim"] == 6
    assert payload["train_steps"] == TINY["total_steps"]
    expert = experts.load_expert("cheetah-run", path=dest)
    states = np.random.default_rng(0).normal(size=(5, 17)).astype(np.float32)
    batch = expert.act(states)
    assert batch.shape == (5, 6) and batch.dtype == np.float32
    assert np.all(np.abs(batch) <= 1.0)
    np.testing.assert_allclose(expert.act(states[0]), batch[0], rtol=1e-5, atol=1e-6)
    noisy1 = expert.act(states, noise_std=0.5, rng=np.random.default_rng(1))
    noisy2 = expert.act(states, noise_std=0.5, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(noisy1, noisy2)
    assert np.all(np.abs(noisy1) <= 1.0) and not np.allclose(noisy1, batch)


def _rollout(task: str, policy, steps: int, seed: int) -> float:
    env = make_env(task, seed)
    obs = flatten_state(env.reset().observation)
    total = 0.0
    for _ in range(steps):
        ts = env.step(policy(obs))
        total += ts.reward or 0.0
        obs = flatten_state(ts.observation)
    return total


# A wide margin over a uniform-random policy on the first 300 steps of one episode:
# (factor on the random return, additive slack). Hopper needs time to get up before it hops.
BEATS_RANDOM = {
    "cheetah-run": (3.0, 30.0),
    "walker-run": (3.0, 30.0),
    "hopper-hop": (3.0, 5.0),
    "humanoid-walk": (3.0, 30.0),
}


@pytest.mark.parametrize("task", sorted(BEATS_RANDOM))
def test_shipped_expert_beats_random(task):
    if not experts.weights_path(task).exists():
        pytest.skip(f"no shipped {task} expert")
    payload = torch.load(experts.weights_path(task), weights_only=True)
    assert payload["task"] == task
    expert = experts.load_expert(task)
    assert task in experts.available_experts()
    rng = np.random.default_rng(0)
    act_dim = expert.act_dim
    expert_ret = _rollout(task, expert.act, 300, seed=5)
    random_ret = _rollout(task, lambda o: rng.uniform(-1, 1, act_dim), 300, seed=5)
    factor, slack = BEATS_RANDOM[task]
    assert expert_ret > factor * random_ret + slack, (expert_ret, random_ret)


def test_shortfall_note_flags_experts_below_the_target(fake_cheetah_expert, tmp_path):
    payload = torch.load(fake_cheetah_expert(tmp_path / "c.pt"), weights_only=True)
    notes = {}
    for ret in (671.0, 669.0, None):  # the target is 80% of LAOM's 837.7, i.e. 670.16
        payload["eval_return_mean"] = ret
        notes[ret] = experts.shortfall_note(experts.Expert(payload))
    assert notes[671.0] is None and notes[None] is None
    assert "returned 669.0 when exported, 79.9% of LAOM's expert (837.7)" in notes[669.0]


def test_a_task_without_a_laom_reference_is_measured_not_a_key_error(fake_cheetah_expert,
                                                                     tmp_path, monkeypatch,
                                                                     capsys):
    # A newly added task has no LAOM_RETURNS entry yet: eval-expert still measures it, and
    # collect/run give no below-target caveat, since there is no target.
    from masklam_bench import cli

    monkeypatch.delitem(experts.LAOM_RETURNS, "cheetah-run")
    monkeypatch.setattr(experts, "evaluate_expert",
                        lambda task, episodes, seed, path: {"mean": 5.0, "std": 1.0,
                                                            "returns": [4.0, 6.0]})
    monkeypatch.setattr(experts, "random_policy_return", lambda task, episodes, seed: 0.5)
    cli.main(["eval-expert", "--task", "cheetah", "--episodes", "2"])
    summary = capsys.readouterr().out.splitlines()[0]
    assert summary.startswith("cheetah-run: expert 5.0 +- 1.0 over 2 episodes")
    assert summary.endswith("no LAOM reference (add one to masklam_bench.experts.LAOM_RETURNS)")
    payload = torch.load(fake_cheetah_expert(tmp_path / "c.pt", eval_return=1.0),
                         weights_only=True)
    assert experts.shortfall_note(experts.Expert(payload)) is None


def test_eval_expert_command_prints_every_episode(capsys):
    if not experts.weights_path("hopper-hop").exists():
        pytest.skip("no shipped hopper-hop expert")
    from masklam_bench import cli

    cli.main(["eval-expert", "--task", "hopper", "--episodes", "2"])
    out = capsys.readouterr().out
    summary, episodes = out.strip().splitlines()
    assert summary.startswith("hopper-hop: expert ") and "over 2 episodes" in summary
    returns = [float(x) for x in episodes.split(":")[1].split()]
    assert len(returns) == 2
    mean = float(summary.split("expert ")[1].split(" +-")[0])
    assert mean == pytest.approx(np.mean(returns), abs=0.1)  # both sides rounded to 0.1


def test_eval_expert_measures_an_unshipped_file(tiny_runs, tmp_path, capsys):
    from masklam_bench import cli

    _, _, _, whole, _ = tiny_runs
    dest = export(whole, "cheetah", dest=tmp_path / "candidate.pt", eval_episodes=1)
    assert cli.main(["eval-expert", "--task", "cheetah", "--episodes", "1", "--weights",
                     str(dest)]) == 0
    assert capsys.readouterr().out.startswith("cheetah-run: expert ")
    assert cli.main(["eval-expert", "--task", "walker", "--weights", str(dest)]) == 2
    assert "holds an expert for 'cheetah-run', not 'walker-run'" in capsys.readouterr().err
    assert cli.main(["eval-expert", "--task", "cheetah,walker", "--weights", str(dest)]) == 2
    assert "--task must name one task" in capsys.readouterr().err


def test_stop_return_ends_early(tmp_path):
    cfg = SACConfig(**{**TINY, "eval_every": 100, "stop_return": -1.0})
    res = train(cfg, tmp_path, resume=False, progress=False)
    assert res["reached_stop_return"] and not res["interrupted"]
    assert res["step"] == 120  # the first episode end (2 envs x 60 steps) after step 100
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "best_actor.pt").exists()


def test_stand_bonus_shapes_training_reward_only():
    from masklam_bench.experts.sac import VectorEnv

    plain = VectorEnv("hopper-hop", 1, 0, 20)
    shaped = VectorEnv("hopper-hop", 1, 0, 20, stand_bonus=0.5)
    plain.reset(), shaped.reset()
    actions = np.zeros((1, 4), np.float32)
    for _ in range(5):
        o1, r1, _, b1, _ = plain.step(actions)
        o2, r2, _, b2, _ = shaped.step(actions)
    np.testing.assert_array_equal(o1, o2)  # same seed, same physics
    np.testing.assert_array_equal(r1, r2)  # the task reward is untouched
    assert b1[0] == 0.0 and 0.0 < b2[0] <= 0.5
    height = shaped.envs[0].physics.height()
    assert b2[0] == pytest.approx(0.5 * min(1.0, height / 0.6))
    with pytest.raises(ValueError, match="stand_bonus"):
        SACConfig(task="cheetah-run", stand_bonus=0.1)
    with pytest.raises(ValueError, match="stand_bonus"):
        SACConfig(task="hopper-hop", stand_bonus=-1.0)


def test_init_from_starts_at_the_source_agent(tiny_runs, tmp_path):
    _, _, _, whole, _ = tiny_runs
    src = tmp_path / "src"
    shutil.copytree(whole, src)
    source = load_checkpoint(src / "checkpoint.pt")["agent"]
    cfg = SACConfig(
        **{**TINY, "seed": 5, "total_steps": 120, "learning_starts": 240, "init_from": str(src)}
    )
    res = train(cfg, tmp_path / "ft", resume=False, progress=False)
    assert res["updates"] == 0  # still inside learning_starts: nothing trained yet
    mine = res["agent"].state_dict()
    for group in ("actor", "critic", "critic_target"):
        for name, tensor in source[group].items():
            assert torch.equal(tensor, mine[group][name]), f"{group}.{name} not copied"
    # The exported actor records the configs it descends from.
    dest = export(tmp_path / "ft", "cheetah", dest=tmp_path / "ft.pt", eval_episodes=1)
    chain = json.loads(torch.load(dest, weights_only=True)["init_from_configs"])
    assert [c["seed"] for c in chain] == [TINY["seed"]]
    # A resumed fine-tune continues from its own checkpoint; the source is no longer needed.
    shutil.rmtree(src)
    more = train(SACConfig(**{**cfg.__dict__, "total_steps": 360}), tmp_path / "ft", progress=False)
    assert more["step"] == 360 and more["updates"] > 0


def test_init_from_refuses_other_networks_and_missing_runs(tiny_runs, tmp_path):
    _, _, _, whole, _ = tiny_runs
    with pytest.raises(ValueError, match="hidden"):
        cfg = SACConfig(**{**TINY, "hidden": (16, 16), "init_from": str(whole)})
        train(cfg, tmp_path / "a", resume=False, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        cfg = SACConfig(**{**TINY, "init_from": str(tmp_path / "nowhere")})
        train(cfg, tmp_path / "b", resume=False, progress=False)
    assert not (tmp_path / "b").exists()  # refused before anything was written


def test_train_expert_never_replaces_the_shipped_weights_unless_asked(tmp_path, monkeypatch):
    from masklam_bench import experts
    from masklam_bench.experts import sac

    written = []
    monkeypatch.setattr(sac, "train", lambda cfg, out, resume, progress: {"step": 1})
    monkeypatch.setattr(sac, "export", lambda out, name, replace_shipped=False: written.append(
        replace_shipped) or Path("pkg" if replace_shipped else out / experts.CANDIDATE_NAME))
    assert experts.train_expert("cheetah-run", steps=1, out_dir=tmp_path)["weights"] == str(
        tmp_path / experts.CANDIDATE_NAME)
    experts.train_expert("cheetah-run", steps=1, out_dir=tmp_path, replace_shipped=True)
    assert written == [False, True]  # export's own default is the run's candidate.pt (below)


def test_a_kill_while_writing_the_eval_log_keeps_it_and_the_run_resumes(tmp_path, fresh_python,
                                                                        killed_mid_write):
    """SIGKILL half-way through rewriting eval.csv (the second evaluation, before its checkpoint):
    the log keeps the first row, and the resumed run ends with the same evaluations as a run
    never killed."""
    import signal

    from masklam_bench.experts.sac import read_eval_log

    cfg = {**TINY, "eval_every": 120}
    full = tmp_path / "full"
    train(SACConfig(**cfg), full, resume=False, progress=False)
    killed = tmp_path / "killed"
    code = killed_mid_write("eval.csv", n=2) + (
        "from masklam_bench.experts.sac import SACConfig, train\n"
        f"train(SACConfig(**{cfg!r}), {str(killed)!r}, resume=False, progress=False)\n")
    result = fresh_python(code, timeout=600)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert [row["step"] for row in read_eval_log(killed)] == [120]
    assert any(p.name.startswith(".eval.csv.") for p in killed.iterdir())  # the cut-off write
    train(SACConfig(**cfg), killed, resume=True, progress=False)
    columns = ("step", "updates", "eval_return", "eval_std", "train_return", "alpha")
    want = [{k: row[k] for k in columns} for row in read_eval_log(full)]
    assert [r["step"] for r in want] == [120, 240, 360]
    assert [{k: row[k] for k in columns} for row in read_eval_log(killed)] == want


def test_an_eval_log_written_by_the_old_appending_code_is_kept_and_extended(tmp_path):
    from masklam_bench.experts.sac import _append_eval_log, _truncate_eval_log, read_eval_log

    # The old writer joined keys and str() values with commas, one line per evaluation.
    (tmp_path / "eval.csv").write_text("step,updates,eval_return,entropy\n"
                                       "120,0,-1.5,nan\n240,120,3.25,-2.0\n")
    _append_eval_log(tmp_path, {"step": 360, "updates": 240, "eval_return": 4.0, "entropy": -1.0,
                                "alpha": 0.5})
    rows = read_eval_log(tmp_path)
    assert [r["step"] for r in rows] == [120, 240, 360] and rows[1]["eval_return"] == 3.25
    assert "alpha" not in rows[0] and rows[2]["alpha"] == 0.5
    _truncate_eval_log(tmp_path, 240)
    assert [r["step"] for r in read_eval_log(tmp_path)] == [120, 240]


def test_a_run_saved_without_its_buffer_refills_it_before_updating(tmp_path):
    """``save_buffer=False`` then a resume: the empty buffer is refilled for learning_starts
    steps (with a warning) instead of sampling nothing."""
    cfg = {**TINY, "total_steps": 240, "save_buffer": False}
    first = train(SACConfig(**cfg), tmp_path, resume=False, progress=False)
    with pytest.warns(UserWarning, match="without its replay buffer"):
        resumed = train(SACConfig(**{**cfg, "total_steps": 480}), tmp_path, resume=True,
                        progress=False)
    # Refilled from step 240 to 360 (learning_starts = 120), then updating to 480: as many
    # updates as the first run made from its learning_starts (120) to 240.
    assert resumed["step"] == 480
    assert resumed["updates"] - first["updates"] == first["updates"] > 0


def test_export_defaults_to_the_runs_candidate_not_the_shipped_expert(tiny_runs, monkeypatch):
    _, _, _, whole, _ = tiny_runs
    shipped = {p: p.stat().st_mtime_ns for p in experts.WEIGHTS_DIR.glob("*.pt")}
    dest = export(whole, "cheetah", eval_episodes=1, source="last")
    assert dest == whole / experts.CANDIDATE_NAME
    assert {p: p.stat().st_mtime_ns for p in experts.WEIGHTS_DIR.glob("*.pt")} == shipped
    with pytest.raises(ValueError, match="source must be 'auto', 'last' or 'best'"):
        export(whole, "cheetah", source="bestt")


def test_an_expert_file_without_its_keys_is_one_sentence(tmp_path):
    bad = tmp_path / "cheetah-run.pt"
    torch.save({"task": "cheetah-run", "actor": {}}, bad)
    with pytest.raises(ValueError, match="is not an exported expert .*obs_dim"):
        experts.load_expert("cheetah-run", path=bad)
    with pytest.raises(ValueError, match="unknown setting.*bogus"):
        experts.train_expert("cheetah", steps=10, out_dir=tmp_path / "x", bogus=1)
