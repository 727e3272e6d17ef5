"""bf16 where the device computes in bf16 fast, float32 elsewhere, and the flags that force either."""

from __future__ import annotations

import pytest
import torch

from masklam_bench import cli, precision, runner, sweep
from masklam_bench.precision import fast_bf16  # the real one: conftest replaces the module's


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set whether this machine's CPU counts as fast at bf16: ``cpu_bf16(False)``."""
    def set_fast(fast: bool) -> None:
        monkeypatch.setattr(precision, "fast_bf16",
                            lambda device: fast if device.startswith("cpu") else True)
    return set_fast


def test_the_cpu_check_is_onednn_bf16_support():
    assert fast_bf16("cpu") == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert fast_bf16("cuda")  # without starting CUDA: a sweep plans GPU runs on a login node


@pytest.mark.parametrize("fast", [True, False])
def test_a_run_asking_nothing_gets_the_devices_precision_and_a_request_is_kept(cpu_bf16, fast):
    cpu_bf16(fast)
    assert precision.uses_bf16(None, "cpu") is fast
    assert precision.uses_bf16(True, "cpu") and not precision.uses_bf16(False, "cpu")
    assert (precision.float32_note(None, "cpu") is None) is fast
    assert precision.float32_note(True, "cpu") is None is precision.float32_note(False, "cpu")
    config = runner.RunConfig(method="lapo")
    assert config.run_name.endswith("+fp32") is not fast
    resolved, _ = runner.resolve(config)
    assert resolved.bf16 is fast and resolved.run_name == config.run_name
    assert runner.RunConfig(method="lapo", bf16=True).run_name == "cheetah-run__lapo__d64__s0__cpu"


def test_bf16_flags_of_run_sweep_and_bench_train():
    parser = cli._build_parser()
    for argv in (["run", "--method", "lapo"], ["bench-train"], ["sweep", "--methods", "lapo"]):
        assert parser.parse_args(argv).bf16 is None
        assert parser.parse_args([*argv, "--bf16"]).bf16 is True
        assert parser.parse_args([*argv, "--no-bf16"]).bf16 is False
    assert sweep.options_from_args(parser.parse_args(["sweep", "--no-bf16"])).bf16 is False


def test_a_sweep_names_its_runs_with_the_planning_machines_precision(cpu_bf16):
    cpu_bf16(False)
    options = sweep.SweepOptions(dry_run=True)
    values = {"methods": "lapo", "mask-sources": "exact", "dims": "8", "seeds": "0",
              "envs": "cheetah", "preset": "smoke", "set": []}
    runs = sweep.expand_grid(values, options)
    assert [c.bf16 for c in runs] == [False] and runs[0].run_name.endswith("+fp32")
    runs = sweep.expand_grid(values, sweep.SweepOptions(dry_run=True, bf16=True))
    assert [c.bf16 for c in runs] == [True] and not runs[0].run_name.endswith("+fp32")


def test_run_says_when_it_trains_in_float32(cpu_bf16, monkeypatch, capsys):
    cpu_bf16(False)
    seen = []

    def stop(config):  # the note comes before the first run starts
        seen.append(config)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run", stop)
    with pytest.raises(KeyboardInterrupt):
        cli._cmd_run(cli._build_parser().parse_args(
            ["run", "--method", "lapo", "--preset", "smoke", "--dims", "8"]))
    assert precision.FLOAT32_NOTE in capsys.readouterr().out
    assert seen[0].bf16 is None and seen[0].run_name.endswith("+fp32")


def test_the_bf16_benchmark_reports_the_cpu_and_times_a_step(benchmark_script):
    bench = benchmark_script("bf16_cpu")
    facts = bench.cpu_facts()
    assert set(facts["flags"]) == set(bench.FLAGS) and isinstance(facts["fast_bf16"], bool)
    assert bench.seconds_per_step(8, False, 1) > 0


def test_a_cluster_sweep_of_cpu_runs_keeps_bf16_unless_told(cpu_bf16, capsys):
    cpu_bf16(False)  # the login node's CPU says nothing about the nodes'
    for options in (sweep.SweepOptions(launcher="slurm"),
                    sweep.SweepOptions(ray_address="auto")):
        assert options.on_cluster and options.uses_bf16 is True
        assert sweep.SweepOptions(launcher="slurm", bf16=False).uses_bf16 is False
    assert sweep.SweepOptions().uses_bf16 is False  # a local sweep runs here: this CPU decides
    assert sweep.SweepOptions(gpus_per_run=1).uses_bf16 is True  # CUDA


def test_curve_commands_take_the_bf16_flags():
    parser = cli._build_parser()
    assert parser.parse_args(["curve", "probe"]).bf16 is None
    assert parser.parse_args(["curve", "ceiling", "--no-bf16"]).bf16 is False
