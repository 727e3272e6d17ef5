"""Training throughput of a method's ``train_step`` next to the same networks in a bare loop."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import time
from typing import Any

import torch

from masklam_bench.allocator import tune_allocator
from masklam_bench.baselines.base import LamConfig
from masklam_bench.baselines.lapo import LAPO, make_adamw
from masklam_bench.baselines.networks import count_parameters, fdm_input, idm_input, to_unit_range
from masklam_bench.baselines.registry import get_method

MASK_BOX_FRACTION = 0.4
"""Side of the random agent box in a :func:`random_batch`, as a fraction of the image side."""
WARMUP_STEPS = 2
"""Untimed steps before measuring (allocator and oneDNN kernel selection)."""
ROUNDS = 4
"""Timed blocks, alternating method and bare loop so background load hits both alike."""


def random_batch(config: LamConfig, image_size: int, action_dim: int, batch_size: int,
                 generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A batch in the format of LatentActionMethod's docstring: noise frames, box-shaped masks."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    c, s = config.context_frames, image_size
    pixels = torch.randint(0, 256, (batch_size, c + 1, 3, s, s), generator=g, dtype=torch.uint8)
    # One agent box per sample, kept for all frames: about 16% of the pixels.
    side = max(1, int(MASK_BOX_FRACTION * s))
    corners = torch.randint(0, s - side + 1, (batch_size, 2), generator=g)
    rows = torch.arange(s)
    inside_r = (rows >= corners[:, :1]) & (rows < corners[:, :1] + side)
    inside_c = (rows >= corners[:, 1:]) & (rows < corners[:, 1:] + side)
    mask = inside_r[:, :, None] & inside_c[:, None, :]
    batch = {
        "context": pixels[:, :c],
        "target": pixels[:, c],
        "k": torch.randint(1, config.max_future + 1, (batch_size,), generator=g),
        "context_mask": mask[:, None].expand(-1, c, -1, -1).clone(),
        "target_mask": mask,
        "action": torch.rand((batch_size, action_dim), generator=g) * 2 - 1,
    }
    # Drawn after the keys above, so those stay what they were before these keys existed.
    later = torch.randint(0, 256, (batch_size, c, 3, s, s), generator=g, dtype=torch.uint8)
    later[:, -1] = batch["target"]
    batch["target_context"] = later
    next_is_target = (batch["k"] == 1)[:, None, None, None]
    batch["next"] = torch.where(next_is_target, batch["target"], later[:, 0])
    batch["next_mask"] = mask
    return {key: value.to(device) for key, value in batch.items()}


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work so timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bare_step_fn(method: LAPO, batch: dict[str, torch.Tensor]):
    """A closure doing forward, loss, backward and an AdamW step on ``method``'s IDM and FDM only."""
    config = method.config
    params = list(method.idm.parameters()) + list(method.fdm.parameters())
    optimizer = make_adamw(params, config)
    autocast = (torch.autocast(method.device.type, dtype=torch.bfloat16) if config.bf16
                else contextlib.nullcontext())

    def step() -> None:
        with autocast:
            z = method.idm(idm_input(batch, config))
            pred = method.fdm(fdm_input(batch, config), z,
                              batch["k"] if config.max_future > 1 else None)
        loss = method.reconstruction_loss(pred.float(), to_unit_range(batch["target"]), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _samples_per_s(step, batch_size: int, steps: int, device: torch.device) -> float:
    """Samples/s of ``steps`` calls of ``step``."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch_size * steps / (time.perf_counter() - start)


def train_throughput(method_name: str, config: LamConfig, image_size: int = 64,
                     action_dim: int = 6, batch: int = 64, steps: int = 20,
                     device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """Samples/s of ``train_step`` and of a bare PyTorch loop on the same networks, same batch.

    The bare loop (forward, loss, backward, AdamW step; no schedule, clipping, probe or logs) runs
    only for methods built on :class:`LAPO`; otherwise its entries are None. Rates are medians
    over alternating timed blocks.
    """
    cls = get_method(method_name)
    config = dataclasses.replace(config, **cls.config_overrides())
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        method = cls(config, image_size, action_dim, device)
        data = random_batch(config, image_size, action_dim, batch, device=device)
        if cls.labelled_batch_size:
            data["labelled"] = random_batch(config, image_size, action_dim,
                                            cls.labelled_batch_size,
                                            torch.Generator().manual_seed(1), device)
        bare_step = None
        if isinstance(method, LAPO):
            torch.manual_seed(0)
            bare_step = _bare_step_fn(cls(config, image_size, action_dim, device), data)

        def method_step() -> None:
            method.train_step(data)

        dev = torch.device(device)
        block = max(1, steps // ROUNDS)
        method_rates, bare_rates = [], []
        for _ in range(WARMUP_STEPS):
            method_step()
            if bare_step is not None:
                bare_step()
        for _ in range(max(1, steps // block)):
            method_rates.append(_samples_per_s(method_step, batch, block, dev))
            if bare_step is not None:
                bare_rates.append(_samples_per_s(bare_step, batch, block, dev))
        method_sps = statistics.median(method_rates)
        bare_sps = statistics.median(bare_rates) if bare_rates else None
        params = count_parameters(method.nets) if hasattr(method, "nets") else 0
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "method": cls.name,
        "encoder": config.encoder,
        "latent_dim": config.latent_dim,
        "image_size": image_size,
        "batch": batch,
        "bf16": config.bf16,
        "device": device,
        "threads": torch.get_num_threads() if threads is None else threads,
        "params": params,
        "method_samples_per_s": round(method_sps, 1),
        "bare_samples_per_s": None if bare_sps is None else round(bare_sps, 1),
        "overhead_pct": None if bare_sps is None else round(100 * (bare_sps / method_sps - 1), 1),
    }


def main(argv: list[str] | None = None) -> None:
    """Print one JSON line of :func:`train_throughput` per method, latent size and thread count."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--methods", default="lapo,masklam", help="comma-separated method names")
    parser.add_argument("--dims", default="64,8192", help="comma-separated latent sizes")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--encoder", default="light", choices=("light", "impala"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    tune_allocator()  # as every masklam-bench command and run does: the same allocator as a run
    try:
        dims = [int(d) for d in args.dims.split(",")]
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error(f"--dims and --threads take comma-separated integers, e.g. 64,8192; got "
                     f"{args.dims!r} and {args.threads!r}.")
    for name in args.methods.split(","):
        for dim in dims:
            for n in threads:
                config = LamConfig(latent_dim=dim, encoder=args.encoder, bf16=args.bf16)
                print(json.dumps(train_throughput(name, config, args.image_size, batch=args.batch,
                                                  steps=args.steps, device=args.device,
                                                  threads=n)), flush=True)


if __name__ == "__main__":
    main()
