"""Hooks the hub task YAMLs call (`!function utils.*`): lm-eval resolves them next to the YAML."""

from unlock.tasks.hub import load_hub_splits  # noqa: F401
from unlock.tasks.utils import process_generation  # noqa: F401
