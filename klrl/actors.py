"""Acting rules as `Actor`s: one member's policy over its E environments (the trainer vmaps).

An Actor is three pure functions:
- `init(key, E) -> carry` (per-member state; `()` for memoryless rules),
- `act(out, obs, carry, key, hp, env_steps, ctx) -> (actions [E], log_probs [E, A])` from the
  network output `out` at `obs`; `log_probs` is ln π(·|obs) of the policy acted with, so
  KL(π‖π_ref) is measured the same way for every agent (greedy: −inf off the argmax),
- `observe(carry, obs, actions, step, key) -> carry` after the env step (`step` is that
  member's `EnvStep`, fields [E]);
- `restart(carry, key) -> carry` when every env was reset outside the episode stream (a host
  pool re-reset on resume): per-episode bookkeeping restarts, anything accumulated is kept.
The rules here: ε-greedy with a linear schedule, softmax (Boltzmann), greedy/ε_eval for
evaluation, and sampling from an agent's own logits (Q♯'s guided policy, klrl.agents.qsharp).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from klrl import rng

ACTING = ("epsilon_greedy", "softmax")


def _same(carry, key):
    return carry


class Actor(NamedTuple):
    init: Callable[[jax.Array, int], Any]
    act: Callable[..., tuple[jax.Array, jax.Array]]
    observe: Callable[..., Any]
    restart: Callable[[Any, jax.Array], Any] = _same   # every env starts a new episode (pool re-reset)


def _no_carry(key, num_envs):
    return ()


def _keep(carry, obs, actions, step, key):
    return carry


def epsilon(env_steps: jax.Array, hp: dict, total_steps: int) -> jax.Array:
    """Linear ε schedule: ε_start → ε_end over epsilon_fraction·total_steps env steps."""
    duration = jnp.maximum(hp["epsilon_fraction"] * total_steps, 1.0)
    frac = jnp.clip(env_steps.astype(jnp.float32) / duration, 0.0, 1.0)
    return hp["epsilon_start"] + frac * (hp["epsilon_end"] - hp["epsilon_start"])


def epsilon_greedy_act(q: jax.Array, key: jax.Array, eps: jax.Array) -> tuple[jax.Array, jax.Array]:
    """a = argmax q with probability 1 − ε, else uniform (floor(u·A): cheaper than randint under vmap).

    ln π = ln((1 − ε)·1[a = argmax] + ε/A)."""
    num_actions = q.shape[-1]
    k1, k2 = jax.random.split(rng.wrap(key))
    greedy = jnp.argmax(q, axis=-1).astype(jnp.int32)
    explore = jax.random.uniform(k1, q.shape[:-1]) < eps
    random_a = jnp.minimum((jax.random.uniform(k2, q.shape[:-1]) * num_actions).astype(jnp.int32), num_actions - 1)
    probs = (1.0 - eps) * jax.nn.one_hot(greedy, num_actions, dtype=q.dtype) + eps / num_actions
    return jnp.where(explore, random_a, greedy), jnp.log(probs)


def sample_logits(key: jax.Array, logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """a ~ softmax(logits); returns (a, ln π)."""
    return jax.random.categorical(rng.wrap(key), logits, axis=-1).astype(jnp.int32), jax.nn.log_softmax(logits, axis=-1)


def epsilon_greedy(q_values: Callable, total_steps: int) -> Actor:
    """ε-greedy on q_values(out) with the linear schedule of `epsilon`."""
    def act(out, obs, carry, key, hp, env_steps, ctx):
        return epsilon_greedy_act(q_values(out), key, epsilon(env_steps, hp, total_steps))
    return Actor(_no_carry, act, _keep)


def softmax(q_values: Callable) -> Actor:
    """a ~ softmax(q / softmax_temperature)."""
    def act(out, obs, carry, key, hp, env_steps, ctx):
        return sample_logits(key, q_values(out) / hp["softmax_temperature"])
    return Actor(_no_carry, act, _keep)


def evaluation(q_values: Callable, eval_epsilon: float) -> Actor:
    """Greedy (ε_eval = 0) or ε_eval-greedy: the evaluation rule of ordinary agents."""
    def act(out, obs, carry, key, hp, env_steps, ctx):
        return epsilon_greedy_act(q_values(out), key, jnp.float32(eval_epsilon))
    return Actor(_no_carry, act, _keep)


def from_logits(policy_logits: Callable) -> Actor:
    """a ~ softmax(policy_logits(out, obs, hp, ctx)): an agent's own stochastic policy."""
    def act(out, obs, carry, key, hp, env_steps, ctx):
        return sample_logits(key, policy_logits(out, obs, hp, ctx))
    return Actor(_no_carry, act, _keep)


def kl(log_probs: jax.Array, log_pi_ref: jax.Array) -> jax.Array:
    """KL(π‖π_ref) = <π, ln π − ln π_ref> over the last axis; terms with π(a) = 0 are 0
    (so a greedy policy gives −ln π_ref(argmax))."""
    pi = jnp.exp(log_probs)
    return jnp.sum(jnp.where(pi > 0, pi * (log_probs - log_pi_ref), 0.0), axis=-1)


def configured(acting: str, q_values: Callable, total_steps: int) -> Actor:
    """The training rule named by `agent.acting` (one of ACTING)."""
    if acting == "epsilon_greedy":
        return epsilon_greedy(q_values, total_steps)
    if acting == "softmax":
        return softmax(q_values)
    raise ValueError(f"acting: got {acting!r}; allowed {', '.join(ACTING)}")
