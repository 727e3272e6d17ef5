"""``masklam-bench gpu-check``: measure the ``gpu`` preset's pieces on one device in minutes.

What it does, in order, writing everything to one JSON file:

1. the machine: torch, CUDA, the device and the versions of the packages the suite needs (it
   installs nothing; a missing package is reported with how to bring it as a wheel);
2. a small dataset collected with many workers: frames/s;
3. LAM ``train_step`` of LAPO and MaskLAM at each latent dim with the preset's encoder and batch,
   bf16, with and without ``torch.compile``: samples/s and peak device memory;
4. latent BC and the action decoder steps at the preset's batch, and one probe fit of the preset's
   size: seconds;
5. the preset's end-to-end time per run extrapolated from those rates.

On the CPU, at the ``smoke`` preset, it runs in the tests, so it cannot rot. On a GPU:
``MUJOCO_GL=egl masklam-bench gpu-check --out gpu_check.json`` (BENCHMARK.md, "GPU check").
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from masklam_bench.fileio import atomic_write_json

PACKAGES = ("torch", "mujoco", "dm_control", "gymnasium", "shimmy", "minari", "h5py", "numpy")
"""Packages the check needs; their versions are recorded, a missing one is named."""
COLLECT_STEPS = 200
"""Steps per collected episode (frames/s settles within a few hundred)."""


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
                            "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available()}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30,
                    cuda_version=torch.version.cuda)
    return info


def collect_rate(task: str, workers: int, episodes: int, steps: int) -> dict[str, Any]:
    """Frames/s of ``collect`` with ``workers`` processes (expert policy, into a temp folder)."""
    from masklam_bench.collect import collect
    from masklam_bench.envs import env_id

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        collect(env_id(task, "id"), Path(tmp) / "d", episodes=episodes, episode_steps=steps,
                workers=workers, progress=False, test_episodes=1, preset="gpu-check")
        seconds = time.perf_counter() - t0
    return {"workers": workers, "frames": episodes * steps, "seconds": seconds,
            "frames_per_s": episodes * steps / seconds}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_gib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


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
    if compile_ and hasattr(model, "compile"):
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

    bc_s = _timed(lambda: step(policy, frames, z), steps, device)
    dec_s = _timed(lambda: step(decoder, z_dec, a), steps, device)
    rng = np.random.default_rng(0)
    zs = rng.standard_normal((probe_rows, dim)).astype(np.float32)
    acts = rng.standard_normal((probe_rows, 6)).astype(np.float32)
    t0 = time.perf_counter()
    metrics.linear_probe_nmses(zs, zs[: max(1, probe_rows // 10)],
                               {"a": (acts, acts[: max(1, probe_rows // 10)])})
    return {"dim": dim, "bc_step_s": bc_s, "decoder_step_s": dec_s,
            "decoder_batch": decoder_batch,
            "probe_fit_s": time.perf_counter() - t0, "probe_rows": probe_rows}


def extrapolate(preset: Any, lam: dict[str, Any], down: dict[str, Any],
                frames_per_s: float) -> dict[str, float]:
    """Seconds per stage of one run of ``preset`` from the measured rates."""
    t = preset.train
    episodes = preset.data.train_episodes + preset.data.test_episodes
    stages = {
        "collect_s": episodes * preset.data.episode_steps / frames_per_s,
        "lam_s": t.lam_steps * t.lam_batch / lam["samples_per_s"],
        "probe_s": 2 * down["probe_fit_s"] * t.probe_fit_transitions / down["probe_rows"],
        "bc_s": t.bc_steps * down["bc_step_s"],
        "decoder_s": t.decoder_steps * down["decoder_step_s"],
        # Rollouts step all evaluation envs together: about as fast as collecting.
        "eval_s": 2 * t.eval_episodes * t.eval_episode_steps / frames_per_s,
    }
    stages["run_s_without_collect"] = sum(v for k, v in stages.items() if k != "collect_s")
    return stages


def gpu_check(preset_name: str, device: str, dims: list[int], steps: int, workers: int,
              task: str = "cheetah-run", compile_modes: tuple[bool, ...] = (False, True),
              collect_steps: int = COLLECT_STEPS) -> dict[str, Any]:
    """Every measurement of the module docstring, as one dict."""
    from masklam_bench.presets import get_preset, preset_record
    from masklam_bench.runner import DECODER_BATCH_PER_BC_BATCH

    preset = get_preset(preset_name)
    t = preset.train
    out: dict[str, Any] = {"preset": preset_record(preset), "machine": machine_info(device)}
    out["collect"] = collect_rate(task, workers, max(2, workers), collect_steps)
    out["lam"] = [lam_rate(m, d, t.encoder, t.lam_batch, steps, device, c)
                  for m in ("lapo", "masklam") for d in dims for c in compile_modes]
    decoder_batch = min(DECODER_BATCH_PER_BC_BATCH * t.bc_batch, preset.data.labelled_transitions)
    out["downstream"] = [downstream_rates(d, t.encoder, t.bc_batch, steps,
                                          min(t.probe_fit_transitions, 20_000), device,
                                          decoder_batch)
                         for d in dims]
    fps = out["collect"]["frames_per_s"]
    out["extrapolated"] = {
        f"{row['method']}_d{row['dim']}{'_compiled' if row['compile'] else ''}": extrapolate(
            preset, row, next(d for d in out["downstream"] if d["dim"] == row["dim"]), fps)
        for row in out["lam"]}
    return out


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``masklam-bench gpu-check``."""
    p = subparsers.add_parser("gpu-check",
                              help="measure the gpu preset's stages on this device (minutes)")
    p.add_argument("--out", default="gpu_check.json", help="JSON file to write")
    p.add_argument("--preset", default="gpu", choices=["smoke", "cpu", "gpu"])
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dims", default="64,8192", help="latent dims (default: 64,8192)")
    p.add_argument("--steps", type=int, default=100, help="timed steps per measurement")
    p.add_argument("--workers", type=int, default=0, help="collection workers (0: all cores)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.set_defaults(func=_cmd_gpu_check)


def _cmd_gpu_check(args: argparse.Namespace) -> None:
    import torch

    from masklam_bench.checks import check_device, parse_int_list

    device = check_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dims = parse_int_list(args.dims, "--dims", minimum=1)
    workers = args.workers or os.cpu_count() or 1
    # On the CPU torch.compile builds C++ kernels for minutes; the check is about the GPU.
    modes = (False,) if args.no_compile or device == "cpu" else (False, True)
    result = gpu_check(args.preset, device, dims, args.steps, workers, compile_modes=modes)
    atomic_write_json(args.out, result)
    print(f"collect: {result['collect']['frames_per_s']:.0f} frames/s with {workers} workers")
    for row in result["lam"]:
        peak = "" if row["peak_gib"] is None else f", peak {row['peak_gib']:.1f} GiB"
        print(f"LAM {row['method']} d{row['dim']} compile={row['compile']}: "
              f"{row['samples_per_s']:.0f} samples/s{peak}")
    for name, stages in result["extrapolated"].items():
        print(f"{args.preset} run, {name}: {stages['run_s_without_collect'] / 3600:.2f} h "
              f"(+ {stages['collect_s'] / 3600:.2f} h to collect the task's data once)")
    print(f"wrote {args.out}")
