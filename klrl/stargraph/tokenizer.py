"""The numeral tokenizer of the star-graph task (one token per node label and per separator, as
in Bachmann & Nagarajan 2024), and the task's text form.

Tokens: node labels 0 … N − 1 are themselves; SEP = N ends the edge list, EQ = N + 1 ends the
prompt, PAD = N + 2 fills the unwritten part of a fixed-length sequence (vocabulary N + 3).

    prompt = p₁ c₁ p₂ c₂ … p_E c_E SEP s g EQ      (2E + 4 tokens)
    target = s n₁ … g                              (ℓ tokens)

The text form is the paper's line `p₁,c₁|p₂,c₂|…/s,g=s,n₁,…,g`. Both forms round-trip
(`encode`/`decode`, `to_text`/`from_text`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from klrl.stargraph.graphs import Graphs, StarGraphTask


class Vocabulary(NamedTuple):
    """Token ids of a task with N node labels."""

    num_nodes: int

    @property
    def sep(self) -> int:
        return self.num_nodes

    @property
    def eq(self) -> int:
        return self.num_nodes + 1

    @property
    def pad(self) -> int:
        return self.num_nodes + 2

    @property
    def size(self) -> int:
        return self.num_nodes + 3


def prompt_length(task: StarGraphTask) -> int:
    """2E + 4 prompt tokens."""
    return 2 * task.num_edges + 4


def sequence_length(task: StarGraphTask) -> int:
    """The full sequence: prompt + ℓ target tokens."""
    return prompt_length(task) + task.path_length


def encode(task: StarGraphTask, graphs: Graphs) -> np.ndarray:
    """int32 [n, 2E + 4 + ℓ]: prompt then target of every graph."""
    voc = Vocabulary(task.num_nodes)
    n = len(graphs)
    col = lambda v: np.full((n, 1), v, np.int32)  # noqa: E731
    return np.concatenate([graphs.edges.reshape(n, -1), col(voc.sep), graphs.source[:, None],
                           graphs.goal[:, None], col(voc.eq), graphs.path], axis=1).astype(np.int32)


def decode(task: StarGraphTask, tokens: np.ndarray) -> Graphs:
    """The inverse of `encode` (tokens [n, 2E + 4 + ℓ]); ValueError on a malformed sequence."""
    tokens = np.asarray(tokens)
    voc, E, P = Vocabulary(task.num_nodes), task.num_edges, prompt_length(task)
    if tokens.shape[-1] != sequence_length(task) or np.any(tokens[:, 2 * E] != voc.sep) \
            or np.any(tokens[:, P - 1] != voc.eq):
        raise ValueError("not a star-graph token sequence of this task")
    return Graphs(edges=tokens[:, :2 * E].reshape(-1, E, 2).astype(np.int32), source=tokens[:, 2 * E + 1].copy(),
                  goal=tokens[:, 2 * E + 2].copy(), path=tokens[:, P:].astype(np.int32))


def to_text(graphs: Graphs) -> list[str]:
    """The paper's text lines `p,c|p,c|…/s,g=s,…,g`."""
    lines = []
    for e, s, g, path in zip(graphs.edges.tolist(), graphs.source.tolist(), graphs.goal.tolist(),
                             graphs.path.tolist()):
        lines.append("|".join(f"{p},{c}" for p, c in e) + f"/{s},{g}=" + ",".join(map(str, path)))
    return lines


def from_text(lines: list[str]) -> Graphs:
    """The inverse of `to_text`."""
    edges, source, goal, path = [], [], [], []
    for line in lines:
        graph, rest = line.split("/")
        query, target = rest.split("=")
        edges.append([[int(v) for v in pair.split(",")] for pair in graph.split("|")])
        s, g = (int(v) for v in query.split(","))
        source.append(s)
        goal.append(g)
        path.append([int(v) for v in target.split(",")])
    as32 = lambda x: np.asarray(x, np.int32)  # noqa: E731
    return Graphs(as32(edges), as32(source), as32(goal), as32(path))


__all__ = ["Vocabulary", "decode", "encode", "from_text", "prompt_length", "sequence_length", "to_text"]
