"""masklam-bench: latent action models that learn from video with distracting backgrounds.

Importing the package registers the twelve environments with Gymnasium
(``DistractingCheetah-v0``, ``DistractingCheetahOOD-v1``, ``CleanCheetah-v0``, ...).
"""

from masklam_bench.envs import env_id, register_envs, registered_ids

__version__ = "0.1.0"

register_envs()


def load_results(path="leaderboards/results"):
    """Result files under ``path`` as a pandas DataFrame, one row per run (see ``frame``)."""
    from masklam_bench.frame import load_results as load  # pandas is imported on first use

    return load(path)


__all__ = ["__version__", "env_id", "load_results", "register_envs", "registered_ids"]
