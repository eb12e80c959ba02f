"""Finite MDPs as arrays: the `MDP` pytree, Garnet instances and deterministic chain/tree MDPs.

An MDP is `P[s, a, s']` (transition probabilities, rows sum to one) and `r[s, a]` (expected
reward), plus a boolean mask `terminal[s]`. A terminal state is absorbing with zero reward
and is never bootstrapped from: every backup uses the discount `γ(1 − terminal[s'])`, the
same convention as the deep agents (`d = γ(1 − terminated)`, docs/conventions.md). With
that convention an episodic MDP (every policy reaches a terminal state) is well posed at
γ = 1, which the Q♯ checks need.

All constructors are pure functions of a PRNG key and static sizes, so a batch of MDPs is
`jax.vmap(partial(garnet, num_states=..., ...))(keys)`; the result is an `MDP` whose arrays
carry a leading batch axis, and every function of `klrl.tabular` vmaps over it.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp


class MDP(NamedTuple):
    """A finite MDP. `P`: [S, A, S] next-state distributions; `r`: [S, A] mean rewards;
    `terminal`: [S] bool, states whose value is zero (absorbing, never bootstrapped)."""

    P: jax.Array
    r: jax.Array
    terminal: jax.Array | None = None

    @property
    def num_states(self) -> int:
        return self.P.shape[-3]

    @property
    def num_actions(self) -> int:
        return self.P.shape[-2]

    def continuation(self) -> jax.Array:
        """`1 − terminal[s']` as a float array [S] (ones when no terminal states exist)."""
        if self.terminal is None:
            return jnp.ones(self.P.shape[-1], self.P.dtype)
        return 1.0 - self.terminal.astype(self.P.dtype)


def expected_next(mdp: MDP, v: jax.Array) -> jax.Array:
    """`(P v)(s, a) = Σ_s' P(s'|s, a)(1 − terminal[s']) v(s')`: the exact expectation that
    replaces the deep agents' sampled next state. `v`: [S] -> [S, A]."""
    return jnp.einsum("sat,t->sa", mdp.P, v * mdp.continuation())


@partial(jax.jit, static_argnames=("num_states", "num_actions", "branching", "dtype"))
def garnet(key: jax.Array, num_states: int, num_actions: int, branching: int,
           *, dtype=None) -> MDP:
    """A random Garnet(N_S, N_A, N_B) MDP (Archibald et al. 1995; the instances of
    Vieillard et al. 2020, "Leverage the Average").

    For every (s, a): `branching` distinct next states drawn uniformly without replacement,
    with probabilities from a flat Dirichlet(1) (normalized Exp(1) draws, each strictly
    positive with probability one); rewards are uniform in [0, 1). No terminal states.
    """
    if not 1 <= branching <= num_states:
        raise ValueError(f"branching: got {branching}; allowed 1..num_states={num_states}")
    dtype = dtype or jnp.zeros(()).dtype  # float64 under jax.enable_x64, else float32
    # One uniform draw per (s, a) feeds everything (a single PRNG program compiles faster):
    # S values rank the next states, N_B give the probabilities, 1 gives the reward.
    u = jax.random.uniform(key, (num_states, num_actions, num_states + branching + 1), dtype)
    # `branching` distinct states per (s, a): the first N_B entries of a random permutation,
    # obtained by ranking i.i.d. uniforms (argsort is a uniform random permutation).
    next_states = jnp.argsort(u[..., :num_states], axis=-1)[..., :branching]
    # Dirichlet(1) = normalized Exp(1) draws; −log(1 − u) with u ∈ [0, 1) is Exp(1), and
    # it is > 0 unless u is exactly 0, so there are exactly N_B nonzeros with probability 1.
    weights = -jnp.log1p(-u[..., num_states:num_states + branching])
    probs = weights / weights.sum(-1, keepdims=True)
    P = jnp.zeros((num_states, num_actions, num_states), dtype)
    s_idx = jnp.arange(num_states)[:, None, None]
    a_idx = jnp.arange(num_actions)[None, :, None]
    P = P.at[s_idx, a_idx, next_states].set(probs)
    r = u[..., -1]
    return MDP(P=P, r=r, terminal=jnp.zeros(num_states, bool))


def deterministic_mdp(next_state: jax.Array, r: jax.Array, terminal: jax.Array) -> MDP:
    """Builds an MDP from a deterministic successor table `next_state[s, a]` (ints), rewards
    `r[s, a]` and a terminal mask. Terminal states must have zero reward (checked by the
    callers' construction, not at trace time)."""
    num_states = next_state.shape[0]
    P = jax.nn.one_hot(next_state, num_states, dtype=r.dtype)
    return MDP(P=P, r=r, terminal=terminal)


@partial(jax.jit, static_argnames=("length", "num_actions", "dtype"))
def chain_mdp(key: jax.Array, length: int, num_actions: int = 2, *, dtype=None) -> MDP:
    """A deterministic episodic chain with `length` non-terminal states 0..L−1 and one
    absorbing terminal state L (zero reward).

    Action 0 moves forward `s -> s + 1` (from L − 1 into the terminal state); every other
    action ends the episode at once (`s -> L`). Rewards of non-terminal (s, a) are uniform
    in [0, 1]. Every policy terminates within L steps, so γ = 1 is well posed.
    """
    if length < 1 or num_actions < 1:
        raise ValueError(f"chain_mdp: got length={length}, num_actions={num_actions}; allowed >= 1")
    dtype = dtype or jnp.zeros(()).dtype
    num_states = length + 1
    s = jnp.arange(num_states)[:, None]
    a = jnp.arange(num_actions)[None, :]
    nxt = jnp.where(a == 0, jnp.minimum(s + 1, length), length)
    terminal = jnp.arange(num_states) == length
    r = jax.random.uniform(key, (num_states, num_actions), dtype=dtype)
    r = jnp.where(terminal[:, None], 0.0, r)
    return deterministic_mdp(nxt, r, terminal)


@partial(jax.jit, static_argnames=("depth", "num_actions", "leaf_rewards_only", "dtype"))
def tree_mdp(key: jax.Array, depth: int, num_actions: int = 2, *,
             leaf_rewards_only: bool = False, dtype=None) -> MDP:
    """A deterministic episodic complete `num_actions`-ary tree of `depth` decision levels.

    States are the tree's internal nodes in breadth-first order (node n's children are
    `n·A + 1 … n·A + A`), followed by one absorbing terminal state; the actions of the last
    level lead to the terminal state. Rewards of non-terminal (s, a) are uniform in [0, 1];
    with `leaf_rewards_only` only the last decision level is rewarded (a sparse,
    outcome-only reward, as in LLM post-training). Every episode has exactly `depth` steps.
    """
    if depth < 1 or num_actions < 1:
        raise ValueError(f"tree_mdp: got depth={depth}, num_actions={num_actions}; allowed >= 1")
    dtype = dtype or jnp.zeros(()).dtype
    A = num_actions
    num_internal = sum(A**d for d in range(depth))  # nodes at levels 0..depth-1
    first_last_level = num_internal - A ** (depth - 1)
    term = num_internal
    num_states = num_internal + 1
    s = jnp.arange(num_states)[:, None]
    a = jnp.arange(A)[None, :]
    child = s * A + 1 + a
    is_last_level = (s >= first_last_level) & (s < num_internal)
    nxt = jnp.where(is_last_level | (s == term), term, child)
    terminal = jnp.arange(num_states) == term
    r = jax.random.uniform(key, (num_states, A), dtype=dtype)
    rewarded = ~terminal[:, None] & (is_last_level if leaf_rewards_only else True)
    r = jnp.where(rewarded, r, 0.0)
    return deterministic_mdp(nxt, r, terminal)
