"""Algorithm 1 on the star graph (klrl.stargraph.rounds) at tiny sizes: the switch point is
uniform and splits the sequence exactly between the roll-in policy and π_ref, the label is exact
match, the per-position weight masks the positions before the switch, aggregation grows D by the
round's prompts, and an oracle-guided roll-in succeeds more often than π_ref."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl.stargraph import exact
from klrl.stargraph.critic import CriticConfig, weighted_bce
from klrl.stargraph.env import initial_states
from klrl.stargraph.evaluate import oracle_p_fn
from klrl.stargraph.graphs import StarGraphTask, dataset
from klrl.stargraph.guidance import guided_log_policy
from klrl.stargraph.offline import Labelled
from klrl.stargraph.rounds import RoundsConfig, aggregate, check_rounds, rollin_switch, run_rounds, switch_weight
from klrl.stargraph.shortcut import shortcut_reference
from klrl.stargraph.tokenizer import Vocabulary, prompt_length

TINY = StarGraphTask(2, 3, 8)
P, V, PAD, ELL = prompt_length(TINY), Vocabulary(8).size, Vocabulary(8).pad, 3


def _prompts(n: int, split: str = "posttrain"):
    g = dataset(TINY, split, n, 0)
    return jnp.asarray(initial_states(TINY, g), jnp.int32), jnp.asarray(g.path)


def _one_hot_log(token: int):
    """A deterministic policy: every state -> `token` (log-probs 0 there, −inf elsewhere)."""
    return lambda tokens: jnp.where(jnp.arange(V) == token, 0.0, -jnp.inf) * jnp.ones((tokens.shape[0], 1))


def test_switch_is_uniform_and_splits_the_sequence_between_rollin_and_ref_and_label_is_exact_match():
    """π_ref always writes A, the roll-in policy always writes B: the target is B^h A^{ℓ−h} exactly,
    h is uniform on {0, …, ℓ−1}, and the reward is 1 exactly where that equals the path."""
    n, A, B = 900, 1, 2
    starts, _ = _prompts(n)
    path = jnp.where(jnp.arange(n)[:, None] % 2 == 0, jnp.array([B, A, A]), jnp.array([A, A, A]))
    log_ref, log_b = _one_hot_log(A), _one_hot_log(B)
    run = jax.jit(lambda k: rollin_switch(k, starts, path, log_ref, lambda x, t, lref: log_b(x), P, ELL))
    tokens, switch, reward = jax.device_get(run(jax.random.PRNGKey(0)))
    assert switch.dtype == np.int32 and set(np.unique(switch)) == {0, 1, 2}
    counts = np.bincount(switch, minlength=ELL)
    assert np.all(np.abs(counts - n / ELL) < 4 * np.sqrt(n * (1 / ELL) * (1 - 1 / ELL))), counts
    want = np.where(np.arange(ELL)[None] < switch[:, None], B, A)
    np.testing.assert_array_equal(tokens[:, P:], want)
    np.testing.assert_array_equal(tokens[:, :P], np.asarray(starts[:, :P]))
    even = np.arange(n) % 2 == 0
    np.testing.assert_array_equal(reward[even], (switch[even] == 1).astype(np.float32))   # path B A A
    np.testing.assert_array_equal(reward[~even], (switch[~even] == 0).astype(np.float32))  # path A A A


def test_per_position_weight_masks_the_positions_before_the_switch():
    """The BCE does not see the critic's logit at positions t < h, does see it at t ≥ h; a
    per-sequence weight broadcast over positions gives the offline round's loss."""
    key = jax.random.PRNGKey(0)
    logits, labels = jax.random.normal(key, (6, ELL)), jnp.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    switch = jnp.array([0, 1, 2, 2, 1, 0], jnp.int32)
    w = switch_weight(switch, ELL)
    np.testing.assert_array_equal(w, np.arange(ELL)[None] >= np.asarray(switch)[:, None])
    base = float(weighted_bce(logits, labels, w))
    masked = np.asarray(w) == 0
    moved = logits + jnp.where(masked, 7.0, 0.0)
    assert float(weighted_bce(moved, labels, w)) == base
    assert abs(float(weighted_bce(logits + jnp.where(masked, 0.0, 0.5), labels, w)) - base) > 1e-3
    seq = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(weighted_bce(logits, labels, jnp.broadcast_to(seq[:, None], (6, ELL))),
                               weighted_bce(logits, labels, seq), rtol=1e-6)


def test_aggregation_grows_d_by_the_rounds_prompts_and_keeps_the_offline_pairs():
    starts, path = _prompts(8)
    offline = Labelled(jnp.concatenate([starts, starts]), jnp.concatenate([jnp.ones(8), jnp.zeros(8)]),
                       jnp.concatenate([jnp.ones(8), jnp.array([1.0, 0, 1, 1, 1, 1, 1, 1])]))
    switch, reward = jnp.array([0, 1, 2, 0, 1], jnp.int32), jnp.array([1, 0, 0, 1, 1], jnp.float32)
    d1 = aggregate(offline, starts[:5], switch, reward, ELL)
    d2 = aggregate(d1, starts[:5], switch, reward, ELL)
    assert [d.tokens.shape[0] for d in (d1, d2)] == [21, 26] and not d2.paired
    assert d2.weight.shape == (26, ELL) and d2.labels.shape == (26,)
    np.testing.assert_array_equal(d2.weight[:16], np.broadcast_to(np.asarray(offline.weight)[:, None], (16, ELL)))
    np.testing.assert_array_equal(d2.weight[21:], switch_weight(switch, ELL))
    np.testing.assert_array_equal(d2.labels[16:], np.concatenate([reward, reward]))
    assert aggregate(None, starts[:5], switch, reward, ELL).tokens.shape[0] == 5


def test_oracle_guided_rollin_succeeds_more_often_than_pi_ref_on_the_shortcut_reference():
    """With the exact p as the roll-in's critic (η = 0.1), the guided steps t < h write y*_t (up to
    ~1e-3), so a rollout switched at h succeeds with the exact tail_{h−1} = Π_{s≥h} π_ref(y*_s|·)
    (p0 at h = 0): the batch's success rate matches that mean, well above π_ref's p0."""
    n = 512
    starts, path = _prompts(n, "test")
    log_ref = shortcut_reference(TINY, 3.0, jax.random.PRNGKey(1), top_k=4)

    @jax.jit
    def run(key):   # one compile: the exact tails, the oracle-guided roll-in and π_ref's own samples
        lrp = exact.path_log_probs(log_ref, starts, path, P)
        p_fn = oracle_p_fn(log_ref, starts, path, P, V)
        guided = lambda x, t, lref: guided_log_policy(lref, p_fn(x, t, lref), 0.1, "qsharp")  # noqa: E731
        _, switch, r_guided = rollin_switch(key, starts, path, log_ref, guided, P, ELL)
        _, _, r_ref = rollin_switch(key, starts, path, log_ref, lambda x, t, lref: lref, P, ELL)
        return exact.success_probability(lrp, path), exact.success_tail(lrp, path), switch, r_guided, r_ref

    p0, tail, switch, r_guided, r_ref = run(jax.random.PRNGKey(2))
    exact_h = np.asarray(jnp.concatenate([p0[:, None], tail[:, :-1]], 1))[np.arange(n), np.asarray(switch)]
    sd = np.sqrt(np.sum(exact_h * (1 - exact_h))) / n
    assert abs(float(r_guided.mean()) - exact_h.mean()) < 4 * sd + 2e-3, (float(r_guided.mean()), exact_h.mean())
    assert abs(float(r_ref.mean()) - float(p0.mean())) < 4 * np.sqrt(float(p0.mean()) / n)
    assert float(r_guided.mean()) > float(r_ref.mean()) + 0.08


def test_rounds_config_is_checked_field_by_field():
    for bad, field in [(RoundsConfig(rounds=0), "rounds.rounds"), (RoundsConfig(prompts=600), "rounds.prompts"),
                       (RoundsConfig(prompts=9, guidance="x"), "rounds.guidance"),
                       (RoundsConfig(prompts=9, eta=0.0), "rounds.eta"), (RoundsConfig(prompts=9, refit="x"), "rounds.refit")]:
        with pytest.raises(ValueError, match=field):
            check_rounds(bad, 1000)
    check_rounds(RoundsConfig(prompts=500), 1000)


@pytest.mark.slow
@pytest.mark.parametrize("refit", ["scratch", "continue"])
def test_run_rounds_aggregates_and_refits_each_round(refit):
    starts, path = _prompts(64)
    log_ref = shortcut_reference(TINY, 3.0, jax.random.PRNGKey(1), top_k=4)
    critic = CriticConfig(head="q", layers=1, width=16, heads=2, steps=10, batch_size=16, warmup=2)
    offline = Labelled(jnp.concatenate([starts[:4], starts[:4]]), jnp.concatenate([jnp.ones(4), jnp.zeros(4)]),
                       jnp.ones(8))
    rows = []
    model, params, history = run_rounds(jax.random.PRNGKey(0), TINY, critic, RoundsConfig(rounds=2, prompts=24, refit=refit),
                                        log_ref, starts, path, P, PAD, 4, init_data=offline, log=rows.append)
    assert [h["data"] for h in history] == [8 + 24, 8 + 48] and [h["round"] for h in history] == [1, 2]
    assert all(0.0 <= h["rollin_success"] <= 1.0 and np.isfinite(h["final_bce"]) for h in history)
    assert [r for r in rows if "data" in r] == history and any("step" in r for r in rows)
    assert jax.tree.all(jax.tree.map(lambda a: bool(jnp.all(jnp.isfinite(a))), params))
