"""klrl: KL-regularized value-based reinforcement learning in JAX.

Subpackages:
  klrl.operators  regularized Bellman operators on q-arrays [..., A] (the public API)
  klrl.tabular    exact model-based MDPs and regularized value-iteration schemes
  klrl.agents     deep agents: network + loss (from operators) + acting rule
  klrl.envs       environment adapters (gymnax in-graph)
"""

__version__ = "0.1.0"
