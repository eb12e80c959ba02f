"""Input checks of the operator targets (docs/conventions.md, "Input checks of the targets").

The choice: a scalar `discount` with a batched `reward` is REFUSED (one-line ValueError naming
`discount`), because a scalar would bootstrap through terminal states; for a single transition
(0-d reward) a Python float is the right shape and is accepted. Coefficients (τ, α, ...) keep
accepting scalars. Concrete out-of-range actions are refused; under jit the range is a
documented precondition that `jax.experimental.checkify` checks (unchecked: ≥ A reads NaN,
negative counts from the end). No check changes a result.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl import operators as ops

B, A = 4, 3
Q = jnp.arange(B * A, dtype=jnp.float32).reshape(B, A) / 7.0
Q2 = Q[::-1] * 0.5
ACTION = jnp.array([0, 2, 1, 2], jnp.int32)
REWARD = jnp.array([1.0, -0.5, 0.0, 2.0], jnp.float32)
TERMINATED = jnp.array([0.0, 1.0, 0.0, 0.0], jnp.float32)
DISCOUNT = 0.99 * (1.0 - TERMINATED)
LOG_PRIOR = jnp.full((B, A), -jnp.log(3.0), jnp.float32)


def _targets(discount, reward=REWARD, q=Q, q2=Q2, action=ACTION):
    """Every target as a thunk, by name, on one batch (q-arrays [B, A], per-transition [B])."""
    lp = jnp.broadcast_to(LOG_PRIOR[0], q.shape)
    return {
        "q_learning": lambda: ops.q_learning_target(q2, reward, discount),
        "double_q": lambda: ops.double_q_target(q, q2, reward, discount),
        "soft_q": lambda: ops.soft_q_target(q2, reward, discount, tau=0.1),
        "kl_prior": lambda: ops.kl_prior_target(q2, lp, reward, discount, eta=0.5),
        "al": lambda: ops.advantage_learning_target(q, q2, action, reward, discount, alpha=0.9),
        "pal": lambda: ops.persistent_advantage_learning_target(q, q2, action, reward, discount, alpha=0.9),
        "munchausen": lambda: ops.munchausen_target(q, q2, action, reward, discount),
        "tsallis_munchausen": lambda: ops.tsallis_munchausen_target(q, q2, action, reward, discount),
        "mirror_descent": lambda: ops.mirror_descent_target(q2, lp, reward, discount, lam=0.27, tau=0.03),
    }


NAMES = sorted(_targets(DISCOUNT))


@pytest.mark.parametrize("name", NAMES)
def test_scalar_discount_with_a_batch_is_refused_naming_discount(name):
    with pytest.raises(ValueError, match=r"^discount: shape \(\) does not match reward's \(4,\)") as err:
        _targets(0.99)[name]()
    assert "\n" not in str(err.value) and "1 - terminated" in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_discount_of_another_shape_is_refused(name):
    with pytest.raises(ValueError, match=r"^discount: shape \(4, 1\)"):
        _targets(DISCOUNT[:, None])[name]()


@pytest.mark.parametrize("name", NAMES)
def test_single_transition_accepts_a_python_float_discount(name):
    """A 0-d reward makes a Python float the right shape; the result equals the row of the
    batched call with `jnp.full_like(reward, γ)` (the documented "nothing terminates")."""
    batched = _targets(jnp.full_like(REWARD, 0.99))[name]()
    assert batched.shape == (B,) and bool(jnp.all(jnp.isfinite(batched)))
    single = _targets(0.99, reward=REWARD[1], q=Q[1], q2=Q2[1], action=ACTION[1])[name]()
    assert single.shape == ()
    np.testing.assert_allclose(single, batched[1], rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_q_array_without_the_leading_shape_is_refused_naming_it(name):
    with pytest.raises(ValueError, match=r"^q_\w+: shape \(3, 3\) must be reward's shape \(4,\) plus an action axis"):
        _targets(DISCOUNT, q=Q[:3], q2=Q2[:3])[name]()


@pytest.mark.parametrize("name", ["al", "pal", "munchausen", "tsallis_munchausen"])
@pytest.mark.parametrize("bad", [3, -1])
def test_out_of_range_action_is_refused_eagerly(name, bad):
    action = ACTION.at[2].set(bad)
    with pytest.raises(ValueError, match=rf"^action: values in \[{min(bad, 0)}, {max(bad, 2)}\]; allowed 0..2$"):
        _targets(DISCOUNT, action=action)[name]()


def test_select_action_checks_shape_dtype_and_range():
    np.testing.assert_array_equal(ops.select_action(Q, ACTION), Q[jnp.arange(B), ACTION])
    np.testing.assert_array_equal(ops.select_action(Q, np.asarray(ACTION)), Q[jnp.arange(B), ACTION])
    with pytest.raises(ValueError, match=r"^action: shape \(3,\) does not match the leading shape \(4,\)"):
        ops.select_action(Q, ACTION[:3])
    with pytest.raises(ValueError, match=r"^action: dtype float32; allowed an integer array"):
        ops.select_action(Q, ACTION.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"^action: values in \[1, 7\]; allowed 0..2$"):
        ops.select_action(Q, ACTION.at[0].set(7))


def test_out_of_range_action_under_jit_is_the_documented_precondition():
    """Traced actions raise no Python error: unchecked (no checkify, the trainer's program), ≥ A
    reads NaN (a non-finite loss, reported as divergence) and a negative action counts from
    the end; `checkify` refuses both (the test below)."""
    y = jax.jit(ops.select_action)(Q, jnp.array([0, 3, -1, 1], jnp.int32))
    assert float(y[0]) == float(Q[0, 0]) and bool(jnp.isnan(y[1]))
    assert float(y[2]) == float(Q[2, A - 1]) and float(y[3]) == float(Q[3, 1])


@pytest.mark.parametrize("name", NAMES)
def test_checks_hold_under_jit(name):
    """Shapes are static, so they are checked under jit too; jitted and eager calls agree
    (to XLA's fusion rounding)."""
    thunk = _targets(DISCOUNT)[name]
    np.testing.assert_allclose(thunk(), jax.jit(thunk)(), rtol=1e-6)
    with pytest.raises(ValueError, match="^discount:"):
        jax.jit(lambda d: _targets(d)[name]())(DISCOUNT[:2])


def test_hand_computed_munchausen_target():
    """One transition by hand: y = r + α·clip(τ ln π̄(a|s), l0, 0) + d·τ·lse(q̄(s')/τ)."""
    q_s, q_n = np.array([1.0, 2.0, 0.5]), np.array([0.0, 1.0, 3.0])
    tau, alpha, gamma = 0.5, 0.9, 0.99
    log_pi = q_s / tau - np.log(np.sum(np.exp(q_s / tau)))
    expected = 1.0 + alpha * np.clip(tau * log_pi[0], -1.0, 0.0) + gamma * tau * np.log(np.sum(np.exp(q_n / tau)))
    y = ops.munchausen_target(jnp.asarray(q_s, jnp.float32), jnp.asarray(q_n, jnp.float32), jnp.asarray(0),
                              1.0, gamma, alpha=alpha, tau=tau)
    np.testing.assert_allclose(float(y), expected, rtol=1e-6)


def test_categorical_projection_refuses_a_scalar_discount():
    atoms = jnp.linspace(-1.0, 1.0, 5)
    probs = jnp.full((B, 5), 0.2)
    with pytest.raises(ValueError, match=r"^discount: shape \(\) does not match reward's \(4,\)"):
        ops.categorical_projection(atoms, probs, REWARD, 0.99)
    with pytest.raises(ValueError, match=r"^probs: shape \(3, 5\) must be reward's shape \(4,\)"):
        ops.categorical_projection(atoms, probs[:3], REWARD, DISCOUNT)
    out = ops.categorical_projection(atoms, probs, REWARD, DISCOUNT)
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match=r"^discount:"):
        ops.categorical_td_target(atoms, jnp.full((B, A, 5), 0.2), jnp.full((B, A), 1 / 3), REWARD, 0.99)


def test_coefficients_still_accept_scalars_and_per_example_arrays():
    per_example = ops.munchausen_target(Q, Q2, ACTION, REWARD, DISCOUNT, tau=jnp.full((B,), 0.03))
    scalar = ops.munchausen_target(Q, Q2, ACTION, REWARD, DISCOUNT, tau=0.03)
    np.testing.assert_allclose(per_example, scalar, rtol=1e-6)


def test_quantile_targets_refuse_a_scalar_discount_naming_it():
    z = jnp.zeros((B, 5, A), jnp.float32)
    with pytest.raises(ValueError, match=r"^discount: shape \(\) does not match reward's \(4,\)"):
        ops.quantile_q_learning_target(z, Q2, REWARD, 0.99)
    with pytest.raises(ValueError, match=r"^discount: shape \(\) does not match reward's \(4,\)"):
        ops.munchausen_quantile_target(z, Q, Q2, ACTION, REWARD, 0.99)
    assert ops.munchausen_quantile_target(z, Q, Q2, ACTION, REWARD, DISCOUNT).shape == (B, 5)


@pytest.mark.parametrize("name", ["al", "munchausen", "tsallis_munchausen"])
def test_traced_out_of_range_action_is_refused_under_checkify(name):
    """Under jit the range is a `checkify.debug_check`: checkified, an action ≥ A or < 0 is an
    error naming `action`; in range, no error and the same numbers as the unchecked program."""
    from jax.experimental import checkify

    def target(action):
        return _targets(DISCOUNT, action=action)[name]()

    checked = checkify.checkify(jax.jit(target))
    for bad in (3, -1):
        err, _ = checked(ACTION.at[2].set(bad))
        with pytest.raises(checkify.JaxRuntimeError, match=r"action: a value outside 0\.\.2"):
            err.throw()
    err, y = checked(ACTION)
    assert err.get() is None
    np.testing.assert_array_equal(y, jax.jit(target)(ACTION))


def test_trusted_actions_drop_only_the_traced_check():
    """Inside `trusted_actions()` a traced out-of-range action passes checkify (the caller
    vouches for its range) while a concrete one is still refused; outside, checkify refuses it
    again."""
    from jax.experimental import checkify

    from klrl.operators.checks import trusted_actions

    bad = ACTION.at[2].set(3)
    # Fresh functions: jit reuses a trace of the same function from any earlier call.
    with trusted_actions():
        err, _ = checkify.checkify(jax.jit(lambda q, a: ops.select_action(q, a)))(Q, bad)
        assert err.get() is None
        with pytest.raises(ValueError, match=r"^action: values in \[0, 3\]; allowed 0..2$"):
            ops.select_action(Q, bad)
    err, _ = checkify.checkify(jax.jit(lambda q, a: ops.select_action(q, a) + 0.0))(Q, bad)
    with pytest.raises(checkify.JaxRuntimeError, match=r"action: a value outside 0\.\.2"):
        err.throw()


def test_categorical_cross_entropy_checks_its_action():
    from jax.experimental import checkify

    logits, target = jnp.zeros((B, A, 5)), jnp.full((B, 5), 0.2)
    with pytest.raises(ValueError, match=r"^action: values in \[0, 3\]; allowed 0..2$"):
        ops.categorical_cross_entropy(logits, ACTION.at[1].set(3), target)
    err, _ = checkify.checkify(jax.jit(ops.categorical_cross_entropy))(logits, ACTION.at[1].set(3), target)
    with pytest.raises(checkify.JaxRuntimeError, match=r"action: a value outside 0\.\.2"):
        err.throw()


def test_every_public_operator_documents_args_returns_and_its_paper():
    """rlax's form: Args (shapes, dtypes), Returns, the equation's source (a year of a paper);
    `select_action` is indexing, with no paper."""
    import inspect
    import re

    missing = {}
    for name in ops.__all__:
        doc = inspect.getdoc(getattr(ops, name)) or ""
        lacks = [k for k in ("Args:", "Returns:") if k not in doc]
        if name != "select_action" and not re.search(r"\b(19|20)\d\d\b", doc):
            lacks.append("a paper")
        if lacks:
            missing[name] = lacks
    assert missing == {}
