"""The star-graph task as a token MDP behind klrl's `Env` protocol (in-graph, vmappable,
checkpointable; klrl.envs.in_graph).

State: the token prefix, held as a fixed-length sequence [2E + 4 + ℓ] whose unwritten tail is
PAD (klrl.stargraph.tokenizer); the observation is that sequence (uint8). An episode starts from
the prompt of a graph drawn uniformly from a fixed dataset; the action is the next token (any of
the V tokens); each step writes it, so an episode has exactly ℓ steps. Dynamics are
deterministic; the reward is terminal and exact-match,

    r_t = 1[t = ℓ − 1 and (a_0, …, a_{ℓ−1}) = y*]        (y* the unique path s → g),

and the episode terminates after its ℓ-th token (no time limit: `max_episode_steps` = ℓ, never
truncated). This is the setting where Q♯'s identity Q* = η ln E[exp(Z/η)] is exact (γ = 1,
deterministic, Zhou et al. 2025).

The backend `tokens` (klrl.envs.token_backend) serves the registered tasks `STAR_GRAPH_ENVS`: each draws its
episodes from the dataset its entry of klrl.stargraph.registry names (the post-training split) (klrl.stargraph.graphs.dataset, seed 0).
"""

from __future__ import annotations

import functools
import jax
import jax.numpy as jnp
import numpy as np

from klrl.envs.base import EnvSpec
from klrl.envs.in_graph import InGraphEnv, OneStep
from klrl.stargraph.graphs import Graphs, StarGraphTask, dataset
from klrl.stargraph.registry import STAR_GRAPH_ENVS
from klrl.stargraph.tokenizer import Vocabulary, encode, prompt_length, sequence_length


def token_spec(task: StarGraphTask, name: str = "") -> EnvSpec:
    """uint8 observations [2E + 4 + ℓ], V actions, ℓ steps per episode."""
    voc = Vocabulary(task.num_nodes)
    if voc.size > 256:
        raise ValueError(f"num_nodes {task.num_nodes}: tokens must fit uint8 (num_nodes <= 253)")
    return EnvSpec(name=name or f"StarGraph-d{task.degree}-l{task.path_length}-n{task.num_nodes}",
                   obs_shape=(sequence_length(task),), obs_dtype=jnp.uint8, num_actions=voc.size,
                   max_episode_steps=task.path_length)


def initial_states(task: StarGraphTask, graphs: Graphs) -> np.ndarray:
    """uint8 [n, L]: each graph's prompt followed by ℓ PAD tokens (the episode's first state)."""
    tokens = encode(task, graphs)
    tokens[:, prompt_length(task):] = Vocabulary(task.num_nodes).pad
    return tokens.astype(np.uint8)


def token_env(task: StarGraphTask, graphs: Graphs, members: int, envs: int, name: str = "") -> InGraphEnv:
    """[members, envs] copies of the token MDP over `graphs` (episodes draw a graph uniformly)."""
    spec = token_spec(task, name)
    starts = jnp.asarray(initial_states(task, graphs))
    paths = jnp.asarray(graphs.path.astype(np.uint8))
    P, ell = prompt_length(task), task.path_length

    def reset_one(key):
        i = jax.random.randint(key, (), 0, starts.shape[0])
        return (i, jnp.zeros((), jnp.int32), starts[i]), starts[i]

    def step_one(key, inner, action) -> OneStep:
        i, t, tokens = inner
        written = tokens.at[P + t].set(action.astype(jnp.uint8))
        terminated = t + 1 >= ell
        reward = (terminated & jnp.all(written[P:] == paths[i])).astype(jnp.float32)
        (j, _, fresh), _ = reset_one(key)
        nxt = jax.tree.map(lambda a, b: jnp.where(terminated, a, b), (j, jnp.zeros_like(t), fresh),
                           (i, t + 1, written))
        return OneStep(nxt, nxt[2], written, reward, terminated, jnp.zeros((), bool))

    return InGraphEnv(spec, members, envs, reset_one, step_one)


@functools.lru_cache(maxsize=None)
def _graphs(name: str) -> Graphs:
    src = STAR_GRAPH_ENVS[name]
    return dataset(src.task, src.split, src.size, src.seed)


def registered_spec(name: str) -> EnvSpec:
    """The spec of a registered token MDP (the `tokens` backend, klrl.envs.token_backend)."""
    return token_spec(STAR_GRAPH_ENVS[name].task, name)


def registered_env(name: str, members: int, envs: int) -> InGraphEnv:
    """[members, envs] copies of a registered token MDP (its dataset built once per process)."""
    return token_env(STAR_GRAPH_ENVS[name].task, _graphs(name), members, envs, name)


__all__ = ["initial_states", "registered_env", "registered_spec", "token_env",
           "token_spec"]
