"""The star-graph task G(d, ℓ, N) (Bachmann & Nagarajan 2024, "The pitfalls of next-token
prediction"; the testbed of Q♯, Zhou et al. 2025, §3.1).

A graph is a star: a source s with d arms, each a chain of ℓ − 1 distinct nodes, so 1 + d(ℓ − 1)
distinct labels drawn from {0, …, N − 1}. The goal g is the last node of one arm; the unique
path from s to g is s followed by that arm (ℓ nodes). The E = d(ℓ − 1) directed (parent, child)
edges are shuffled per graph, so nothing but the edges says which arm leads to g.

Generation (pure JAX, one graph per key): a random permutation of the N labels; its first label
is s, the next d blocks of ℓ − 1 labels are the arms, block 0 is the goal's arm (the edge
shuffle, a second permutation, hides which one it is). Graph i of a split is generated from
fold_in(split key, i), so a dataset is a pure function of (task, seed, split, size) and an
environment can regenerate any of its graphs in-graph instead of holding the set as a constant.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from klrl.errors import ConfigError

SPLITS = ("pretrain", "posttrain", "test")


class StarGraphTask(NamedTuple):
    """G(d, ℓ, N): `degree` arms of `path_length` − 1 nodes each, labels in [0, `num_nodes`)."""

    degree: int
    path_length: int
    num_nodes: int

    @property
    def num_edges(self) -> int:
        return self.degree * (self.path_length - 1)

    def check(self) -> "StarGraphTask":
        """ConfigError (one line) unless d ≥ 2, ℓ ≥ 2 and N ≥ 1 + d(ℓ − 1)."""
        d, ell, n = self
        if d < 2:
            raise ConfigError(f"stargraph.degree: got {d!r}; allowed an integer >= 2")
        if ell < 2:
            raise ConfigError(f"stargraph.path_length: got {ell!r}; allowed an integer >= 2")
        if n < 1 + d * (ell - 1):
            raise ConfigError(f"stargraph.num_nodes: got {n!r}; allowed an integer >= {1 + d * (ell - 1)} "
                              f"(1 + degree*(path_length - 1))")
        return self


class Graphs(NamedTuple):
    """n star graphs: edges [n, E, 2] (parent, child), source [n], goal [n], path [n, ℓ] (s … g)."""

    edges: np.ndarray
    source: np.ndarray
    goal: np.ndarray
    path: np.ndarray

    def __len__(self) -> int:
        return int(self.source.shape[0])

    def take(self, index) -> "Graphs":
        return Graphs(*(x[index] for x in self))


def split_key(seed: int, split: str) -> jax.Array:
    """The key of a split: fold_in(PRNGKey(seed), index of `split` in SPLITS)."""
    if split not in SPLITS:
        raise ConfigError(f"stargraph.split: got {split!r}; allowed one of {', '.join(SPLITS)}")
    return jax.random.fold_in(jax.random.PRNGKey(seed), SPLITS.index(split))


def generate_one(task: StarGraphTask, key: jax.Array) -> Graphs:
    """One graph of G(d, ℓ, N) from `key` (pure JAX: traceable, vmappable; see module docstring)."""
    d, ell, num = task
    k_labels, k_order = jax.random.split(key)
    labels = jax.random.permutation(k_labels, num)[:1 + d * (ell - 1)].astype(jnp.int32)
    source, arms = labels[0], labels[1:].reshape(d, ell - 1)
    parents = jnp.concatenate([jnp.full((d, 1), source), arms[:, :-1]], axis=1)
    edges = jnp.stack([parents, arms], axis=-1).reshape(task.num_edges, 2)
    edges = edges[jax.random.permutation(k_order, task.num_edges)]
    return Graphs(edges=edges, source=source, goal=arms[0, -1], path=jnp.concatenate([source[None], arms[0]]))


def graph_at(task: StarGraphTask, key: jax.Array, index: jax.Array) -> Graphs:
    """Graph `index` of the split whose key is `key`: generate_one(fold_in(key, index))."""
    return generate_one(task, jax.random.fold_in(key, index))


def dataset(task: StarGraphTask, split: str, size: int, seed: int = 0) -> Graphs:
    """The fixed dataset `split` (one of SPLITS) of `size` graphs, numpy: graph i is
    `graph_at(task, split_key(seed, split), i)`, so a dataset is a pure function of its arguments,
    a larger size extends a smaller one, and the env (klrl.stargraph.env) regenerates graph i
    in-graph without storing the set. Splits use independent keys; with N = 50 a graph may recur
    across splits by chance (as in the paper's independently drawn sets)."""
    task.check()
    split_key(seed, split)                      # checks the split name
    # fixed chunk shapes (powers of two up to 2^15), so a few compiles serve every size
    chunk = min(1 << 15, max(64, 1 << max(size - 1, 1).bit_length()))
    make = _generator(task, seed, split)
    with jax.default_device(jax.devices("cpu")[0]):
        parts = [make(jnp.arange(i, i + chunk)) for i in range(0, size, chunk)]
    return Graphs(*(np.concatenate([np.asarray(getattr(p, f)) for p in parts])[:size] if parts else
                    np.zeros((0,), np.int32) for f in Graphs._fields))


@functools.lru_cache(maxsize=None)
def _generator(task: StarGraphTask, seed: int, split: str):
    """The jitted vmapped generator of one split (built once per process)."""
    return jax.jit(jax.vmap(lambda i: graph_at(task, split_key(seed, split), i)))


def path_from_edges(edges: np.ndarray, source: int, goal: int) -> list[int] | None:
    """The path source → goal following the directed edges of ONE graph, or None when there is
    none (a depth-first walk; used to check that a star has exactly one such path)."""
    children: dict[int, list[int]] = {}
    for parent, child in np.asarray(edges).tolist():
        children.setdefault(parent, []).append(child)
    paths = []

    def walk(node, trail):
        if node == goal:
            paths.append(trail)
        for child in children.get(node, []):
            walk(child, trail + [child])

    walk(int(source), [int(source)])
    if len(paths) > 1:
        raise ValueError(f"{len(paths)} paths from {source} to {goal}: not a star")
    return paths[0] if paths else None


__all__ = ["Graphs", "SPLITS", "StarGraphTask", "dataset", "generate_one", "graph_at", "path_from_edges", "split_key"]
