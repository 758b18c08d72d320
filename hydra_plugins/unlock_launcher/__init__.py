"""Hydra discovers launchers only inside the ``hydra_plugins`` namespace package."""
