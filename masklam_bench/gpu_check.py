"""``masklam-bench gpu-check``: measure the ``gpu`` preset's pieces on one device in minutes.

What it does, in order, writing everything to one JSON file:

1. the machine: torch, CUDA, the device and the versions of the packages the suite needs (it
   installs nothing; a missing package is listed, and ``scripts/device_wheels.py`` brings them);
2. LAM ``train_step`` of LAPO and MaskLAM at each latent dim with the preset's encoder and batch,
   bf16: samples/s and peak device memory;
3. latent BC and the action decoder steps at the preset's batch, and one probe fit of the preset's
   size: seconds and peak device memory;
4. collection with many workers: frames/s, from the difference of two episode lengths, so that
   process start-up does not count;
5. the LAM rows again with ``torch.compile`` (last: their compile time is the least known);
6. the preset's end-to-end time per run extrapolated from those rates.

The file is rewritten (atomically) after every measurement, and a measurement that fails is
recorded with its error while the others go on, so a check stopped by a time limit or a missing
piece (EGL, Triton) keeps everything measured before. ``--max-minutes`` skips what would start
after that time.

On the CPU, at the ``smoke`` preset, it runs in the tests, so it cannot rot. On a GPU:
``MUJOCO_GL=egl masklam-bench gpu-check --out gpu_check.json`` (BENCHMARK.md, "GPU check").
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from masklam_bench.checks import check_device, int_at_least, parse_dims, positive_float
from masklam_bench.fileio import atomic_write_json

PACKAGES = ("torch", "mujoco", "dm_control", "gymnasium", "shimmy", "minari", "h5py", "numpy",
            "scipy", "tqdm")
"""Packages the check needs; their versions are recorded, a missing one is named."""
COLLECT_STEPS = 200
"""Steps per episode of the shorter collection; the longer one has three times as many."""
MAX_WORKERS = 16
"""Collection workers by default: the cores this process may use, at most this many."""


def machine_info(device: str) -> dict[str, Any]:
    """torch, CUDA and package versions; missing packages are listed, not installed."""
    import torch

    versions, missing = {}, []
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    info: dict[str, Any] = {"versions": versions, "missing": missing, "device": device,
                            "cpu_count": os.cpu_count(), "usable_cpus": usable_cpus(),
                            "cuda": torch.cuda.is_available(),
                            "triton": importlib.util.find_spec("triton") is not None}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30,
                    cuda_version=torch.version.cuda)
    return info


def usable_cpus() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def collect_rate(task: str, workers: int, steps: int) -> dict[str, Any]:
    """Frames/s of ``collect`` with ``workers`` processes (expert policy, into a temp folder).

    Each worker collects one episode of ``steps`` and, in a second collection, one of
    ``3 * steps``; the rate is the extra frames over the extra seconds, so the workers' start-up
    (spawn, imports, EGL, the expert) and the final merge, paid once per collection, cancel.
    """
    from masklam_bench.collect import collect
    from masklam_bench.envs import env_id

    episodes = max(2, workers)
    seconds = {}
    for length in (steps, 3 * steps):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            collect(env_id(task, "id"), Path(tmp) / "d", episodes=episodes, episode_steps=length,
                    workers=workers, progress=False, test_episodes=1, preset="gpu-check")
            seconds[length] = time.perf_counter() - t0
    with_startup = episodes * 3 * steps / seconds[3 * steps]
    extra_s = seconds[3 * steps] - seconds[steps]
    # Timing noise can swamp a short difference: then the rate with start-up (a lower bound).
    steady = extra_s > 0.2 * seconds[3 * steps]
    return {"workers": workers, "episodes": episodes, "seconds": seconds,
            "frames_per_s": episodes * 2 * steps / extra_s if steady else with_startup,
            "frames_per_s_with_startup": with_startup,
            "rate_from": "difference of the two lengths" if steady else "longer one, start-up in"}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def _peak_gib(device: str) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return None
    return torch.cuda.max_memory_allocated(torch.device(device)) / 2**30


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def _timed(step, n: int, device: str) -> float:
    """Seconds per call of ``step`` over ``n`` calls, after two untimed ones."""
    for _ in range(2):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / n


def lam_rate(method: str, dim: int, encoder: str, batch: int, steps: int, device: str,
             compile_: bool) -> dict[str, Any]:
    """Samples/s and peak memory of ``method``'s ``train_step`` (bf16)."""
    import torch

    from masklam_bench.baselines import get_method
    from masklam_bench.baselines.base import LamConfig
    from masklam_bench.baselines.bench import random_batch

    torch.manual_seed(0)
    config = LamConfig(latent_dim=dim, encoder=encoder, total_steps=1000, bf16=True)
    model = get_method(method)(config, 64, 6, device)
    with contextlib.ExitStack() as cold:
        if compile_ and hasattr(model, "compile"):
            from torch._inductor.utils import fresh_cache

            # Else a row reuses what an earlier one compiled (dynamo's graphs in memory;
            # Inductor's graphs and Triton's kernels on disk: LAPO and MaskLAM share their
            # networks) and its first step shows no compile cost. fresh_cache keeps its folder
            # when a step raises; the folder it is made in goes either way.
            torch._dynamo.reset()
            parent = cold.enter_context(tempfile.TemporaryDirectory(
                prefix="masklam-inductor-", ignore_cleanup_errors=True))
            cold.enter_context(fresh_cache(dir=parent))
            model.compile()
        data = random_batch(config, 64, 6, batch, device=device)
        _reset_peak(device)
        t0 = time.perf_counter()
        model.train_step(data)  # includes compilation when asked: reported apart
        _sync(device)
        first = time.perf_counter() - t0
        per_step = _timed(lambda: model.train_step(data), steps, device)
    return {"method": method, "dim": dim, "compile": compile_, "batch": batch,
            "samples_per_s": batch / per_step, "first_step_s": first,
            "peak_gib": _peak_gib(device)}


def downstream_rates(dim: int, encoder: str, batch: int, steps: int, probe_rows: int,
                     device: str, decoder_batch: int | None = None) -> dict[str, Any]:
    """Seconds per latent-BC step at ``batch``, per decoder step at ``decoder_batch`` (default
    ``batch``; the runner's is 4 x the BC batch, capped at the labelled budget), and one probe fit."""
    import torch

    from masklam_bench import metrics
    from masklam_bench.baselines.base import LamConfig
    from masklam_bench.baselines.policy import ActionDecoder, LatentPolicy

    torch.manual_seed(0)
    config = LamConfig(latent_dim=dim, encoder=encoder)
    policy = LatentPolicy(config, 64, dim).to(device)
    decoder = ActionDecoder(dim, 6).to(device)
    frames = torch.randint(0, 256, (batch, 3, 3, 64, 64), dtype=torch.uint8, device=device)
    z = torch.randn(batch, dim, device=device)
    decoder_batch = decoder_batch or batch
    z_dec = torch.randn(decoder_batch, dim, device=device)
    a = torch.rand(decoder_batch, 6, device=device)
    opts = {m: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=device.startswith("cuda") or None)
            for m in (policy, decoder)}

    def step(module, x, y) -> None:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(module(x).float(), y)
        opts[module].zero_grad(set_to_none=True)
        loss.backward()
        opts[module].step()

    _reset_peak(device)
    bc_s = _timed(lambda: step(policy, frames, z), steps, device)
    dec_s = _timed(lambda: step(decoder, z_dec, a), steps, device)
    peak = _peak_gib(device)
    rng = np.random.default_rng(0)
    zs = rng.standard_normal((probe_rows, dim)).astype(np.float32)
    acts = rng.standard_normal((probe_rows, 6)).astype(np.float32)
    t0 = time.perf_counter()
    metrics.linear_probe_nmses(zs, zs[: max(1, probe_rows // 10)],
                               {"a": (acts, acts[: max(1, probe_rows // 10)])})
    return {"dim": dim, "bc_step_s": bc_s, "decoder_step_s": dec_s,
            "decoder_batch": decoder_batch, "peak_gib": peak,
            "probe_fit_s": time.perf_counter() - t0, "probe_rows": probe_rows}


def extrapolate(preset: Any, lam: dict[str, Any], down: dict[str, Any] | None,
                collect: dict[str, Any] | None) -> dict[str, float | None]:
    """Seconds per stage of one run of ``preset`` from the measured rates (None where a
    measurement is missing), and the device memory the run's resident data take."""
    t, data = preset.train, preset.data
    frames = (data.train_episodes + data.test_episodes) * data.episode_steps
    fps = collect["frames_per_s"] if collect else None
    # `run` collects with collect()'s default of 2 workers; `collect --workers N` with N.
    per_worker = fps / collect["workers"] if collect else None
    stages: dict[str, float | None] = {
        "collect_s": frames / fps if fps else None,
        "collect_s_in_run": frames / (2 * per_worker) if per_worker else None,
        "lam_s": t.lam_steps * t.lam_batch / lam["samples_per_s"],
        "probe_s": (2 * down["probe_fit_s"] * t.probe_fit_transitions / down["probe_rows"]
                    if down else None),
        "bc_s": t.bc_steps * down["bc_step_s"] if down else None,
        "decoder_s": t.decoder_steps * down["decoder_step_s"] if down else None,
        # Rollouts step all evaluation envs together: about as fast as collecting.
        "eval_s": 2 * t.eval_episodes * t.eval_episode_steps / fps if fps else None,
    }
    parts = [v for k, v in stages.items() if not k.startswith("collect")]
    stages["run_s_without_collect"] = None if None in parts else sum(parts)
    # Held on the device for the whole run besides the networks: the train frames (uint8) and
    # masks (bool) of the sampler, and latent BC's latents of every train transition (float32).
    pixels = 64 * 64
    train_frames = data.train_episodes * (data.episode_steps + 1)
    stages["resident_data_gib"] = train_frames * pixels * 4 / 2**30
    stages["bc_latents_gib"] = data.train_episodes * data.episode_steps * lam["dim"] * 4 / 2**30
    return stages


class _Report:
    """The check's JSON, rewritten atomically after every measurement; a measurement that
    raises is recorded under ``errors`` and the check goes on."""

    def __init__(self, path: str | None, max_minutes: float | None):
        self.path, self.data = path, {}
        self.deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes

    def save(self) -> None:
        if self.path:
            atomic_write_json(self.path, self.data)

    def measure(self, name: str, fn) -> Any:
        """``fn()``, or None if it raised or the time is up (both recorded)."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.data.setdefault("skipped", []).append(name)
            print(f"{name}: skipped (--max-minutes reached)", flush=True)
            self.save()
            return None
        try:
            value = fn()
        except Exception as err:  # noqa: BLE001 - recorded; the other measurements go on
            self.data.setdefault("errors", []).append(
                {"measurement": name, "error": f"{type(err).__name__}: {err}",
                 "traceback": traceback.format_exc(limit=6)})
            print(f"{name}: FAILED ({type(err).__name__}: {err})", flush=True)
            self.save()
            return None
        return value


def gpu_check(preset_name: str, device: str, dims: list[int], steps: int, workers: int,
              task: str = "cheetah-run", compile_modes: tuple[bool, ...] = (False, True),
              collect_steps: int = COLLECT_STEPS, out: str | None = None,
              max_minutes: float | None = None) -> dict[str, Any]:
    """Every measurement of the module docstring, as one dict (also written to ``out`` after
    each measurement when given)."""
    from masklam_bench.presets import get_preset, preset_record
    from masklam_bench.provenance import git_state

    preset = get_preset(preset_name)
    report = _Report(out, max_minutes)
    # Run from an installed wheel (scripts/gpu_check_device.sh) there is no checkout to ask: the
    # script passes on the commit the wheel was built from.
    code = {**git_state(), "built_from": os.environ.get("MASKLAM_BUILT_FROM") or None}
    report.data.update(preset=preset_record(preset), code=code, machine=machine_info(device),
                       lam=[], downstream=[], collect=None, extrapolated={})
    report.save()
    if any(compile_modes) and device.startswith("cuda") and not report.data["machine"]["triton"]:
        compile_modes = tuple(c for c in compile_modes if not c)
        report.data["skipped"] = ["torch.compile rows: Triton is not installed"]
    # The compiled rows last: their compile time is the least known (and on a lent GPU's short
    # lease a time limit should cost them rather than the stages every run needs).
    if False in compile_modes:
        _lam_rows(report, preset, device, dims, steps, compile_=False)
    _downstream_rows(report, preset, device, dims, steps)
    report.data["collect"] = report.measure(
        f"collect ({workers} workers)", lambda: collect_rate(task, workers, collect_steps))
    if report.data["collect"]:
        print(f"collect: {report.data['collect']['frames_per_s']:.0f} frames/s with {workers} "
              "workers", flush=True)
    if True in compile_modes:
        _lam_rows(report, preset, device, dims, steps, compile_=True)
    down = {d["dim"]: d for d in report.data["downstream"]}
    report.data["extrapolated"] = {
        f"{row['method']}_d{row['dim']}{'_compiled' if row['compile'] else ''}": extrapolate(
            preset, row, down.get(row["dim"]), report.data["collect"])
        for row in report.data["lam"]}
    report.save()
    return report.data


def _lam_rows(report: _Report, preset: Any, device: str, dims: list[int], steps: int,
              compile_: bool) -> None:
    """The LAM rows of LAPO and MaskLAM at each dim, compiled or not."""
    t = preset.train
    for method in ("lapo", "masklam"):
        for dim in dims:
            name = f"LAM {method} d{dim} compile={compile_}"
            row = report.measure(name, lambda m=method, d=dim: lam_rate(
                m, d, t.encoder, t.lam_batch, steps, device, compile_))
            if row:
                report.data["lam"].append(row)
                report.save()
                peak = "" if row["peak_gib"] is None else f", peak {row['peak_gib']:.1f} GiB"
                print(f"{name}: {row['samples_per_s']:.0f} samples/s, first step "
                      f"{row['first_step_s']:.1f} s{peak}", flush=True)


def _downstream_rows(report: _Report, preset: Any, device: str, dims: list[int],
                     steps: int) -> None:
    """Latent BC, decoder and probe per dim."""
    from masklam_bench.runner import DECODER_BATCH_PER_BC_BATCH

    t = preset.train
    decoder_batch = min(DECODER_BATCH_PER_BC_BATCH * t.bc_batch, preset.data.labelled_transitions)
    for dim in dims:
        row = report.measure(f"latent BC, decoder and probe d{dim}", lambda d=dim: downstream_rates(
            d, t.encoder, t.bc_batch, steps, min(t.probe_fit_transitions, 20_000), device,
            decoder_batch))
        if row:
            report.data["downstream"].append(row)
            report.save()
            print(f"d{dim}: BC step {row['bc_step_s'] * 1e3:.1f} ms, decoder step "
                  f"{row['decoder_step_s'] * 1e3:.1f} ms, probe fit {row['probe_fit_s']:.1f} s",
                  flush=True)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``masklam-bench gpu-check``."""
    p = subparsers.add_parser("gpu-check",
                              help="measure the gpu preset's stages on this device (minutes)")
    p.add_argument("--out", default="gpu_check.json",
                   help="JSON file to write, rewritten after every measurement")
    p.add_argument("--preset", default="gpu", choices=["smoke", "cpu", "gpu"])
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dims", default="64,8192", help="latent dims (default: 64,8192)")
    p.add_argument("--steps", type=int_at_least(1), default=100,
                   help="timed steps per measurement")
    p.add_argument("--workers", type=int_at_least(0), default=0,
                   help=f"collection workers (0: the usable cores, at most {MAX_WORKERS})")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--max-minutes", type=positive_float, default=None,
                   help="start no measurement after this many minutes (the file keeps the rest)")
    p.set_defaults(func=_cmd_gpu_check, output_files=("out",))


def _cmd_gpu_check(args: argparse.Namespace) -> None:
    import torch

    device = check_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dims = parse_dims(args.dims)
    workers = args.workers or min(usable_cpus(), MAX_WORKERS)
    # On the CPU torch.compile builds C++ kernels for minutes; the check is about the GPU.
    modes = (False,) if args.no_compile or device == "cpu" else (False, True)
    result = gpu_check(args.preset, device, dims, args.steps, workers, compile_modes=modes,
                       out=args.out, max_minutes=args.max_minutes)
    for name, stages in result["extrapolated"].items():
        run_s, collect_s = stages["run_s_without_collect"], stages["collect_s"]
        if run_s is not None:
            collect = ("" if collect_s is None else f" (+ {collect_s / 3600:.2f} h to collect the "
                       f"task's data once with {workers} workers)")
            print(f"{args.preset} run, {name}: {run_s / 3600:.2f} h{collect}")
    for error in result.get("errors", []):
        print(f"failed: {error['measurement']}: {error['error']}")
    print(f"wrote {args.out}")
