"""Length-controlled AlpacaEval win rate (AlpacaEval's `length_controlled_v1`).

GLM, fit per evaluated model on its soft preferences q_x = pref_x - 1 in [0, 1]:

    logit P(model > base | x) = θ·1 + φ·tanh(Δlen_x / sd(Δlen)) + ψ·γ_x

Δlen_x = len(model output) - len(baseline output) in characters (AlpacaEval uses the opposite
sign; φ absorbs it), sd over all rows (ddof 1; a zero sd makes the term 0). γ_x is the
per-instruction difficulty from a difficulty file. There is no free intercept: θ is the
"model vs baseline" column of ones.

Fit: soft targets by row duplication (y=1 with weight q, y=0 with weight 1-q); L1-penalised
logistic regression minimising ||β||_1 + C·Σ w·logloss (liblinear's objective, no intercept),
solved by proximal Newton with coordinate descent; C from Cs = logspace(-4, 4, 10) by 5-fold
cross-validation over instructions (both duplicates of an instruction in the same fold) on the
mean soft log-loss, then refit on all rows.

LC = 100·mean_x σ(θ + ψ·γ_x) (the length term set to 0), over every instruction;
lc_standard_error = 100·SEM of those probabilities.

Documented deviations: AlpacaEval also fits rows of two "gamed" baselines (verbose and concise
baseline outputs, weight λ/2 = 0.1) to regularise toward the baseline; those annotations are
not available here, so that term is omitted. Without a difficulty file the γ term is dropped
and LC = 100·σ(θ) (fallback; flagged in the result).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CS = tuple(float(c) for c in np.logspace(-4, 4, 10))  # sklearn LogisticRegressionCV default grid
N_SPLITS = 5  # AlpacaEval's length_controlled_v1 setting
C_WITHOUT_CV = 100.0  # AlpacaEval's C when it does not cross-validate


@dataclass
class LCResult:
    lc_win_rate: float
    lc_standard_error: float
    theta: float
    phi: float
    psi: float | None  # None: no difficulty file (fallback GLM without γ)
    C: float
    warning: str | None


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def _objective(beta: np.ndarray, x: np.ndarray, y: np.ndarray, w: np.ndarray, c: float) -> float:
    z = x @ beta
    # -log σ(z) for y=1 and -log σ(-z) for y=0, stably
    loss = np.logaddexp(0.0, -z) * y + np.logaddexp(0.0, z) * (1 - y)
    return float(c * (w * loss).sum() + np.abs(beta).sum())


def fit_l1_logistic(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, c: float, tol: float = 1e-10, max_iter: int = 200
) -> np.ndarray:
    """argmin_β ||β||_1 + c·Σ_i w_i·logloss(y_i, σ(x_i·β)) by proximal Newton steps; each step
    solves the L1-penalised quadratic model by coordinate descent, then backtracks."""
    beta = np.zeros(x.shape[1])
    value = _objective(beta, x, y, w, c)
    for _ in range(max_iter):
        p = _sigmoid(x @ beta)
        grad = c * x.T @ (w * (p - y))
        hess = c * (x.T * (w * p * (1 - p))) @ x
        d = np.zeros_like(beta)
        for _sweep in range(100):
            before = d.copy()
            for k in range(len(beta)):
                a = hess[k, k]
                if a <= 0:
                    d[k] = -beta[k]
                    continue
                lin = grad[k] + hess[k] @ d - a * d[k]
                target = beta[k] - lin / a
                d[k] = np.sign(target) * max(abs(target) - 1 / a, 0.0) - beta[k]
            if np.max(np.abs(d - before)) < tol:
                break
        decrease = grad @ d + np.abs(beta + d).sum() - np.abs(beta).sum()
        if np.max(np.abs(d)) < tol or decrease > -tol:
            break
        step = 1.0
        while (
            candidate := _objective(beta + step * d, x, y, w, c)
        ) > value + 1e-4 * step * decrease:
            step /= 2
            if step < 1e-10:
                return beta
        beta, value = beta + step * d, candidate
    return beta


def _duplicate(x: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft targets as rows: each x once with y=1, weight q, and once with y=0, weight 1-q."""
    n = len(q)
    return np.vstack([x, x]), np.r_[np.ones(n), np.zeros(n)], np.r_[q, 1 - q]


def _soft_logloss(beta: np.ndarray, x: np.ndarray, q: np.ndarray) -> float:
    p = np.clip(_sigmoid(x @ beta), 1e-15, 1 - 1e-15)
    return float(-np.mean(q * np.log(p) + (1 - q) * np.log(1 - p)))


def choose_c(x: np.ndarray, q: np.ndarray, cs: tuple[float, ...], n_splits: int) -> float:
    """The C with the lowest mean held-out soft log-loss (folds by instruction, round-robin)."""
    n_splits = min(n_splits, len(q))
    if n_splits < 2:
        return C_WITHOUT_CV
    folds = np.arange(len(q)) % n_splits
    losses = []
    for c in cs:
        fold_losses = []
        for f in range(n_splits):
            train, test = folds != f, folds == f
            beta = fit_l1_logistic(*_duplicate(x[train], q[train]), c)
            fold_losses.append(_soft_logloss(beta, x[test], q[test]))
        losses.append(np.mean(fold_losses))
    return cs[int(np.argmin(losses))]


def extreme_change(win_rate: float, lc: float, abs_diff: float = 10, rel_diff: float = 4) -> bool:
    """AlpacaEval's warning rule: LC moved by more than max(10 points, a quarter of the headroom
    in that direction: WR when LC is lower, 100 - WR when LC is higher)."""
    too_small = lc < min(win_rate - win_rate / rel_diff, win_rate - abs_diff)
    too_large = lc > max(win_rate + (100 - win_rate) / rel_diff, win_rate + abs_diff)
    return too_small or too_large


def length_controlled_win_rate(
    preferences: list[float | None],
    len_model: list[int],
    len_base: list[int],
    difficulty: list[float] | None = None,
    cs: tuple[float, ...] = CS,
    n_splits: int = N_SPLITS,
) -> LCResult | None:
    """Fit the GLM on the rows with a preference (in [1, 2]; 0 counts as a draw, 1.5) and
    predict every row with the length term at 0. None when no row has a preference."""
    prefs = [1.5 if p == 0 else p for p in preferences]
    valid = np.array([p is not None for p in prefs])
    if not valid.any():
        return None
    delta = np.asarray(len_model, float) - np.asarray(len_base, float)
    sd = float(np.std(delta, ddof=1)) if len(delta) > 1 else 0.0
    length = np.tanh(delta / sd) if sd > 0 else np.zeros_like(delta)
    columns = [np.ones_like(delta), length]
    if difficulty is not None:
        columns.append(np.asarray(difficulty, float))
    x = np.column_stack(columns)
    q = np.array([p - 1 for p in prefs if p is not None], float)
    c = choose_c(x[valid], q, cs, n_splits)
    beta = fit_l1_logistic(*_duplicate(x[valid], q), c)
    x_test = x.copy()
    x_test[:, 1] = 0.0
    probs = _sigmoid(x_test @ beta)
    lc = 100 * float(probs.mean())
    sem = 100 * float(np.std(probs, ddof=1) / math.sqrt(len(probs))) if len(probs) > 1 else 0.0
    win_rate = 100 * float(q.mean())
    warning = None
    if extreme_change(win_rate, lc):
        warning = (
            f"length-controlled win rate {lc:.1f} is very different from the raw {win_rate:.1f}; "
            "the GLM may have failed (too few instructions, or a degenerate length pattern)"
        )
    return LCResult(
        lc_win_rate=lc,
        lc_standard_error=sem,
        theta=float(beta[0]),
        phi=float(beta[1]),
        psi=float(beta[2]) if difficulty is not None else None,
        C=c,
        warning=warning,
    )
