"""Every shipped training config loads through the typed schema (unknown keys are refused), and
the zero-shot recipe keeps the settings its benchmark measured."""

from __future__ import annotations

from pathlib import Path

import pytest

from npdecode.train.config import load_train_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("train-*.yml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_training_configs_load(path):
    config = load_train_config(path, ())
    assert config.model.memory_weight >= 0


def test_the_zero_shot_recipe_decodes_with_the_ce_memory():
    config = load_train_config(CONFIGS[0].parent / "train-scifact-zero-shot.yml", ())
    assert config.model.memory_weight == 1000 and config.model.train_ce and config.model.freeze_encoder
