"""The star-graph task G(d, ℓ, N) (Bachmann & Nagarajan 2024, "The pitfalls of next-token
prediction"; the testbed of Q♯, Zhou et al. 2025, §3.1).

A graph is a star: a source s with d arms, each a chain of ℓ − 1 distinct nodes, so 1 + d(ℓ − 1)
distinct labels drawn from {0, …, N − 1}. The goal g is the last node of one arm; the unique
path from s to g is s followed by that arm (ℓ nodes). The E = d(ℓ − 1) directed (parent, child)
edges are shuffled per graph, so nothing but the edges says which arm leads to g.

Generation (vectorized over n graphs, numpy): a random permutation of the N labels per graph; its
first label is s, the next d blocks of ℓ − 1 labels are the arms, block 0 is the goal's arm (the
edge shuffle hides which one it is). Every draw comes from `numpy.random.default_rng` seeded by
(seed, split), so a dataset is a pure function of (task, seed, split, size).
"""

from __future__ import annotations

from typing import NamedTuple

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


def generate(task: StarGraphTask, n: int, rng: np.random.Generator) -> Graphs:
    """n independent graphs of G(d, ℓ, N) drawn with `rng` (see the module docstring)."""
    d, ell, num = task.check()
    used = 1 + d * (ell - 1)
    labels = np.argsort(rng.random((n, num)), axis=1)[:, :used].astype(np.int32)
    source = labels[:, 0]
    arms = labels[:, 1:].reshape(n, d, ell - 1)
    parents = np.concatenate([np.broadcast_to(source[:, None, None], (n, d, 1)), arms[:, :, :-1]], axis=2)
    edges = np.stack([parents, arms], axis=-1).reshape(n, task.num_edges, 2)
    order = np.argsort(rng.random((n, task.num_edges)), axis=1)
    edges = np.take_along_axis(edges, order[:, :, None], axis=1)
    path = np.concatenate([source[:, None], arms[:, 0]], axis=1)
    return Graphs(edges=np.ascontiguousarray(edges), source=source, goal=arms[:, 0, -1].copy(), path=path)


def dataset(task: StarGraphTask, split: str, size: int, seed: int = 0) -> Graphs:
    """The fixed dataset `split` (one of SPLITS) of `size` graphs: a pure function of its arguments.
    The splits use independent streams; with N = 50 a graph may recur across splits by chance
    (as in the paper's independently drawn sets)."""
    if split not in SPLITS:
        raise ConfigError(f"stargraph.split: got {split!r}; allowed one of {', '.join(SPLITS)}")
    return generate(task, size, np.random.default_rng([seed, SPLITS.index(split)]))


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


__all__ = ["Graphs", "SPLITS", "StarGraphTask", "dataset", "generate", "path_from_edges"]
