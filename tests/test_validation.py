"""dynprune.validation: each check passes good values and names the field, the rule and the value otherwise."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dynprune.validation import (
    require_at_least,
    require_finite,
    require_in_range,
    require_integer,
    require_known_keys,
    require_one_of,
    require_positive,
)


@dataclass
class Cfg:
    steps: int = 1
    lr: float = 1e-3
    frac: float = 0.5
    loss: str = "ce"


def test_good_values_pass():
    cfg = Cfg()
    require_at_least(cfg, 1, "steps")
    require_integer(cfg, 0, "steps")
    require_positive(cfg, "lr", "frac")
    require_finite(cfg, "lr")
    require_in_range(cfg, 0, 1, "frac", interval="()")
    require_one_of(cfg, "loss", ("ce", "kd"))
    require_known_keys({"steps": 2, "loss": "kd"}, Cfg, "settings")


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (lambda: require_at_least(Cfg(steps=0), 1, "steps"), "Cfg.steps must be >= 1, got 0"),
        (lambda: require_at_least(Cfg(frac=float("nan")), 0, "frac"), "Cfg.frac must be >= 0, got nan"),
        (lambda: require_integer(Cfg(steps=True), 0, "steps"), "Cfg.steps must be an integer >= 0, got True"),
        (lambda: require_integer(Cfg(steps=2.0), 1, "steps"), "Cfg.steps must be an integer >= 1, got 2.0"),
        (lambda: require_at_least(Cfg(steps="3"), 1, "steps"), "Cfg.steps must be >= 1, got '3'"),
        (lambda: require_in_range(Cfg(frac="x"), 0, 1, "frac"), r"Cfg.frac must be a number in \[0, 1\], got 'x'"),
        (lambda: require_positive(Cfg(lr=0.0), "lr"), "Cfg.lr must be > 0 and finite, got 0.0"),
        (lambda: require_positive(Cfg(lr=float("inf")), "lr"), "Cfg.lr must be > 0 and finite, got inf"),
        (lambda: require_finite(Cfg(lr=float("nan")), "lr"), "Cfg.lr must be finite, got nan"),
        (lambda: require_in_range(Cfg(frac=1.0), 0, 1, "frac", interval="[)"), r"frac must be in \[0, 1\), got 1.0"),
        (lambda: require_in_range(Cfg(frac=0.0), 0, 1, "frac", interval="(]"), r"frac must be in \(0, 1\], got 0.0"),
        (lambda: require_in_range(Cfg(frac=1.5), 0, 1, "frac"), r"Cfg.frac must be in \[0, 1\], got 1.5"),
        (lambda: require_one_of(Cfg(loss="mse"), "loss", ("ce", "kd")), r"one of \(.ce., .kd.\), got .mse."),
        (lambda: require_known_keys({"step": 1}, Cfg, "settings"), r"unknown settings \['step'\]; expected some of"),
    ],
)
def test_bad_values_are_named(check, message):
    with pytest.raises(ValueError, match=message):
        check()
