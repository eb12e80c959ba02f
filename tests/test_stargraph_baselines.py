"""The star-graph policy baselines (klrl.stargraph.baselines) at tiny sizes: DPO's loss at
θ = π_ref is ln 2, RPO adds the chosen per-token NLL, a DPO step widens the chosen-vs-rejected
margin, a REINFORCE step runs on the policy's own greedy rollouts."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl.stargraph.baselines import BaselineConfig, dpo_loss, make_baseline_step, sequence_log_prob
from klrl.stargraph.env import initial_states
from klrl.stargraph.graphs import StarGraphTask, dataset
from klrl.stargraph.tokenizer import Vocabulary, encode, prompt_length
from klrl.stargraph.transformer import CausalLM, LMConfig

TINY = StarGraphTask(2, 3, 8)
P, V = prompt_length(TINY), Vocabulary(8).size


def _setup():
    g = dataset(TINY, "posttrain", 16, 0)
    chosen = jnp.asarray(encode(TINY, g))
    rejected = chosen.at[:, P + 1].set((chosen[:, P + 1] + 1) % 8)     # a wrong first child
    model = CausalLM(LMConfig(V, chosen.shape[1], layers=1, width=16, heads=2))
    return g, chosen, rejected, model, model.init(jax.random.PRNGKey(0), chosen)


def test_dpo_and_rpo_losses_at_the_reference():
    g, chosen, rejected, model, ref = _setup()
    w = jnp.ones(16)
    loss = jax.jit(lambda alpha: dpo_loss(model, ref, ref, chosen, rejected, w, P, 0.1, alpha))
    np.testing.assert_allclose(loss(0.0), math.log(2), rtol=1e-6)
    nll = -jax.jit(sequence_log_prob, static_argnums=(0, 3))(model, ref, chosen, P).mean() / TINY.path_length
    np.testing.assert_allclose(loss(0.5), math.log(2) + 0.5 * nll, rtol=1e-5)


@pytest.mark.slow
def test_a_dpo_step_widens_the_margin_and_reinforce_runs():
    g, chosen, rejected, model, ref = _setup()
    margin = lambda p: float(jnp.mean(sequence_log_prob(model, p, chosen, P) - sequence_log_prob(model, p, rejected, P)))  # noqa: E731
    cfg = BaselineConfig(method="dpo", steps=5, batch_size=16, lr=1e-2)
    init, step = make_baseline_step(model, cfg, ref, P, TINY.path_length, Vocabulary(8).pad,
                                    (chosen, rejected, jnp.ones(16)))
    params, opt = ref, init(ref)
    for i in range(5):
        params, opt, loss = step(params, opt, jax.random.PRNGKey(i))
    assert margin(params) > margin(ref) + 0.1 and float(loss) < math.log(2)
    starts = jnp.asarray(initial_states(TINY, g), jnp.int32)
    cfg = BaselineConfig(method="reinforce", batch_size=16, lr=1e-3, top_k=4)
    init, step = make_baseline_step(model, cfg, ref, P, TINY.path_length, Vocabulary(8).pad, (starts, jnp.asarray(g.path)))
    params2, _, loss = step(ref, init(ref), jax.random.PRNGKey(0))
    assert np.isfinite(float(loss)) and jax.tree.structure(params2) == jax.tree.structure(ref)
