"""The oracle: LAPO trained and evaluated without distractors, the upper bound MaskLAM aims at."""

from __future__ import annotations

from masklam_bench.baselines.lapo import LAPO
from masklam_bench.baselines.registry import register


@register
class Oracle(LAPO):
    """LAPO on distractor-free data and env (the runner switches both on ``uses_clean_data``)."""

    name = "oracle"
    uses_clean_data = True
