"""Where a population's minibatches come from: the run's replay, or what the agent's actor records.

`make_data(...)` returns `Data(init, add, sample, shared_batch)`:
- the replay (klrl.replay; frame or transition store, `per-member` or `shared`): every vector
  step writes the training envs' transitions; per-member mode samples each member's own buffer
  with its own key, shared mode samples ONE batch from one population stream, so every member
  sees the same data;
- an agent's own data (`AgentSpec.data`, e.g. Q♯'s rollout labels, kept in the actor's carry):
  nothing is written, each member samples its own carry.
Every member also gets a per-update key for its loss (`loss_keys`), drawn from its own
sampling stream, so agents that sample inside the loss (IQN's quantile fractions) never share
noise between members.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax

from klrl import replay as rb
from klrl import rng

# Salt of the loss key inside a member's sampling key (a fold_in: the sampling streams are unchanged).
LOSS_SALT = 0x6C6F7373


class Data(NamedTuple):
    init: Callable[[int], Any]
    add: Callable[[Any, Any], Any]
    sample: Callable[..., tuple]
    shared_batch: bool        # one batch for all members (the update's batch is not vmapped)


def newest_frame(stack: jax.Array, frame_channels: int, frame_stack: int) -> jax.Array:
    """The last frame of an acting stack [..., C·k] (the stack itself when k = 1)."""
    return stack[..., stack.shape[-1] - frame_channels:] if frame_stack > 1 else stack


def _loss_keys(keys: jax.Array) -> jax.Array:
    return jax.vmap(rng.fold_in, in_axes=(0, None))(keys, LOSS_SALT)


def make_data(cfg, spec, own_data: Callable | None) -> Data:
    """The data source of `cfg` ([train] replay keys) on env `spec`; `own_data` is the agent's
    sampler `(actor_carry, key, batch_size) -> batch`, or None for the replay."""
    E, B, k = cfg.env.num_envs, cfg.train.batch_size, spec.frame_stack
    shared = cfg.train.replay_mode == "shared"

    @functools.lru_cache(maxsize=None)
    def store_for(members: int):
        """The replay store for a population of `members` (shared mode sizes its columns by M)."""
        return rb.make_replay(cfg.train.replay_store, obs_shape=spec.obs_shape, obs_dtype=spec.obs_dtype,
                              frame_stack=k, members=members, envs=E, capacity=cfg.train.buffer_size,
                              mode=cfg.train.replay_mode)

    if own_data is not None:
        def sample_own(replay, sample_keys, shared_key, carry):
            split = jax.vmap(rng.split)(sample_keys)
            batch = jax.vmap(own_data, in_axes=(0, 0, None))(carry, split[:, 1], B)
            return batch, split[:, 0], shared_key, _loss_keys(split[:, 1])

        return Data(init=lambda members: (), add=lambda replay, acted: replay, sample=sample_own,
                    shared_batch=False)

    def add(replay, acted):
        frames = newest_frame(acted.obs[:, :E], spec.obs_shape[-1], k)
        st = jax.tree.map(lambda x: x[:, :E], acted.step)
        return store_for(acted.actions.shape[0]).add(replay, frames, acted.first[:, :E], acted.actions, st)

    def sample(replay, sample_keys, shared_key, carry):
        store = store_for(sample_keys.shape[0])
        split = jax.vmap(rng.split)(sample_keys)
        if shared:
            shared_key, sub = rng.split(shared_key)
            batch, _ = store.sample(replay, sub, B)
        else:
            batch, _ = store.sample(replay, split[:, 1], B)
        return batch, split[:, 0], shared_key, _loss_keys(split[:, 1])

    return Data(init=lambda members: store_for(members).init(), add=add, sample=sample, shared_batch=shared)


__all__ = ["LOSS_SALT", "Data", "make_data", "newest_frame"]
