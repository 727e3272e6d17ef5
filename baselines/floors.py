"""Floor rows: what the downstream pipeline scores without a trained LAM, or without unlabelled data.

A LAM row means something only above both floors: ``untrained-idm`` (LAPO's IDM at its random
initial weights, through latent BC, decoder and rollouts) and ``bc-labelled`` (pixel BC on the
labelled subset alone, the policy one gets without any unlabelled video).
"""

from __future__ import annotations

from masklam_bench.baselines.bc_labels import BCLabels
from masklam_bench.baselines.lapo import LAPO
from masklam_bench.baselines.registry import register


@register
class UntrainedIDM(LAPO):
    """LAPO's networks with stage 1 skipped: the latents are random convolutional features."""

    name = "untrained-idm"
    skips_pretraining = True


@register
class BCLabelled(BCLabels):
    """Pixel BC on the true actions of the labelled subset only (the preset's labelled budget)."""

    name = "bc-labelled"
    bc_on_labelled_only = True
