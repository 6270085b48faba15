"""Length-controlled win rate: the GLM recovers a planted length effect, equals the plain win
rate when lengths are equal, and the L1 fit and warning rule give hand-checkable numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from align.judging.lc_winrate import (
    extreme_change,
    fit_l1_logistic,
    length_controlled_win_rate,
)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def _synthetic(n: int, theta: float, phi: float, psi: float = 0.0, seed: int = 0):
    """Soft preferences from the GLM itself; the model's outputs are ~300 chars longer."""
    rng = np.random.default_rng(seed)
    len_base = rng.integers(200, 1500, n)
    len_model = np.maximum(1, len_base + rng.normal(300, 400, n).astype(int))
    delta = len_model - len_base
    gamma = rng.normal(0, 1, n)
    q = _sigmoid(theta + phi * np.tanh(delta / delta.std(ddof=1)) + psi * gamma)
    return list(1 + q), list(len_model), list(len_base), list(gamma), q


def test_recovers_planted_length_effect() -> None:
    prefs, lm, lb, _, q = _synthetic(400, theta=0.3, phi=1.0)
    r = length_controlled_win_rate(prefs, lm, lb)
    assert r is not None and r.psi is None
    assert r.phi == pytest.approx(1.0, abs=0.01)
    assert r.theta == pytest.approx(0.3, abs=0.01)
    # Longer outputs inflate the raw win rate to ~66; LC removes that: 100·σ(0.3) = 57.44.
    assert 100 * q.mean() > 65
    assert r.lc_win_rate == pytest.approx(100 * _sigmoid(0.3), abs=0.1)
    assert r.warning is None


def test_recovers_difficulty_and_length_together() -> None:
    prefs, lm, lb, gamma, _ = _synthetic(400, theta=0.3, phi=1.0, psi=0.8, seed=1)
    r = length_controlled_win_rate(prefs, lm, lb, gamma)
    assert (r.theta, r.phi, r.psi) == pytest.approx((0.3, 1.0, 0.8), abs=0.01)
    expected = 100 * _sigmoid(0.3 + 0.8 * np.asarray(gamma)).mean()
    assert r.lc_win_rate == pytest.approx(expected, abs=0.1)
    sem = 100 * _sigmoid(0.3 + 0.8 * np.asarray(gamma)).std(ddof=1) / math.sqrt(400)
    assert r.lc_standard_error == pytest.approx(sem, rel=0.02)


@pytest.mark.parametrize("with_gamma", [False, True])
def test_equal_lengths_give_the_plain_win_rate(with_gamma: bool) -> None:
    rng = np.random.default_rng(3)
    n = 200
    gamma = rng.normal(0, 1, n)
    q = _sigmoid(0.9 + (0.7 * gamma if with_gamma else rng.normal(0, 1, n)))
    args = (list(1 + q), [300] * n, [300] * n, list(gamma) if with_gamma else None)
    # Nearly unpenalised (C = 1e4): the score equation of the ones column makes the mean
    # prediction equal the mean target exactly.
    exact = length_controlled_win_rate(*args, cs=(1e4,))
    assert exact.lc_win_rate == pytest.approx(100 * q.mean(), abs=1e-3)
    # With C chosen by cross-validation the L1 shrinkage moves it by well under a point.
    cv = length_controlled_win_rate(*args)
    assert cv.lc_win_rate == pytest.approx(100 * q.mean(), abs=0.5)


def test_hard_preferences_draws_and_failures() -> None:
    # 6 wins, 2 losses, 1 draw given as 0 (AlpacaEval's draw code), 1 failure: WR = 6.5/9.
    prefs = [2, 2, 2, 2, 2, 2, 1, 1, 0, None]
    r = length_controlled_win_rate(prefs, [100] * 10, [100] * 10, cs=(1e4,))
    assert r.lc_win_rate == pytest.approx(100 * 6.5 / 9, abs=0.01)


def test_no_preferences_gives_none() -> None:
    assert length_controlled_win_rate([None, None], [1, 2], [2, 1]) is None


def test_l1_fit_hand_checkable() -> None:
    # Intercept only, soft target 0.8 on 10 rows: the unpenalised optimum is logit(0.8).
    x = np.ones((20, 1))
    y = np.r_[np.ones(10), np.zeros(10)]
    w = np.r_[np.full(10, 0.8), np.full(10, 0.2)]
    assert fit_l1_logistic(x, y, w, c=1e6)[0] == pytest.approx(math.log(4), abs=1e-4)
    # The L1 subgradient at 0 is c·Σ w (σ(0) - y) = c·(-3): zero wins while 3c <= 1.
    assert fit_l1_logistic(x, y, w, c=0.3)[0] == 0.0
    # Above that, the optimum solves 10c·(σ(β) - 0.8) = -1, i.e. σ(β) = 0.8 - 1/(10c).
    beta = fit_l1_logistic(x, y, w, c=1.0)[0]
    assert _sigmoid(beta) == pytest.approx(0.7, abs=1e-6)


@pytest.mark.parametrize(
    ("wr", "lc", "warn"),
    [
        (50, 62, False),  # a rise must exceed max(10, (100 - 50) / 4 = 12.5)
        (50, 63, True),
        (50, 37, True),  # a drop must exceed max(10, 50 / 4)
        (50, 40, False),
        (20, 9, True),  # a drop must exceed max(10, 5)
        (20, 11, False),
        (90, 99, False),  # a rise must exceed max(10, 2.5)
        (90, 100.5, True),
    ],
)
def test_warning_rule(wr: float, lc: float, warn: bool) -> None:
    assert extreme_change(wr, lc) is warn
