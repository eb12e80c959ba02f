"""Exact checks of Q♯ (Zhou et al. 2025) on finite episodic MDPs.

Q♯ learns the optimal policy of KL-regularized RL toward a FIXED reference policy π_ref,

    max_π  E_π[ Σ_t r_t ] − η Σ_t E_π[ KL(π(·|s_t) ‖ π_ref(·|s_t)) ],

whose solution is π*(a|s) ∝ π_ref(a|s)·exp(Q*(s, a)/η) with the soft-Q-with-prior recursion

    Q*(s, a) = r(s, a) + Σ_s' P(s'|s, a) V*(s'),    V*(s) = η ln Σ_a π_ref(a|s) exp(Q*(s, a)/η)

(Fox et al. 2016's soft Q with a prior). Q♯'s observation: with DETERMINISTIC
transitions and γ = 1, unrolling the recursion gives

    Q*(s, a) = η ln E[exp(Z(s, a)/η)],   Z(s, a) = return-to-go of π_ref after (s, a),

so the return DISTRIBUTION of π_ref (no max, no policy improvement) is all one needs.

When the identity is exact and when it is biased:
- exact: deterministic transitions, γ = 1 (episodic, every policy terminates), and any
  π_ref; then `entropic_value(return_distribution(...)) == soft_q_prior(...)` to float
  precision (tests/test_qsharp_tabular.py checks 1e-8 in float64).
- stochastic transitions: η ln E e^{Z/η} also averages the NEXT-STATE noise inside the
  exponential, i.e. it plans as if the agent could pick the next state: by Jensen
  η ln E_{s'} e^{V*(s')/η} ≥ E_{s'} V*(s'), so the entropic value OVERESTIMATES Q*
  (risk-seeking); the gap vanishes as η → ∞ and grows with the transition noise.
- γ < 1: the entropic value of the discounted return η ln E e^{(Σ γ^t r_t)/η} equals the
  optimum only of the objective whose KL is NOT discounted while the reward is, which is
  not the usual discounted soft-Q-with-prior fixed point (`soft_q_prior` with γ < 1
  discounts the KL too); the two differ in general (the test shows the gap).

Everything here is float64-friendly: the distributions are built exactly on the host
(numpy; the support is the set of all reachable returns, no atoms, no sampling), and
every value goes through `klrl.operators.soft_value`, the function the deep agents use.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from klrl.operators import guided_logits, soft_value
from klrl.tabular.mdp import MDP, expected_next


class ReturnDistribution(NamedTuple):
    """Exact discrete return distributions of every (s, a): values/probs [S, A, K].

    The support of Z(s, a) is `values[s, a, :]` with probabilities `probs[s, a, :]`; rows
    are zero-padded (probability 0) to the longest support K. Terminal states hold the
    point mass at 0.
    """

    values: np.ndarray
    probs: np.ndarray


def return_distribution(mdp: MDP, pi_ref, gamma: float = 1.0) -> ReturnDistribution:
    """Exact distribution of Z(s, a) = r(s, a) + γ·Z(s'), a' ~ π_ref, by dynamic programming.

    Recursion (memoized over states, the MDP must be acyclic apart from its absorbing
    terminal states, e.g. `chain_mdp` / `tree_mdp`):
        law(Z(s, a)) = Σ_s' P(s'|s, a)·law(r(s, a) + γ·Z(s'))
        law(Z(s'))   = Σ_a' π_ref(a'|s')·law(Z(s', a')),   Z(terminal) = 0.
    Atoms with probability 0 are dropped, equal values are not merged (harmless for
    expectations). Raises ValueError on a cycle through non-terminal states.
    """
    P = np.asarray(mdp.P, dtype=np.float64)
    r = np.asarray(mdp.r, dtype=np.float64)
    pi = np.asarray(pi_ref, dtype=np.float64)
    S, A = r.shape
    terminal = np.zeros(S, bool) if mdp.terminal is None else np.asarray(mdp.terminal, bool)
    state_law: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    sa_law: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    visiting: set[int] = set()

    def law_sa(s: int, a: int):
        if (s, a) not in sa_law:
            vals, probs = [], []
            for t in np.flatnonzero(P[s, a] > 0):
                v, p = law_state(int(t))
                vals.append(r[s, a] + gamma * v)
                probs.append(P[s, a, t] * p)
            sa_law[(s, a)] = (np.concatenate(vals), np.concatenate(probs))
        return sa_law[(s, a)]

    def law_state(s: int):
        if terminal[s]:
            return np.zeros(1), np.ones(1)
        if s not in state_law:
            if s in visiting:
                raise ValueError(f"return_distribution: state {s} lies on a cycle; allowed acyclic episodic MDPs")
            visiting.add(s)
            vals, probs = [], []
            for a in np.flatnonzero(pi[s] > 0):
                v, p = law_sa(s, int(a))
                vals.append(v)
                probs.append(pi[s, a] * p)
            visiting.discard(s)
            state_law[s] = (np.concatenate(vals), np.concatenate(probs))
        return state_law[s]

    laws = [[law_sa(s, a) if not terminal[s] else (np.zeros(1), np.ones(1)) for a in range(A)]
            for s in range(S)]
    K = max(len(v) for row in laws for v, _ in row)
    values = np.zeros((S, A, K))
    probs = np.zeros((S, A, K))
    for s in range(S):
        for a in range(A):
            v, p = laws[s][a]
            values[s, a, : len(v)] = v
            probs[s, a, : len(p)] = p
    return ReturnDistribution(values, probs)


def entropic_value(dist: ReturnDistribution, eta) -> jax.Array:
    """Q_η(s, a) = η ln E[exp(Z(s, a)/η)] = η·lse_k(ln p_k + z_k/η), via `soft_value` [S, A].

    The same expression as `klrl.operators.entropic_q` (which works on fixed atoms), here on
    the exact, state-dependent support.
    """
    probs = jnp.asarray(dist.probs)
    log_p = jnp.where(probs > 0, jnp.log(jnp.where(probs > 0, probs, 1.0)), -jnp.inf)
    return soft_value(jnp.asarray(dist.values), eta, log_p)


@partial(jax.jit, static_argnames=("iterations",))
def soft_q_prior(mdp: MDP, log_pi_ref: jax.Array, eta, gamma=1.0, iterations: int | None = None) -> jax.Array:
    """The KL-to-π_ref optimum Q* [S, A] by backward induction (soft Q with prior, Fox et al. 2016).

    Q ← r + γ·P·V(Q), V(s) = η ln Σ_a π_ref(a|s) exp(Q(s, a)/η) = `soft_value(Q, η, ln π_ref)`.
    On an acyclic episodic MDP the k-th iterate is exact for every state within k steps of
    the end, so `iterations = num_states` (the default) gives the exact solution; with
    γ < 1 this is the discounted-KL fixed point (the KL is discounted with the reward).
    """
    iterations = mdp.num_states if iterations is None else iterations
    q0 = jnp.zeros_like(mdp.r)

    def body(_, q):
        return mdp.r + gamma * expected_next(mdp, soft_value(q, eta, log_pi_ref))

    return jax.lax.fori_loop(0, iterations, body, q0)


def optimal_policy(q_star: jax.Array, log_pi_ref: jax.Array, eta) -> jax.Array:
    """Closed-form optimum π*(a|s) = π_ref(a|s)·exp((Q*(s, a) − V*(s))/η), V* = η ln E_π_ref e^{Q*/η}."""
    v = soft_value(q_star, eta, log_pi_ref)
    return jnp.exp(log_pi_ref + (q_star - v[..., None]) / eta)


def guided_policy(q_eta: jax.Array, log_pi_ref: jax.Array, eta) -> jax.Array:
    """Q♯'s guided policy softmax(ln π_ref + Q_η/η) (`klrl.operators.guided_logits`)."""
    return jax.nn.softmax(guided_logits(log_pi_ref, q_eta, eta), axis=-1)


__all__ = ["ReturnDistribution", "entropic_value", "guided_policy", "optimal_policy", "return_distribution",
           "soft_q_prior"]
