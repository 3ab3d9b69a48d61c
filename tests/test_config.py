"""Configs: the reference recipe's defaults, and bad values rejected with the field's name before any work."""
from __future__ import annotations

import pytest

from clipft_utils.methods import make_config
from clipft_utils.methods import names

from clipft_utils.errors import ConfigError

METHODS = names()


def test_seed_defaults():
    lp = make_config("linear_probe")
    assert (lp.lr, lp.weight_decay, lp.epochs, lp.patience) == (1e-3, 1e-4, 50, 10)
    ft = make_config("full_finetune")
    assert (ft.lr, ft.head_lr, ft.warmup_epochs, ft.grad_clip, ft.epochs) == (1e-5, 1e-4, 5, 1.0, 30)
    lora = make_config("lora")
    assert (lora.rank, lora.alpha, lora.lr, lora.epochs, lora.targets) == (8, 16, 1e-4, 40, ("q", "v"))
    bitfit = make_config("bitfit")
    assert (bitfit.lr, bitfit.epochs) == (1e-3, 30)
    prefix = make_config("prefix_tuning")
    assert (prefix.prefix_length, prefix.prefix_hidden, prefix.lr, prefix.epochs) == (10, 512, 1e-4, 40)


def test_smoke_profile_shortens_schedules_but_keeps_each_method_what_it_is():
    """The stand-in trains a shorter budget (with larger steps), never a different method or architecture."""
    for method in ("bitfit", "prefix_tuning", "lora", "full_finetune"):
        smoke, full = make_config(method, "smoke"), make_config(method, "full")
        assert smoke.epochs < full.epochs and smoke.lr >= full.lr
        assert smoke.budget(16).total < full.budget(16).total
        schedule = {"epochs", "lr", "warmup_epochs", "batch_size", "min_steps_per_epoch", "budget_scale"}
        same = {k: v for k, v in smoke.to_dict().items() if k not in schedule}
        assert same == {k: v for k, v in full.to_dict().items() if k not in schedule}, method


def test_explicit_arguments_beat_profile_defaults():
    assert make_config("lora", "smoke", lr=5e-4, epochs=2).lr == 5e-4
    assert make_config("lora", "smoke", epochs=2).epochs == 2


@pytest.mark.parametrize("method,field,value", [
    ("bitfit", "lr", 0.0), ("bitfit", "lr", -1e-3), ("lora", "epochs", 0), ("full_finetune", "batch_size", -4),
    ("lora", "rank", 0), ("lora", "rank", -2), ("prefix_tuning", "prefix_length", 0), ("linear_probe", "epochs", 2.5),
    ("full_finetune", "head_lr", float("nan")),
])
def test_non_positive_values_name_the_field(method, field, value):
    with pytest.raises(ConfigError, match=field):
        make_config(method, **{field: value})


def test_unknown_method_and_field():
    with pytest.raises(ConfigError, match="Unknown method 'lorra'.*lora"):
        make_config("lorra")
    with pytest.raises(ConfigError, match="no field"):
        make_config("bitfit", rank=4)


def test_warmup_must_fit_in_training():
    with pytest.raises(ConfigError, match="warmup_epochs"):
        make_config("full_finetune", epochs=3)  # default warm-up is 5 epochs
    assert make_config("full_finetune", epochs=3, warmup_epochs=1).warmup_epochs == 1


def test_every_method_has_a_config():
    for method in METHODS:
        assert make_config(method, "smoke").to_dict()
