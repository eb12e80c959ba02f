"""The star-graph success classifier and the one-round offline protocol (klrl.stargraph.critic,
offline, evaluate) at tiny sizes: the heads read the same p the training loss fits, the offline
pairs are labelled correctly, fitting lowers the BCE, the oracle is perfectly calibrated."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl.stargraph import exact, sampler
from klrl.stargraph.critic import CriticConfig, bce_loss, critic_model, critic_p, target_logits
from klrl.stargraph.env import initial_states
from klrl.stargraph.evaluate import calibration, evaluate, oracle_p_fn
from klrl.stargraph.graphs import StarGraphTask, dataset
from klrl.stargraph.guidance import truncate
from klrl.stargraph.shortcut import shortcut_reference
from klrl.stargraph.protocol import children_in_top_k
from klrl.stargraph.offline import labelled_pairs, train_critic
from klrl.stargraph.tokenizer import Vocabulary, encode, prompt_length

TINY = StarGraphTask(2, 3, 8)
P, V, PAD = prompt_length(TINY), Vocabulary(8).size, Vocabulary(8).pad


def _ref(key):
    """A fixed π_ref depending on the last token only (enough for bookkeeping checks)."""
    table = 2.0 * jax.random.normal(key, (V, V))

    def log_ref(tokens):
        last = jnp.take_along_axis(tokens, (jnp.sum(tokens != PAD, -1) - 1)[..., None], -1)[..., 0]
        return truncate(table[last], top_k=4)
    return log_ref


@pytest.mark.parametrize("head", ["v", "q"])
def test_critic_reads_at_a_state_what_the_loss_fits(head):
    """critic_p at the on-path state y*_{<t}, token y*_t, equals σ(target_logits)[t] of the full
    sequence: guidance and training index the same output."""
    g = dataset(TINY, "test", 3, 0)
    full = jnp.asarray(encode(TINY, g))
    cfg = CriticConfig(head=head, layers=1, width=16, heads=2)
    model = critic_model(TINY, cfg)
    params = model.init(jax.random.PRNGKey(0), full)
    want = jax.nn.sigmoid(target_logits(model, params, full, P, TINY.path_length, head))     # [n, ℓ]
    read = jax.jit(critic_p, static_argnums=(0, 4, 5, 6))
    starts = jnp.asarray(initial_states(TINY, g), jnp.int32)
    for t in range(TINY.path_length):
        state = starts.at[:, P:P + t].set(full[:, P:P + t])
        log_ref = jnp.zeros((3, V)).at[jnp.arange(3), full[:, P + t]].set(5.0)   # y*_t among the top-k
        p = read(model, params, state, jax.nn.log_softmax(log_ref), head, PAD, 3)
        np.testing.assert_allclose(p[jnp.arange(3), full[:, P + t]], want[:, t], rtol=1e-5)


@pytest.mark.slow
def test_offline_pairs_and_fitting_lower_the_bce():
    g = dataset(TINY, "posttrain", 32, 0)
    starts, path = jnp.asarray(initial_states(TINY, g), jnp.int32), jnp.asarray(g.path)
    data = labelled_pairs(jax.random.PRNGKey(0), _ref(jax.random.PRNGKey(1)), starts, path, P, tries=4)
    n = 32
    assert data.tokens.shape == (64, P + TINY.path_length)
    np.testing.assert_array_equal(sampler.exact_match(data.tokens[:n], path, P), np.ones(n))
    found = np.asarray(data.weight[n:]) > 0
    assert found.sum() > n // 2
    np.testing.assert_array_equal(np.asarray(sampler.exact_match(data.tokens[n:], path, P))[found], 0.0)
    cfg = CriticConfig(head="q", layers=1, width=16, heads=2, steps=60, batch_size=16, lr=3e-3, warmup=5)
    model, params, history = train_critic(TINY, cfg, data, P, log=lambda row: None, log_every=60)
    fresh = critic_model(TINY, cfg).init(jax.random.split(jax.random.PRNGKey(0))[0], data.tokens[:1])
    args = (data.tokens, data.labels, data.weight, P, TINY.path_length, "q")
    assert float(bce_loss(model, params, *args)) < 0.8 * float(bce_loss(model, fresh, *args))
    assert history[-1]["step"] == 60


def test_oracle_is_calibrated_and_evaluation_reports_cis():
    g = dataset(TINY, "test", 16, 0)
    starts, path = jnp.asarray(initial_states(TINY, g), jnp.int32), jnp.asarray(g.path)
    log_ref = shortcut_reference(TINY, 3.0, jax.random.PRNGKey(1), top_k=4)
    p_fn = oracle_p_fn(log_ref, starts, path, P, V)
    cal = calibration(p_fn, log_ref, starts, path, P, V)
    assert cal["abs_error"] == [0.0] * 3 and cal["off_path_p"] == [0.0] * 3
    assert cal["ranks_correct_first"] == [1.0] * 3
    lrp = exact.path_log_probs(log_ref, starts, path, P)
    assert children_in_top_k(TINY, starts, path, lrp) == 1.0          # the bonus puts both children in the top 4
    top1 = shortcut_reference(TINY, 3.0, jax.random.PRNGKey(1), top_k=1)
    assert children_in_top_k(TINY, starts, path, exact.path_log_probs(top1, starts, path, P)) == 0.0
    ref = evaluate(jax.random.PRNGKey(3), log_ref, starts, path, P)
    assert ref["kl"]["mean"] == 0.0 and ref["n"] == 16 and 0.0 <= ref["accuracy"]["mean"] <= 1.0
    guided = evaluate(jax.random.PRNGKey(3), log_ref, starts, path, P, p_fn, eta=0.3)
    p0 = exact.success_probability(exact.path_log_probs(log_ref, starts, path, P), path)
    want_acc, want_kl = float(exact.optimal_success(p0, 0.3).mean()), float(exact.optimal_kl(p0, 0.3).mean())
    assert 0.05 < float(p0.mean()) < 0.95 and want_acc > float(p0.mean()) + 0.05
    assert abs(guided["accuracy"]["mean"] - want_acc) <= 3 * guided["accuracy"]["ci95"] + 0.07
    assert abs(guided["kl"]["mean"] - want_kl) <= 3 * guided["kl"]["ci95"] + 0.07 and guided["kl"]["mean"] > -1e-5


def test_critic_init_from_ref_copies_the_trunk_and_refuses_other_sizes():
    """`init = ref`: every parameter but the head is π_ref's; a critic of another width is refused."""
    from klrl.stargraph.critic import HEAD, init_critic
    from klrl.stargraph.transformer import CausalLM

    cfg = CriticConfig(head="v", layers=1, width=16, heads=2, init="ref")
    tokens = jnp.zeros((1, P + TINY.path_length), jnp.int32)
    ref = CausalLM(critic_model(TINY, cfg).config).init(jax.random.PRNGKey(3), tokens)
    params = init_critic(critic_model(TINY, cfg), cfg, jax.random.PRNGKey(4), tokens, ref)
    for name, leaf in params["params"].items():
        if name != HEAD:
            assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), leaf, ref["params"][name]))
    assert params["params"][HEAD]["kernel"].shape == (16, 1)
    wide = cfg._replace(width=32, heads=2)
    with pytest.raises(ValueError, match="critic.init"):
        init_critic(critic_model(TINY, wide), wide, jax.random.PRNGKey(4), tokens, ref)


def test_pairs_sampled_in_chunks_are_labelled_the_same_way():
    """Chunked sampling (memory) keeps the dataset's meaning: rows [0, n) the correct paths, rows
    [n, 2n) failures wherever one was found; one chunk reproduces the unchunked draw exactly."""
    g = dataset(TINY, "posttrain", 20, 0)
    starts, path = jnp.asarray(initial_states(TINY, g), jnp.int32), jnp.asarray(g.path)
    ref = _ref(jax.random.PRNGKey(1))
    whole = labelled_pairs(jax.random.PRNGKey(0), ref, starts, path, P, tries=2)
    assert jnp.array_equal(labelled_pairs(jax.random.PRNGKey(0), ref, starts, path, P, tries=2, chunk=20).tokens,
                           whole.tokens)
    chunked = labelled_pairs(jax.random.PRNGKey(0), ref, starts, path, P, tries=2, chunk=8)
    n = 20
    np.testing.assert_array_equal(chunked.tokens[:n], whole.tokens[:n])
    assert np.all(np.asarray(sampler.exact_match(chunked.tokens[:n], path, P)) == 1.0)
    found = np.asarray(chunked.weight[n:]) > 0
    assert found.any()
    assert np.all(np.asarray(sampler.exact_match(chunked.tokens[n:], path, P))[found] == 0.0)
    np.testing.assert_array_equal(chunked.tokens[n:, :P], starts[:, :P])
