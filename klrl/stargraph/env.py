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
episodes from the split its entry of klrl.stargraph.registry names (the post-training split,
seed 0), regenerating graph i in-graph (klrl.stargraph.graphs.graph_at) rather than holding the
set as a program constant (closed-over arrays become constant arguments of the program, which
the runner's AOT-compiled chunk does not pass: `Computation compiled for N inputs but called with
N − k`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from klrl.envs.base import EnvSpec
from klrl.envs.in_graph import InGraphEnv, OneStep
from klrl.stargraph.graphs import Graphs, StarGraphTask, graph_at, split_key
from klrl.stargraph.registry import STAR_GRAPH_ENVS, TokenEnvSource
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


def _start(task: StarGraphTask, graph: Graphs) -> jax.Array:
    """uint8 [L] first state of one (traced) graph: prompt, then ℓ PAD tokens."""
    voc = Vocabulary(task.num_nodes)
    tail = jnp.full((1,), voc.sep, jnp.int32), graph.source[None], graph.goal[None], jnp.full((1,), voc.eq, jnp.int32)
    prompt = jnp.concatenate([graph.edges.reshape(-1), *tail])
    return jnp.concatenate([prompt, jnp.full((task.path_length,), voc.pad, jnp.int32)]).astype(jnp.uint8)


def token_env(task: StarGraphTask, source: TokenEnvSource, members: int, envs: int, name: str = "") -> InGraphEnv:
    """[members, envs] copies of the token MDP; an episode draws graph i ~ U{0..size−1} of the
    source's split and regenerates it in-graph (klrl.stargraph.graphs.graph_at): no dataset is
    held as a program constant."""
    spec = token_spec(task, name)
    P, ell = prompt_length(task), task.path_length

    def reset_one(k):
        i = jax.random.randint(k, (), 0, source.size)
        # the split key is built inside the trace from Python ints: a closed-over key array would
        # become a constant argument of the program, which the runner's AOT-compiled chunk drops
        graph = graph_at(task, split_key(source.seed, source.split), i)
        start = _start(task, graph)
        return (jnp.zeros((), jnp.int32), start, graph.path.astype(jnp.uint8)), start

    def step_one(k, inner, action) -> OneStep:
        t, tokens, path = inner
        written = tokens.at[P + t].set(action.astype(jnp.uint8))
        terminated = t + 1 >= ell
        reward = (terminated & jnp.all(written[P:] == path)).astype(jnp.float32)
        fresh, _ = reset_one(k)
        nxt = jax.tree.map(lambda a, b: jnp.where(terminated, a, b), fresh, (t + 1, written, path))
        return OneStep(nxt, nxt[1], written, reward, terminated, jnp.zeros((), bool))

    return InGraphEnv(spec, members, envs, reset_one, step_one)


def registered_spec(name: str) -> EnvSpec:
    """The spec of a registered token MDP (the `tokens` backend, klrl.envs.token_backend)."""
    return token_spec(STAR_GRAPH_ENVS[name].task, name)


def registered_env(name: str, members: int, envs: int) -> InGraphEnv:
    """[members, envs] copies of a registered token MDP."""
    source = STAR_GRAPH_ENVS[name]
    return token_env(source.task, source, members, envs, name)


__all__ = ["initial_states", "registered_env", "registered_spec", "token_env",
           "token_spec"]
