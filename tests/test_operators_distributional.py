"""klrl.operators.distributional: C51 projection, entropic value, guided policy."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from klrl import operators as ops

ATOMS = jnp.linspace(-5.0, 5.0, 11)  # spacing 1


@jax.jit
def _project(probs, reward, discount):
    return ops.categorical_projection(ATOMS, probs, reward, discount)


@given(st.integers(0, 2**31 - 1), st.floats(-20, 20), st.floats(0.0, 1.0))
def test_projection_conserves_mass_and_mean(seed, reward, discount):
    probs = jax.random.dirichlet(jax.random.PRNGKey(seed), jnp.ones(11), (3,))
    r = jnp.full(3, reward, jnp.float32)
    d = jnp.full(3, discount, jnp.float32)
    out = _project(probs, r, d)
    assert np.all(np.asarray(out) >= 0)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
    # Linear interpolation preserves the mean of the clipped shifted distribution.
    shifted = jnp.clip(r[:, None] + d[:, None] * ATOMS, ATOMS[0], ATOMS[-1])
    np.testing.assert_allclose(out @ ATOMS, jnp.sum(probs * shifted, -1), atol=1e-4)


def test_projection_exact_cases():
    point = jax.nn.one_hot(5, 11)[None]  # all mass on z = 0
    same = ops.categorical_projection(ATOMS, point, jnp.zeros(1), jnp.ones(1))
    np.testing.assert_allclose(same, point)
    half = ops.categorical_projection(ATOMS, point, jnp.array([0.25]), jnp.ones(1))
    np.testing.assert_allclose(half[0, 5:7], [0.75, 0.25], atol=1e-6)  # split by closeness
    clipped = ops.categorical_projection(ATOMS, point, jnp.array([100.0]), jnp.ones(1))
    np.testing.assert_allclose(clipped[0, -1], 1.0)
    # Terminal: d = 0 collapses every atom onto r.
    term = ops.categorical_projection(ATOMS, jnp.full((1, 11), 1 / 11), jnp.array([2.0]), jnp.zeros(1))
    np.testing.assert_allclose(term, jax.nn.one_hot(7, 11)[None], atol=1e-6)


def test_td_target_mixture():
    key = jax.random.PRNGKey(0)
    probs_next = jax.random.dirichlet(key, jnp.ones(11), (2, 3))  # [B, A, N]
    w = jnp.array([[0.2, 0.3, 0.5], [0.0, 1.0, 0.0]])
    r, d = jnp.array([0.3, -1.0]), jnp.array([0.9, 0.5])
    got = ops.categorical_td_target(ATOMS, probs_next, w, r, d)
    # Projection is linear: projecting the mixture = mixing the projections.
    per_action = jax.vmap(lambda p: ops.categorical_projection(ATOMS, p, r, d), in_axes=1, out_axes=1)(probs_next)
    np.testing.assert_allclose(got, jnp.einsum("ba,ban->bn", w, per_action), atol=1e-6)


def test_entropic_q_limits(x64):
    logits = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 11))
    p = jax.nn.softmax(logits)
    mean = ops.categorical_mean(logits, ATOMS)
    np.testing.assert_allclose(mean, p @ ATOMS, atol=1e-12)
    np.testing.assert_allclose(ops.entropic_q(logits, ATOMS, 1e6), mean, atol=1e-4)  # η → ∞: E[Z]
    # η → 0: the largest atom with mass (all atoms have mass here).
    np.testing.assert_allclose(ops.entropic_q(logits, ATOMS, 1e-3), 5.0, atol=0.02)
    # Jensen: η ln E e^{Z/η} ≥ E[Z], increasing as η decreases.
    e1, e2 = ops.entropic_q(logits, ATOMS, 2.0), ops.entropic_q(logits, ATOMS, 0.5)
    assert np.all(np.asarray(e1) >= np.asarray(mean) - 1e-12) and np.all(np.asarray(e2) >= np.asarray(e1))
    # Definition on a two-point distribution.
    two = jnp.log(jnp.zeros(11).at[3].set(0.25).at[8].set(0.75))
    eta = 0.7
    expected = eta * np.log(0.25 * np.exp(-2 / eta) + 0.75 * np.exp(3 / eta))
    np.testing.assert_allclose(ops.entropic_q(two, ATOMS, eta), expected, atol=1e-12)


def test_entropic_q_per_row_eta(x64):
    logits = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 11))
    etas = jnp.array([0.5, 3.0])
    got = ops.entropic_q(logits, ATOMS, etas)
    for i in range(2):
        np.testing.assert_allclose(got[i], ops.entropic_q(logits[i], ATOMS, float(etas[i])), atol=1e-12)


def test_guided_policy_is_prior_tilted_by_entropic_value(x64):
    log_ref = jnp.log(jnp.array([0.5, 0.3, 0.2]))
    q_eta = jnp.array([1.0, 2.0, -1.0])
    eta = 0.8
    pi = jax.nn.softmax(ops.guided_logits(log_ref, q_eta, eta))
    expected = np.exp(log_ref) * np.exp(q_eta / eta)
    np.testing.assert_allclose(pi, expected / expected.sum(), atol=1e-12)
