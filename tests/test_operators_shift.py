"""Shift stability of every public policy / value / target operator, in float32 at real value scales.

Deep agents see returns in the hundreds with τ ≈ 0.03 (q/τ ≈ 1e4): an operator that forms
q/τ or projects onto the simplex before removing the row maximum loses ulp(q/τ) per entry and
then multiplies the normalization error by |q| (measured before the shift: MVI(2) targets off by 0.1 at q ≈ 100).
For q = base + c with offsets c up to 1e3, each operator evaluated in float32 must agree with
its float64 evaluation on the SAME (float32-rounded) inputs to 1e-5·(1 + |q|) (values) or
1e-5·(1 + |output|) (policies), and the float64 evaluation must obey the shift rule of its kind:
policy(q + c) = policy(q), value(q + c) = value(q) + c, target(q̄ + c) = target(q̄) + d·c.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from klrl import operators as ops

B, A = 3, 4
INDICES = (1.0, 1.5, 2.0, 3.0)


class Inputs(NamedTuple):
    q_s: np.ndarray        # q̄(s)   [B, A]
    q_next: np.ndarray     # q̄(s')  [B, A]
    q_online: np.ndarray   # q(s')   [B, A] (double DQN)
    log_prior: np.ndarray  # ln π_ref(s') or ln π₋(s') [B, A]
    action: np.ndarray     # [B]
    reward: np.ndarray     # [B]
    discount: np.ndarray   # [B]


class Case(NamedTuple):
    kind: str                                   # policy | value | target
    fn: Callable[[Inputs, dict], jax.Array]     # float inputs -> output


def _log_simplex(x):
    return x - np.log(np.sum(np.exp(x), -1, keepdims=True))


def _tsallis_cases() -> dict[str, Case]:
    cases = {}
    for k in INDICES:
        for traced in (False, True):
            name = f"q={k}{'-traced' if traced else ''}"
            idx = (lambda x, k=k: jnp.full((B,), k, x.q_s.dtype)) if traced else (lambda x, k=k: k)
            cases[f"tsallis_greedy_policy[{name}]"] = Case("policy", lambda x, c, idx=idx: ops.tsallis_greedy_policy(
                x.q_s, tau=c["tau"], entropic_index=idx(x)))
            cases[f"tsallis_greedy_policy_consistent[{name}]"] = Case("policy", lambda x, c, idx=idx: (
                ops.tsallis_greedy_policy(x.q_s, tau=c["tau"], entropic_index=idx(x), consistent_weight=True)))
            cases[f"tsallis_value[{name}]"] = Case("value", lambda x, c, idx=idx: ops.tsallis_value(
                x.q_s, tau=c["tau"], entropic_index=idx(x)))
            cases[f"tsallis_value_consistent[{name}]"] = Case("value", lambda x, c, idx=idx: ops.tsallis_value(
                x.q_s, tau=c["tau"], entropic_index=idx(x), consistent_weight=True))
            cases[f"tsallis_munchausen_bonus[{name}]"] = Case("policy", lambda x, c, idx=idx: (
                ops.tsallis_munchausen_bonus(x.q_s, alpha=0.9, tau=c["tau"], entropic_index=idx(x))))
            cases[f"tsallis_munchausen_target[{name}]"] = Case("target", lambda x, c, idx=idx: (
                ops.tsallis_munchausen_target(x.q_s, x.q_next, x.action, x.reward, x.discount,
                                              entropic_index=idx(x), alpha=0.9, tau=c["tau"])))
            cases[f"tsallis_policy[{name}]"] = Case("policy", lambda x, c, idx=idx: ops.tsallis_policy(
                x.q_s / c["tau"], idx(x)))
    return cases


CASES: dict[str, Case] = {
    "softmax_policy": Case("policy", lambda x, c: ops.softmax_policy(x.q_s, c["tau"])),
    "scaled_log_softmax": Case("policy", lambda x, c: ops.scaled_log_softmax(x.q_s, c["tau"])),
    "sparsemax": Case("policy", lambda x, c: ops.sparsemax(x.q_s / c["tau"])),
    "mirror_descent_log_policy": Case("policy", lambda x, c: ops.mirror_descent_log_policy(
        x.q_s, x.log_prior, lam=c["lam"], tau=c["tau"])),
    "munchausen_bonus": Case("policy", lambda x, c: ops.munchausen_bonus(x.q_s, alpha=0.9, tau=c["tau"])),
    "action_gap": Case("policy", lambda x, c: ops.action_gap(x.q_s)),
    "guided_logits(softmax)": Case("policy", lambda x, c: jax.nn.softmax(
        ops.guided_logits(x.log_prior, x.q_s, c["tau"]), axis=-1)),
    "greedy_value": Case("value", lambda x, c: ops.greedy_value(x.q_s)),
    "soft_value": Case("value", lambda x, c: ops.soft_value(x.q_s, c["tau"])),
    "soft_value(prior)": Case("value", lambda x, c: ops.soft_value(x.q_s, c["tau"], x.log_prior)),
    "mirror_descent_value": Case("value", lambda x, c: ops.mirror_descent_value(
        x.q_s, x.log_prior, lam=c["lam"], tau=c["tau"])),
    "q_learning_target": Case("target", lambda x, c: ops.q_learning_target(x.q_next, x.reward, x.discount)),
    "double_q_target": Case("target", lambda x, c: ops.double_q_target(x.q_online, x.q_next, x.reward, x.discount)),
    "soft_q_target": Case("target", lambda x, c: ops.soft_q_target(x.q_next, x.reward, x.discount, tau=c["tau"])),
    "kl_prior_target": Case("target", lambda x, c: ops.kl_prior_target(
        x.q_next, x.log_prior, x.reward, x.discount, eta=c["tau"])),
    "advantage_learning_target": Case("target", lambda x, c: ops.advantage_learning_target(
        x.q_s, x.q_next, x.action, x.reward, x.discount, alpha=0.9)),
    "persistent_advantage_learning_target": Case("target", lambda x, c: ops.persistent_advantage_learning_target(
        x.q_s, x.q_next, x.action, x.reward, x.discount, alpha=0.9)),
    "munchausen_target": Case("target", lambda x, c: ops.munchausen_target(
        x.q_s, x.q_next, x.action, x.reward, x.discount, alpha=0.9, tau=c["tau"])),
    "mirror_descent_target": Case("target", lambda x, c: ops.mirror_descent_target(
        x.q_next, x.log_prior, x.reward, x.discount, lam=c["lam"], tau=c["tau"])),
    # Distributional: the atoms play the role of q (a return shift moves every atom by c).
    "entropic_q": Case("value", lambda x, c: ops.entropic_q(
        jnp.broadcast_to(x.log_prior[:, None, :], (B, 2, A)), x.q_s[0], c["tau"])[..., 0]),
    "categorical_mean": Case("value", lambda x, c: ops.categorical_mean(
        jnp.broadcast_to(x.log_prior[:, None, :], (B, 2, A)), x.q_s[0])[..., 0]),
    **_tsallis_cases(),
}

# The atoms of the distributional cases must be increasing and evenly spaced: their "q" row.
_ATOM_CASES = ("entropic_q", "categorical_mean")


def _inputs(base: np.ndarray, offset: float, rng: np.random.Generator, dtype) -> Inputs:
    """Inputs at the float32 rounding of base + offset (the same numbers in both precisions)."""
    f32 = lambda v: np.asarray(v, np.float32).astype(dtype)  # noqa: E731
    return Inputs(
        q_s=f32(base[0] + offset), q_next=f32(base[1] + offset), q_online=f32(base[2] + offset),
        log_prior=f32(_log_simplex(base[3])), action=rng.integers(0, A, B).astype(np.int32),
        reward=f32(rng.normal(size=B)), discount=f32(rng.choice([0.0, 0.99], B)),
    )


_JITTED: dict[int, Callable] = {}


def _evaluate(case: Case, x: Inputs, coefs: dict, dtype) -> np.ndarray:
    # One compiled program per case and precision (shapes are fixed), so hundreds of examples are cheap.
    fn = _JITTED.setdefault(id(case), jax.jit(case.fn))
    with jax.enable_x64(dtype == np.float64):
        args = Inputs(*[jnp.asarray(v) for v in x])
        out = fn(args, {k: jnp.asarray(v, dtype) for k, v in coefs.items()})
        assert out.dtype == dtype, f"{out.dtype} != {dtype}"
        return np.asarray(out, np.float64)


def _check(name: str, base: np.ndarray, offset: float, tau: float, lam: float, seed: int) -> None:
    case = CASES[name]
    if name in _ATOM_CASES:      # atoms: an evenly spaced, increasing support
        base = base.copy()
        base[0, 0] = np.linspace(-3.0, 3.0, A)
    coefs = {"tau": tau, "lam": lam}
    x32 = _inputs(base, offset, np.random.default_rng(seed), np.float32)
    x64 = _inputs(base, offset, np.random.default_rng(seed), np.float64)
    got = _evaluate(case, x32, coefs, np.float32)
    want = _evaluate(case, x64, coefs, np.float64)
    assert np.all(np.isfinite(got)), name
    # Values and targets: relative to the value scale |q|; policies (probabilities, τ·ln π,
    # log-probabilities) relative to their own magnitude, elementwise.
    scale = 1.0 + (np.abs(x64.q_s).max() if case.kind != "policy" else np.abs(want))
    assert np.all(np.abs(got - want) <= 1e-5 * scale), (
        f"{name}: float32 vs float64, max error {np.max(np.abs(got - want) / scale):.3g}·scale")

    # The shift rule, in float64, from the same float32-representable base inputs.
    x0 = _inputs(base, 0.0, np.random.default_rng(seed), np.float64)
    c = float(np.float32(offset))
    xc = x0._replace(q_s=x0.q_s + c, q_next=x0.q_next + c, q_online=x0.q_online + c)
    lhs, rhs = _evaluate(case, xc, coefs, np.float64), _evaluate(case, x0, coefs, np.float64)
    if case.kind == "value":
        rhs = rhs + c
    elif case.kind == "target":
        rhs = rhs + x0.discount * c
    np.testing.assert_allclose(lhs, rhs, rtol=0, atol=1e-9 * (1.0 + abs(c)), err_msg=f"{name}: shift rule")


bases = hnp.arrays(np.float64, (4, B, A), elements=st.floats(-5.0, 5.0, allow_nan=False))


@pytest.mark.parametrize("name", sorted(CASES))
@given(base=bases, offset=st.floats(-1e3, 1e3), tau=st.sampled_from([1e-3, 0.01, 0.03, 0.1, 1.0]),
       lam=st.sampled_from([0.0, 0.27, 1.0]), seed=st.integers(0, 2**16))
def test_shift_stable_float32(name, base, offset, tau, lam, seed):
    _check(name, base, offset, tau, lam, seed)


@pytest.mark.parametrize("traced", [False, True])
def test_shift_reproducers(traced):
    """The inputs that exposed the unshifted operators: q ≈ 100, τ = 0.03 and q ≈ 1e3, τ = 1e-3 at index 2 (MVI(2) targets)."""
    for q, tau, exact in (
        ([100.03852844238281, 99.95264434814453, 100.02888488769531, 100.02963256835938], 0.03, None),
        ([999.9989624, 999.9989624, 999.9990234], 1e-3, None),
    ):
        q32 = jnp.asarray([q], jnp.float32)
        idx = jnp.asarray([2.0], jnp.float32) if traced else 2.0
        got = float(ops.tsallis_value(q32, tau=tau, entropic_index=idx)[0])
        with jax.enable_x64(True):
            exact = float(ops.tsallis_value(jnp.asarray(np.asarray(q32, np.float64)), tau=tau, entropic_index=2.0)[0])
        assert abs(got - exact) <= 4 * np.spacing(np.float32(exact)), (q, got, exact)
