"""Algorithm 1 of Q♯ (Zhou et al. 2025) on the star graph: iterated roll-in, switch to π_ref,
label by exact match, aggregate, refit the success classifier.

Data D (optionally the offline round's labelled pairs, klrl.stargraph.offline); for k = 1..K:

1. for each of `prompts` FRESH post-training prompts draw h ~ Uniform{0, …, ℓ−1}, roll in with
   the current guided policy π^k for h target tokens, then let π_ref (its top-k at temperature 1)
   write tokens h, …, ℓ−1 (`rollin_switch`); π^1 is π_ref itself, or the policy guided by an
   initial critic when one is given;
2. label the whole sequence r ∈ {0, 1} by exact match with the path (the env's reward);
3. aggregate into D: at every target position t ≥ h the state x_t and token a_t come from π_ref's
   completion, so r is an unbiased sample of p(x_t, a_t) = P(π_ref succeeds | x_t, a_t) and gets
   weight 1; before the switch the tokens come from π^k and r is not a sample of p there
   (weight 0): the weight is per target position, [N, ℓ] (`switch_weight`);
4. refit the classifier (klrl.stargraph.critic) on D by the weighted BCE, from its initial
   parameters (`refit = "scratch"`) or from the last round's (`"continue"`); π^{k+1} is Q♯ / CD
   guidance of π_ref by it: π(a|x) ∝ π_ref(a|x)·(1 − p + p e^{1/η}) or π_ref(a|x)·e^{p/η}.

The paper labels one state-action per trajectory, (x_h, a_h); every t ≥ h is labelled here
(the same unbiased target, ℓ − h samples per rollout instead of one, correlated within it).
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from klrl.stargraph import sampler
from klrl.stargraph.critic import CriticConfig, critic_model, critic_p
from klrl.stargraph.guidance import GUIDANCES, guided_log_policy
from klrl.stargraph.offline import Labelled, train_critic

REFITS = ("scratch", "continue")


class RoundsConfig(NamedTuple):
    """Algorithm 1's loop: K rounds of `prompts` fresh post-training prompts each."""

    rounds: int = 2
    prompts: int = 2000            # fresh post-training prompts per round
    guidance: str = "qsharp"       # the roll-in policy's rule: GUIDANCES
    eta: float = 0.1
    refit: str = "scratch"         # REFITS: each round's fit starts from the critic's initial parameters, or the last fit
    seed: int = 0                  # folded into the run's key (the prompts' order, switch points, samples)
    steps: int = 0                 # critic steps per round's refit (0: the critic config's own `steps`)


def check_rounds(cfg: RoundsConfig, available: int) -> None:
    """One-line ValueError naming the first bad field of `cfg` (`available` post-training prompts)."""
    if cfg.rounds < 1:
        raise ValueError(f"rounds.rounds: got {cfg.rounds!r}; allowed an integer >= 1")
    if cfg.prompts < 1 or cfg.rounds * cfg.prompts > available:
        raise ValueError(f"rounds.prompts: got {cfg.prompts!r}; allowed 1 to {available // cfg.rounds} "
                         f"({available} post-training prompts over {cfg.rounds} rounds, fresh each round)")
    if cfg.guidance not in GUIDANCES:
        raise ValueError(f"rounds.guidance: got {cfg.guidance!r}; allowed one of {', '.join(GUIDANCES)}")
    if cfg.steps < 0:
        raise ValueError(f"rounds.steps: got {cfg.steps!r}; allowed an integer >= 0 (0: the critic's own steps)")
    if not cfg.eta > 0:
        raise ValueError(f"rounds.eta: got {cfg.eta!r}; allowed a number > 0")
    if cfg.refit not in REFITS:
        raise ValueError(f"rounds.refit: got {cfg.refit!r}; allowed one of {', '.join(REFITS)}")


def switched(log_policy: Callable, switch: jax.Array) -> Callable:
    """The roll-in's policy at target step t: π before the switch (t < h), π_ref from it on."""
    def log_pi(tokens, t, lref):
        return jnp.where((t < switch)[:, None], log_policy(tokens, t, lref), lref)
    return log_pi


def rollin_switch(key, starts: jax.Array, path: jax.Array, log_ref: Callable, log_policy: Callable, prompt_len: int,
                  ell: int):
    """Roll in with `log_policy` for h ~ Uniform{0, …, ℓ−1} steps per prompt, complete with π_ref
    (klrl.stargraph.sampler), label by exact match: (tokens [n, L], switch h [n] int32, reward [n]).
    Static shapes: the roll-in policy is evaluated for every row at every step, used where t < h."""
    k_switch, k_sample = jax.random.split(key)
    switch = jax.random.randint(k_switch, (starts.shape[0],), 0, ell, jnp.int32)
    out = sampler.sample(k_sample, starts, log_ref, switched(log_policy, switch), prompt_len, ell)
    return out.tokens, switch, sampler.exact_match(out.tokens, path, prompt_len)


def switch_weight(switch: jax.Array, ell: int) -> jax.Array:
    """[n, ℓ]: 1 at the target positions t ≥ h (written by π_ref, label unbiased), 0 before."""
    return (jnp.arange(ell)[None, :] >= switch[:, None]).astype(jnp.float32)


def per_position(data: Labelled, ell: int) -> Labelled:
    """A dataset with per-position weights [N, ℓ] (a per-sequence weight is broadcast), unpaired."""
    weight = data.weight if data.weight.ndim == 2 else jnp.broadcast_to(data.weight[:, None], (data.weight.shape[0], ell))
    return Labelled(data.tokens, data.labels.astype(jnp.float32), weight.astype(jnp.float32), paired=False)


def aggregate(data: Labelled | None, tokens: jax.Array, switch: jax.Array, reward: jax.Array, ell: int) -> Labelled:
    """D ∪ {this round's rollouts} with their switch weights (D may be None: the empty set)."""
    new = Labelled(tokens, reward.astype(jnp.float32), switch_weight(switch, ell), paired=False)
    if data is None:
        return new
    old = per_position(data, ell)
    return Labelled(*(jnp.concatenate([a, b.astype(a.dtype)]) for a, b in zip(old[:3], new[:3])), paired=False)


def guided_policy(model, head: str, pad: int, top_k: int, eta, rule: str) -> Callable:
    """params -> log_policy(tokens, t, lref): π_ref guided by the critic's p (klrl.stargraph.guidance)."""
    def of(params):
        return lambda tokens, t, lref: guided_log_policy(lref, critic_p(model, params, tokens, lref, head, pad, top_k),
                                                         eta, rule)
    return of


def run_rounds(key, task, critic_cfg: CriticConfig, rounds_cfg: RoundsConfig, log_ref: Callable, starts: jax.Array,
               path: jax.Array, prompt_len: int, pad: int, top_k: int, init_data: Labelled | None = None,
               ref_params=None, init_params=None, log: Callable = print):
    """Algorithm 1 (module docstring) on the post-training prompts `starts` [n, L] / `path` [n, ℓ]
    (round k takes the k-th block of `prompts` rows of a random order). `init_params`: an initial
    critic (e.g. the offline round's) that guides round 1's roll-in and, with `refit = "continue"`,
    starts round 1's fit. Returns (model, params, history: one JSON-ready dict per round)."""
    check_rounds(rounds_cfg, starts.shape[0])
    key, ell, m = jax.random.fold_in(key, rounds_cfg.seed), task.path_length, rounds_cfg.prompts
    if rounds_cfg.steps:
        critic_cfg = critic_cfg._replace(steps=rounds_cfg.steps)
    model = critic_model(task, critic_cfg)
    order = jax.random.permutation(jax.random.fold_in(key, 0), starts.shape[0])
    guided = guided_policy(model, critic_cfg.head, pad, top_k, rounds_cfg.eta, rounds_cfg.guidance)
    from_ref = jax.jit(lambda k, s, p: rollin_switch(k, s, p, log_ref, lambda x, t, lref: lref, prompt_len, ell))
    from_critic = jax.jit(lambda k, params, s, p: rollin_switch(k, s, p, log_ref, guided(params), prompt_len, ell))
    data, params, history = init_data, init_params, []
    for k in range(1, rounds_cfg.rounds + 1):
        start, rows = time.time(), order[(k - 1) * m:k * m]
        batch = (jax.random.fold_in(key, k), starts[rows], path[rows])
        tokens, switch, reward = from_ref(*batch) if params is None else from_critic(batch[0], params, *batch[1:])
        data = aggregate(data, tokens, switch, reward, ell)
        model, params, fit = train_critic(task, critic_cfg, data, prompt_len, log=lambda row: log({"round": k, **row}),
                                          ref_params=ref_params,
                                          params=params if rounds_cfg.refit == "continue" else None)
        history.append({"round": k, "data": int(data.tokens.shape[0]), "label_mean": float(data.labels.mean()),
                        "rollin_success": float(reward.mean()), "switch_mean": float(switch.mean()),
                        "final_bce": fit[-1]["loss"], "seconds": round(time.time() - start, 1)})
        log(history[-1])
    return model, params, history


__all__ = ["REFITS", "RoundsConfig", "aggregate", "check_rounds", "guided_policy", "per_position", "rollin_switch",
           "run_rounds", "switch_weight", "switched"]
