"""Exact model-based MDPs and regularized value-iteration schemes (Leverage the Average).

  mdp         MDP pytree, Garnet instances, deterministic chain/tree MDPs (episodic, γ = 1 ok)
  evaluation  q^π by a linear solve, q* by policy iteration, ‖q* − q^π‖_∞
  schemes     VI, MD-VI(λ, τ), M-VI(α, τ), Tsallis M-VI: lax.scan over noisy iterations,
              built from the same klrl.operators functions as the deep agents
  bounds      the τ = 0 error bound of Vieillard et al. 2020
  leverage    the experiment (grid, run, summaries, tidy rows); `klrl tabular <toml>`
  leverage_config  its config sections and `--quick` sizes
  plots       its figures (shared by the CLI and notebooks/leverage_average.py)
"""

from klrl.tabular.bounds import bound_for_policies, kl_bound
from klrl.tabular.evaluation import greedy_policy, optimal_q, policy_error, q_of_policy
from klrl.tabular.mdp import MDP, chain_mdp, deterministic_mdp, expected_next, garnet, tree_mdp
from klrl.tabular.schemes import SchemeResult, m_vi, md_vi, noise_at, run_scheme, tsallis_m_vi, vi

__all__ = [
    "MDP", "SchemeResult", "bound_for_policies", "chain_mdp", "deterministic_mdp",
    "expected_next", "garnet", "greedy_policy", "kl_bound", "m_vi", "md_vi", "noise_at", "optimal_q",
    "policy_error", "q_of_policy", "run_scheme", "tree_mdp", "tsallis_m_vi", "vi",
]
