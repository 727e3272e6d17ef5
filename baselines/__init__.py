"""Latent action methods (LAPO, MaskLAM and its variants, LAOM and its variants, reference rows).

Look a method up by name with :func:`get_method` (``lapo``, ``masklam``, ``masklam-full``,
``laom``, ``laom-labels``, ``laom-masked``, ``oracle``, ``bc-labels``, and the floor rows
``untrained-idm`` and ``bc-labelled``) or pass ``module.path:ClassName`` for a method of your own.
"""

# Importing the method modules registers them.
from masklam_bench.baselines import (  # noqa: F401
    bc_labels,
    floors,
    laom,
    laom_labels,
    laom_masked,
    lapo,
    masklam,
    masklam_full,
    oracle,
)
from masklam_bench.baselines.base import LamConfig, LatentActionMethod
from masklam_bench.baselines.registry import available_methods, get_method, register

__all__ = ["LamConfig", "LatentActionMethod", "available_methods", "get_method", "register"]
