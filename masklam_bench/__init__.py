"""masklam-bench: latent action models that learn from video with distracting backgrounds.

Importing the package registers the twelve environments with Gymnasium
(``DistractingCheetah-v0``, ``DistractingCheetahOOD-v1``, ``CleanCheetah-v0``, ...).
"""

from masklam_bench.envs import env_id, register_envs, registered_ids

__version__ = "0.1.0"

register_envs()

__all__ = ["__version__", "env_id", "register_envs", "registered_ids"]
