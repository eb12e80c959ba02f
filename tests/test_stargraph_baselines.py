"""The star-graph policy baselines (klrl.stargraph.baselines) at tiny sizes: DPO's loss at
θ = π_ref is ln 2, RPO adds the chosen per-token NLL; end to end (`run_baseline`), with 0 steps
the policy is π_ref and its KL to the UNTRUNCATED π_ref is exactly Σ_t −ln(π_ref's top-k mass);
DPO widens the chosen-vs-rejected margin; RPO and REINFORCE raise the exact success probability."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl.errors import ConfigError
from klrl.stargraph import exact
from klrl.stargraph.baselines import (BaselineConfig, dpo_loss, finetune, policy_samples, run_baseline,
                                      sequence_log_prob, step_data)
from klrl.stargraph.env import initial_states
from klrl.stargraph.graphs import StarGraphTask, dataset
from klrl.stargraph.offline import Labelled
from klrl.stargraph.reference import lm_log_probs
from klrl.stargraph.tokenizer import Vocabulary, encode, prompt_length
from klrl.stargraph.transformer import CausalLM, LMConfig

TINY = StarGraphTask(2, 3, 8)
P, VOC = prompt_length(TINY), Vocabulary(8)
V, ELL = VOC.size, TINY.path_length
QUIET = lambda row: None  # noqa: E731


def _data(n):
    g = dataset(TINY, "posttrain", n, 0)
    chosen = jnp.asarray(encode(TINY, g))
    rejected = chosen.at[:, P + 1].set((chosen[:, P + 1] + 1) % 8)     # a wrong first child
    starts = jnp.asarray(initial_states(TINY, g), jnp.int32)
    pairs = Labelled(jnp.concatenate([chosen, rejected]), jnp.concatenate([jnp.ones(n), jnp.zeros(n)]),
                     jnp.ones(2 * n))
    return g, chosen, rejected, starts, pairs


def _setup(n=16):
    g, chosen, rejected, starts, pairs = _data(n)
    model = CausalLM(LMConfig(V, chosen.shape[1], layers=1, width=16, heads=2))
    return g, chosen, rejected, model, jax.jit(model.init)(jax.random.PRNGKey(0), chosen), starts, pairs


@pytest.fixture(scope="module")
def tiny():
    return _setup()


def test_dpo_and_rpo_losses_at_the_reference(tiny):
    g, chosen, rejected, model, ref, _, _ = tiny
    w = jnp.ones(16)
    loss = jax.jit(lambda alpha: dpo_loss(model, ref, ref, chosen, rejected, w, P, 0.1, alpha))
    np.testing.assert_allclose(loss(0.0), math.log(2), rtol=1e-6)
    nll = -jax.jit(sequence_log_prob, static_argnums=(0, 3))(model, ref, chosen, P).mean() / ELL
    np.testing.assert_allclose(loss(0.5), math.log(2) + 0.5 * nll, rtol=1e-5)


def test_with_zero_steps_the_policy_is_pi_ref_and_its_kl_is_the_top_k_mass(tiny):
    """θ = π_ref sampled with its top k: KL(π_top-k ‖ π_ref) = −ln M_t per step, M_t = π_ref's mass
    on its top k (0 only when the top k is the whole support; here k = 3 < V, so it is not)."""
    g, chosen, rejected, model, ref, starts, pairs = tiny
    out = run_baseline(BaselineConfig("dpo", steps=0, top_k=3, seed=5), model, ref, None, pairs, starts,
                       jnp.asarray(g.path), P, VOC.pad, log=QUIET)
    assert out["train"] == [] and out["n"] == 16 and out["method"] == "dpo" and 0 <= out["accuracy"]["mean"] <= 1
    # the same samples (run_baseline's evaluation key), against the untruncated π_ref
    log_ref = lambda tokens: lm_log_probs(model, VOC.pad)(ref, tokens)  # noqa: E731
    s = policy_samples(jax.random.fold_in(jax.random.PRNGKey(5), 1), model, ref, log_ref, starts, P, ELL, VOC.pad,
                       top_k=3)

    @jax.jit
    def minus_log_top3_mass(tokens):
        lr = log_ref(exact.path_states(starts, tokens[:, P:], P))                          # [n, ℓ, V]
        return -jnp.sum(jax.nn.logsumexp(jax.lax.top_k(lr, 3)[0], axis=-1), axis=1)
    expected = minus_log_top3_mass(s.tokens)
    assert float(expected.min()) > 0.1
    np.testing.assert_allclose(s.kl, expected, rtol=1e-4)
    np.testing.assert_allclose(s.log_prob - s.log_ref, expected, rtol=1e-4)   # the sample's own log-ratio
    np.testing.assert_allclose(out["kl"]["mean"], float(expected.mean()), rtol=1e-5)


def test_bad_method_or_data_is_a_one_line_config_error():
    g, chosen, rejected, starts, pairs = _data(2)
    with pytest.raises(ConfigError, match=r"^baselines\.method: got 'ppo'; allowed one of reinforce, dpo, rpo$"):
        step_data("ppo", pairs)
    with pytest.raises(ConfigError, match=r"^baselines\.train_data: reinforce takes"):
        step_data("reinforce", pairs)
    with pytest.raises(ConfigError, match=r"^baselines\.train_data: dpo takes a Labelled"):
        step_data("dpo", (starts, jnp.asarray(g.path)))
    c, r, w = step_data("rpo", pairs)
    np.testing.assert_array_equal(c, chosen) and np.testing.assert_array_equal(r, rejected)


@pytest.mark.slow
def test_dpo_widens_the_chosen_vs_rejected_margin():
    g, chosen, rejected, model, ref, starts, pairs = _setup()
    def margin(p):
        return float(jnp.mean(sequence_log_prob(model, p, chosen, P) - sequence_log_prob(model, p, rejected, P)))
    params, history = finetune(BaselineConfig("dpo", steps=5, batch_size=16, lr=1e-2), model, ref,
                               step_data("dpo", pairs), P, ELL, VOC.pad, log=QUIET)
    assert margin(params) > margin(ref) + 0.1 and history[-1]["loss"] < math.log(2)
    assert [r["step"] for r in history] == [1, 2, 3, 4, 5] and set(history[0]) == {"step", "loss", "seconds"}


@pytest.mark.slow
def test_rpo_then_reinforce_raise_the_exact_success_probability():
    """RPO's chosen NLL is supervised fine-tuning: from a random init it raises p0 = π_θ(y*|x)
    (the exact expected reward under full-softmax sampling); REINFORCE with top-k = V samples from
    there raises it further (its gradient is an unbiased estimate of ∇ E[r]). Then the paper's
    greedy REINFORCE end to end."""
    g, chosen, rejected, model, ref, starts, pairs = _setup(32)
    path = jnp.asarray(g.path)
    p0 = lambda p: float(jnp.mean(jnp.exp(sequence_log_prob(model, p, chosen, P))))  # noqa: E731
    sft, _ = finetune(BaselineConfig("rpo", steps=40, batch_size=32, lr=1e-2), model, ref, step_data("rpo", pairs),
                      P, ELL, VOC.pad, log=QUIET)
    assert p0(ref) < 0.01 and p0(sft) > 0.5
    cfg = BaselineConfig("reinforce", steps=30, batch_size=32, lr=3e-3, greedy=False, top_k=V)
    tuned, history = finetune(cfg, model, sft, (starts, path), P, ELL, VOC.pad, log=QUIET)
    assert p0(tuned) > p0(sft) + 0.05 and all(0.0 <= r["reward"] <= 1.0 for r in history)
    def run(seed):
        return run_baseline(BaselineConfig("reinforce", steps=4, batch_size=32, lr=1e-3, seed=seed), model, sft, None,
                            (starts, path), starts, path, P, VOC.pad, log=QUIET)
    out, again, other = run(0), run(0), run(1)      # the second and third reuse the compiled programs
    assert 0.0 <= out["accuracy"]["mean"] <= 1.0 and out["kl"]["mean"] > 0.0 and np.isfinite(out["kl"]["ci95"])
    assert len(out["train"]) == 4 and out["seed"] == 0
    def numbers(r):
        return r["accuracy"], r["kl"], [(x["loss"], x["reward"]) for x in r["train"]]
    assert numbers(out) == numbers(again) and numbers(other) != numbers(out)           # same seed, same numbers
