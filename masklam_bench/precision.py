"""Whether a run trains under bf16 autocast: where the device computes in bf16 fast, and not else.

bf16 autocast is faster than float32 only where the hardware has bf16 arithmetic: CUDA GPUs, and
CPUs whose oneDNN kernels take bf16 (x86 with AVX-512 or AMX, Arm with BF16). Elsewhere, on an
x86 CPU with AVX2 alone, say, PyTorch has no bf16 kernel for matrix products or convolutions and
falls back to scalar loops: on a 2-core AVX2 VM a MaskLAM step took 9x as long as in float32 at
latent 64 and 77x at latent 8192 (BENCHMARK.md, "bf16 on CPUs without bf16 instructions"). A run
whose ``bf16`` is None therefore uses bf16 where it is fast and float32 elsewhere; True or False
(``--bf16`` / ``--no-bf16``) forces either. A float32 run is named ``+fp32`` and its result sits
in a leaderboard table of its own, never ranked with the preset's bf16 rows.
"""

from __future__ import annotations

import argparse
import functools

FLOAT32_NOTE = (
    "note: this CPU has no bf16 matrix instructions (AVX-512 or AMX on x86), where bf16 autocast "
    "runs 9-77x slower than float32, so the run trains in float32: its result is named +fp32 "
    "and has a leaderboard table of its own (--bf16 forces bf16, --no-bf16 float32).")
"""What ``run`` and ``sweep`` print when a run's precision resolves to float32 on a CPU."""


@functools.cache
def fast_bf16(device: str) -> bool:
    """Whether ``device`` (``cpu``, ``cuda``, ``cuda:1``, ...) does bf16 arithmetic fast.

    CUDA: True, without asking the GPU (which would start CUDA in a process that only plans runs;
    the GPUs the ``gpu`` preset is sized for all compute in bf16; ``--no-bf16`` for one that
    does not). CPU: oneDNN, which PyTorch's bf16 matrix products and convolutions need, supports
    bf16 on this processor (any x86 CPU with AVX-512 or AMX; False where ``ONEDNN_MAX_CPU_ISA``
    caps oneDNN below AVX-512, or in a torch build without oneDNN). Other devices: True.
    """
    import torch

    kind = torch.device(device).type
    if kind == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a build without oneDNN: no bf16 kernels
            return False
    return True


def add_bf16_flag(parser: argparse.ArgumentParser) -> None:
    """``--bf16`` / ``--no-bf16`` on ``parser`` (``args.bf16``: True, False, or None for the
    device's choice)."""
    parser.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=None,
        help="bf16 autocast for the LAM, latent BC and decoder (default: on CUDA and on CPUs with "
             "bf16 instructions, AVX-512 or AMX; float32 elsewhere, where bf16 is 9-77x slower)")


def float32_note(bf16: bool | None, device: str) -> str | None:
    """:data:`FLOAT32_NOTE` when a run asking ``bf16`` on ``device`` trains in float32 because
    the CPU is slow at bf16; None otherwise."""
    if bf16 is None and not uses_bf16(None, device):
        return FLOAT32_NOTE
    return None


def say_if_float32(bf16: bool | None, device: str) -> None:
    """Print :func:`float32_note` when there is one (``run`` and ``curve``, before training)."""
    note = float32_note(bf16, device)
    if note:
        print(note)


def uses_bf16(requested: bool | None, device: str) -> bool:
    """The precision a run with ``bf16=requested`` trains in on ``device``: the request when
    given, else bf16 where it is fast (:func:`fast_bf16`)."""
    return fast_bf16(device) if requested is None else bool(requested)


__all__ = ["FLOAT32_NOTE", "add_bf16_flag", "fast_bf16", "float32_note", "say_if_float32",
           "uses_bf16"]
