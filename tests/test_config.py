"""Options declared once: config objects, flat keywords, settings, the README's knob table."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from art_generalist import GeneralistConfig, GeneralistTrainer, LearnerSpec
from art_generalist.methods.generalist import knob_table
from art_generalist.train.options import PGDBudget, RuntimeOptions
from tests.conftest import FAST, make_classifier

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_knob_table_is_the_generated_one():
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- knobs:start -->\n(.*?)\n<!-- knobs:end -->", text, re.S)
    assert match, "README.md lacks the generated knob table markers"
    regenerate = "python -c 'from art_generalist.methods.generalist import knob_table; print(knob_table())'"
    assert match.group(1) == knob_table(), f"regenerate the table with: {regenerate}"


def test_every_option_has_one_row_and_a_unique_flat_name():
    names = [row[0] for cls in (PGDBudget, GeneralistConfig, RuntimeOptions) for row in cls.rows()]
    assert len(names) == len(set(names))
    assert {"ema_decay", "beta_schedule", "distribute_start", "per_iteration_schedules", "learners"} <= set(names)
    assert all(doc for cls in (PGDBudget, GeneralistConfig, RuntimeOptions) for _, _, doc in cls.rows())


def test_flat_keywords_and_config_objects_are_the_same_configuration():
    cfg = GeneralistConfig.from_options(ema_decay=0.9, distribute_every=0.125, per_iteration_schedules=True)
    assert cfg.ema.decay == 0.9 and cfg.distribution.every == 0.125 and cfg.schedules.per_iteration
    assert cfg.mixing == GeneralistConfig().mixing  # untouched groups keep their defaults
    by_keywords = GeneralistTrainer(make_classifier(), ema_decay=0.9, distribute_every=0.125,
                                    per_iteration_schedules=True, **FAST)
    by_config = GeneralistTrainer(make_classifier(), config=cfg, **FAST)
    assert by_keywords.config == by_config.config == cfg
    assert by_keywords.settings() == by_config.settings()
    overridden = GeneralistTrainer(make_classifier(), config=cfg, ema_decay=0.5, **FAST)
    assert overridden.config.ema.decay == 0.5 and overridden.config.distribution.every == 0.125
    assert cfg.ema.decay == 0.9  # frozen: replace returns a copy


def test_settings_come_from_the_config():
    trainer = GeneralistTrainer(make_classifier(), beta_schedule=((0, 1), (1, 0.2)), **FAST)
    settings = trainer.settings()
    for name in GeneralistConfig.flat_names():
        assert name in settings
    assert settings["beta_schedule"] == [[0, 1], [1, 0.2]] and settings["ema_decay"] == "auto"
    assert [lrn["name"] for lrn in settings["learners"]] == ["robust", "natural"]


@pytest.mark.parametrize("options, match", [
    (dict(ema_decy=0.9), r"Unknown option\(s\) \['ema_decy'\].*valid options"),
    (dict(ema_decay=1.5), "ema_decay"), (dict(ema_decay=True), "ema_decay"),
    (dict(beta_schedule=((0, 1), (1, 1.4))), "beta_schedule"),
    (dict(beta_schedule="fancy"), "beta_schedule"), (dict(lr_schedule=3), "lr_schedule"),
    (dict(distribute_every=1.5), "distribute_every"), (dict(distribute_length=0.5), "distribute_length"),
    (dict(learners=[LearnerSpec("robust", "pgd")]), "at least 2"),
    (dict(learners=[LearnerSpec("a", "pgd"), LearnerSpec("a", "natural")]), "unique"),
    (dict(learners=[LearnerSpec("a", "pgd"), LearnerSpec("b", "fgsm")]), "Unknown objective"),
    (dict(mix_weights=0.5), "mix_weights"),
])
def test_bad_options_are_refused_with_the_name(options, match):
    with pytest.raises(ValueError, match=match):
        GeneralistConfig.from_options(**options)
    with pytest.raises(ValueError, match=match):
        GeneralistTrainer(make_classifier(), **FAST, **options)


@pytest.mark.parametrize("options, match", [
    (dict(eps=0.0), "eps"), (dict(eps_step=-1), "eps_step"), (dict(max_iter=0), "max_iter"),
    (dict(norm=1), "norm"), (dict(val_max_iter=-1), "val_max_iter"), (dict(channels_last="yes"), "channels_last"),
    (dict(eps=8), "0-255|input range"), (dict(verbos=False), "Unknown option"),
])
def test_bad_budget_and_runtime_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        GeneralistTrainer(make_classifier(), **{**FAST, **options})
