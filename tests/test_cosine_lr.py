"""prune_core.train.cosine_lr against hand-computed values."""

from __future__ import annotations

import math

import pytest

from prune_core.train import cosine_lr


def test_start_half_and_end_are_exact():
    assert cosine_lr(0.1, 0, 10) == 0.1  # cos(0) = 1
    # cos(pi / 2) is 6.1e-17 in floats, under half an ulp of 1.0: 0.1 * 0.5 * 1.0 exactly
    assert cosine_lr(0.1, 5, 10) == 0.05
    assert cosine_lr(0.1, 5.0, 10) == 0.05
    assert cosine_lr(0.1, 10, 10) == 0.0  # cos(pi) = -1 exactly
    assert cosine_lr(0.1, 25, 10) == 0.0  # past the end the schedule stays at 0


def test_quarters():
    # 0.5 * (1 + cos(pi / 4)) = (2 + sqrt 2) / 4 = 0.853553390593..., and 1 - that at 3/4
    assert cosine_lr(1.0, 1, 4) == pytest.approx((2 + math.sqrt(2)) / 4, rel=1e-15)
    assert cosine_lr(1.0, 3, 4) == pytest.approx((2 - math.sqrt(2)) / 4, rel=1e-14)
    assert cosine_lr(0.05, 1, 4) == pytest.approx(0.0426776695296637, rel=1e-14)


def test_units_only_need_to_agree():
    # epoch 2 of 8 is step 60 of 240 at 30 steps per epoch
    assert cosine_lr(0.2, 2, 8) == pytest.approx(cosine_lr(0.2, 60, 240), rel=1e-15)
