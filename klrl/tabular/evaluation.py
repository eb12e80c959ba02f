"""Exact evaluation: `q^π` by a linear solve, `q*` by policy iteration, and the error
`‖q* − q^π‖_∞` that every Leverage-the-Average figure plots.

Terminal states follow `klrl.tabular.mdp`: their value is zero and they are never
bootstrapped from, so `γ = 1` is fine on episodic MDPs.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from klrl.tabular.mdp import MDP, expected_next


@jax.jit
def q_of_policy(mdp: MDP, pi: jax.Array, gamma) -> jax.Array:
    """Exact action values of a stationary policy `pi` [S, A] (rows sum to one).

    `v^π = (I − γ P_π)^{-1} r_π` with `P_π(s, s') = Σ_a π(a|s) P(s'|s, a)(1 − terminal[s'])`
    and `r_π(s) = <π(s), r(s)>`; then `q^π = r + γ P v^π`, solved exactly rather than
    iterated. Returns [S, A].
    """
    S = mdp.num_states
    P_cont = mdp.P * mdp.continuation()
    P_pi = jnp.einsum("sa,sat->st", pi, P_cont)
    r_pi = jnp.sum(pi * mdp.r, axis=-1)
    v = jnp.linalg.solve(jnp.eye(S, dtype=P_pi.dtype) - gamma * P_pi, r_pi)
    return mdp.r + gamma * expected_next(mdp, v)


def greedy_policy(q: jax.Array) -> jax.Array:
    """The greedy policy of `q` [..., A], uniform over exact ties (so `q = 0` gives the
    uniform policy, matching the regularized schemes' `π_1`)."""
    is_max = q == jnp.max(q, axis=-1, keepdims=True)
    return is_max / jnp.sum(is_max, axis=-1, keepdims=True)


@partial(jax.jit, static_argnames=("max_iterations", "rtol"))
def optimal_q(mdp: MDP, gamma, *, max_iterations: int = 200, rtol: float = 1e-12) -> jax.Array:
    """The unregularized optimal action values `q*` [S, A], by exact policy iteration.

    Howard's policy iteration: evaluate the current deterministic policy exactly
    (`q_of_policy`), switch to the greedy one, stop once no state can improve by more than
    `rtol·(1 + |q|)` (the tolerance only guards against flip-flopping between tied actions;
    it does not limit accuracy, each evaluation is an exact solve). Terminates in a finite
    number of steps on any finite MDP; `max_iterations` is a safety cap.
    The result satisfies `q* = r + γ P max_a q*` to solver precision (see the tests).
    """

    def evaluate(actions):
        pi = jax.nn.one_hot(actions, mdp.num_actions, dtype=mdp.r.dtype)
        return q_of_policy(mdp, pi, gamma)

    def improvable(q, actions):
        q_act = jnp.take_along_axis(q, actions[:, None], axis=-1)[:, 0]
        return jnp.any(jnp.max(q, -1) > q_act + rtol * (1.0 + jnp.abs(q_act)))

    def cond(state):
        i, actions, q = state
        return (i < max_iterations) & improvable(q, actions)

    def body(state):
        i, actions, q = state
        q_act = jnp.take_along_axis(q, actions[:, None], axis=-1)[:, 0]
        better = jnp.max(q, -1) > q_act + rtol * (1.0 + jnp.abs(q_act))
        # Only switch where the improvement is strict: guarantees monotone progress.
        new_actions = jnp.where(better, jnp.argmax(q, -1), actions)
        return i + 1, new_actions, evaluate(new_actions)

    actions0 = jnp.argmax(mdp.r, axis=-1)
    _, _, q = jax.lax.while_loop(cond, body, (0, actions0, evaluate(actions0)))
    return q


@jax.jit
def policy_error(mdp: MDP, pi: jax.Array, gamma, q_star: jax.Array) -> jax.Array:
    """`‖q* − q^π‖_∞` over all (s, a): the suboptimality of `pi` measured in action values."""
    return jnp.max(jnp.abs(q_star - q_of_policy(mdp, pi, gamma)))
