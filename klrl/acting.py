"""Acting: one vector step of a population's environments — act, env step, observe, frame push.

`make_acting(...)` returns `Acting(init, step, reenter)` over ONE backend instance holding, per
member, E training envs followed by `test_envs` evaluation envs (concurrent evaluation; 0
otherwise). Training envs act with the training actor (klrl.actors), test envs with the
evaluation actor; both read ONE forward pass of the network over all E + test envs.

The acting stack: an observation is the last k frames (k = the spec's frame_stack, 1 for
vector observations), zero-padded at an episode start (`push`). `ActorState.first` marks
observations that start an episode; the replay needs it to cut stacks at episode boundaries.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from klrl import replay as rb
from klrl import rng
from klrl.envs.base import EnvStep

# Salt of the network's forward key inside an acting key (agents whose forward pass samples,
# e.g. IQN's quantile fractions); a fold_in, so the acting streams themselves are unchanged.
FORWARD_SALT = 0x666F7277


class ActorState(NamedTuple):
    """What acting needs between steps, for all [M, E + test] envs."""

    obs: jax.Array            # [M, E', *stacked]: the (frame-stacked) observation to act on
    first: jax.Array          # bool [M, E']: obs is the first of an episode (zero-padded stack)
    carry: Any                # the training actor's per-member carry (train envs only)
    key: jax.Array            # [M, 2] acting + env-step stream


class Acted(NamedTuple):
    """One vector step, as the replay and the evaluators see it."""

    obs: jax.Array            # [M, E', *stacked] the observations acted on
    first: jax.Array          # bool [M, E']
    actions: jax.Array        # int32 [M, E] the training envs' actions
    step: EnvStep             # fields [M, E']: what the env returned (train envs first)
    test_log_probs: Any       # [M, test, A] ln π of the evaluation actor on the test envs, or None


class Acting(NamedTuple):
    init: Callable[..., ActorState]
    step: Callable[..., tuple[ActorState, Any, Acted]]
    reenter: Callable[[ActorState, jax.Array], ActorState]


def first_stack(frame: jax.Array, dtype, frame_stack: int) -> tuple[jax.Array, jax.Array]:
    """(obs, first) for [M, E'] envs that all start an episode with `frame` [M, E', *obs_shape]."""
    lead = frame.shape[:2]
    first = jnp.ones(lead, bool)
    stack = rb.init_stack(frame.shape[2:], dtype, frame_stack, lead)
    return rb.push_frame(stack, frame, first, frame_stack), first


def make_acting(forward: Callable, actor, eval_actor, env_of: Callable[[int], Any], *, num_envs: int, test_envs: int,
                frame_stack: int, in_graph_reset: bool) -> Acting:
    """Acting over the backend instance `env_of(members)` (klrl.envs.base.Env).

    `forward(params [M], obs [M, E', ...], key [M]) -> out [M, E', ...]` is the network as
    actors read it; `actor` / `eval_actor` are klrl.actors.Actor (vmapped over members here).
    """
    E, E_all = num_envs, num_envs + test_envs

    def init(frame, carry_keys, act_keys, dtype) -> ActorState:
        """Every env at its first observation `frame` [M, E', *obs_shape]; stacks of `dtype`."""
        obs, first = first_stack(frame, dtype, frame_stack)
        carry = jax.vmap(actor.init, in_axes=(0, None))(carry_keys, E)
        return ActorState(obs=obs, first=first, carry=carry, key=act_keys)

    def step(a: ActorState, env_state, params, hp: dict, env_steps, ctx):
        M = a.key.shape[0]
        split = jax.vmap(lambda kk: rng.split(kk, 5))(a.key)                            # [M, 5, 2]
        new_key, k_act, k_test, k_env, k_obs = (split[:, i] for i in range(5))
        fwd_key = jax.vmap(rng.fold_in, in_axes=(0, None))(k_act, FORWARD_SALT)
        out = forward(params, a.obs, fwd_key)                                           # one forward, all envs
        actions, _ = jax.vmap(actor.act, in_axes=(0, 0, 0, 0, 0, None, None))(
            out[:, :E], a.obs[:, :E], a.carry, k_act, hp, env_steps, ctx)
        test_log_probs, actions_all = None, actions
        if test_envs:
            test_actions, test_log_probs = jax.vmap(eval_actor.act, in_axes=(0, 0, None, 0, 0, None, None))(
                out[:, E:], a.obs[:, E:], (), k_test, hp, env_steps, ctx)
            actions_all = jnp.concatenate([actions, test_actions], axis=1)
        env_keys = jax.vmap(lambda kk: rng.split(kk, E_all))(k_env) if in_graph_reset else None
        env_state, st = env_of(M).step(env_state, actions_all, env_keys)
        st_train = jax.tree.map(lambda x: x[:, :E], st)
        carry = jax.vmap(actor.observe)(a.carry, a.obs[:, :E], actions, st_train, k_obs)
        first = ~st.valid
        new = ActorState(obs=rb.push_frame(a.obs, st.obs, first, frame_stack), first=first, carry=carry, key=new_key)
        return new, env_state, Acted(obs=a.obs, first=a.first, actions=actions, step=st,
                                     test_log_probs=test_log_probs)

    def reenter(a: ActorState, frame) -> ActorState:
        """Continue on freshly reset envs (a resumed host pool): every env starts an episode, so
        the stacks restart; the actor key advances so restarted episodes draw fresh randomness."""
        obs, first = first_stack(frame, a.obs.dtype, frame_stack)
        split = jax.vmap(rng.split)(a.key)
        carry = jax.vmap(actor.restart)(a.carry, split[:, 1])
        return a._replace(obs=obs, first=first, carry=carry, key=split[:, 0])

    return Acting(init=init, step=step, reenter=reenter)


__all__ = ["FORWARD_SALT", "Acted", "Acting", "ActorState", "first_stack", "make_acting"]
