"""Evaluation of a population inside the compiled program: `Evaluator`s and the final evaluation.

An `Evaluator` is three pure functions over an accumulator of per-member sums:
- `init(members, with_kl) -> acc`                 at the start of every chunk,
- `observe(acc, acted, ctx) -> acc`               after every vector step (klrl.acting.Acted),
- `end_of_chunk(acc, params, keys, hp, ctx)`      -> {"eval_return": [M], "kl_ref": [M] (with π_ref)},
plus `test_envs`, the evaluation envs it adds to every member's pool. Two exist:
- `episodes(...)`: at every chunk's end, n fresh in-graph episodes per member, each played to its
  first end or the time limit (gymnax, tabular: backends that reset in-graph);
- `concurrent(...)`: `test_envs` envs per member inside the training pool act with the
  evaluation policy while training runs; the chunk reports the mean return of the test
  episodes that ended in it (any backend; an emulator pool cannot start fresh episodes
  in-graph). Their episodes run across chunk boundaries.
`kl_ref` is the per-step KL(π‖π_ref) of the evaluation policy along the evaluation episodes.

`make_final_eval(...)`: after training, every env of the pool plays a fixed number of episodes.

A chunk with no finished evaluation episode reports NaN (never a made-up 0).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from klrl import actors as act_lib
from klrl import replay as rb
from klrl import rng
from klrl.acting import FORWARD_SALT, first_stack

# The env reset of the final evaluation: a salt no resume (salt = chunks done) ever uses.
FINAL_EVAL_SALT = 2**31 - 1


class Evaluator(NamedTuple):
    test_envs: int
    init: Callable[[int, bool], dict]
    observe: Callable[..., dict]
    end_of_chunk: Callable[..., dict]


def mean_or_nan(total: jax.Array, count: jax.Array) -> jax.Array:
    """total / count where count > 0, else NaN."""
    return jnp.where(count > 0, total / jnp.maximum(count, 1.0), jnp.float32(jnp.nan))


def _act_eval(forward, eval_actor, params, obs, key, hp, ctx):
    """The evaluation actor on [M, n] envs: (actions, ln π), one forward pass."""
    out = forward(params, obs, jax.vmap(rng.fold_in, in_axes=(0, None))(key, FORWARD_SALT))
    return jax.vmap(eval_actor.act, in_axes=(0, 0, None, 0, 0, None, None))(out, obs, (), key, hp, 0, ctx)


def concurrent(test_envs: int, num_envs: int) -> Evaluator:
    """Test envs [E, E + test_envs) of every member's pool, stepped with the training envs."""
    E = num_envs

    def init(members, with_kl):
        z = jnp.zeros((members,), jnp.float32)
        return dict(eval_sum=z, eval_count=z, **(dict(kl_sum=z, kl_count=z) if with_kl else {}))

    def observe(acc, acted, ctx):
        st = jax.tree.map(lambda x: x[:, E:], acted.step)
        new = dict(eval_sum=jnp.sum(jnp.where(st.episode_end, st.episode_return, 0.0), axis=1),
                   eval_count=jnp.sum(st.episode_end, axis=1).astype(jnp.float32))
        if ctx.log_ref is not None:
            kl = act_lib.kl(acted.test_log_probs, ctx.log_ref(acted.obs[:, E:]))
            new.update(kl_sum=jnp.sum(jnp.where(st.valid, kl, 0.0), axis=1),
                       kl_count=jnp.sum(st.valid, axis=1).astype(jnp.float32))
        return jax.tree.map(jnp.add, acc, new)

    def end_of_chunk(acc, params, keys, hp, ctx):
        out = {"eval_return": mean_or_nan(acc["eval_sum"], acc["eval_count"])}
        if ctx.log_ref is not None:
            out["kl_ref"] = mean_or_nan(acc["kl_sum"], acc["kl_count"])
        return out

    return Evaluator(test_envs=test_envs, init=init, observe=observe, end_of_chunk=end_of_chunk)


def episodes(n: int, forward: Callable, eval_actor, make_env: Callable[[int, int], Any], spec) -> Evaluator:
    """`n` fresh in-graph episodes per member at every chunk's end, on `make_env(members, n)`;
    a member's score is the mean return of its n episodes, each played to its first end (or
    the time limit, where it is truncated)."""

    def play(params, key, hp, ctx):
        M = key.shape[0]
        env = make_env(M, n)
        split = jax.vmap(lambda kk: rng.split(kk, n + 1))(key)                         # [M, n+1, 2]
        env_state, frame = env.reset(split[:, 1:])
        obs, _ = first_stack(frame, spec.obs_dtype, spec.frame_stack)

        def cond(c):
            return (c[0] < spec.max_episode_steps) & ~jnp.all(c[3])

        def body(c):
            t, env_state, obs, done, ret, key, kl_sum, kl_n = c
            s = jax.vmap(lambda kk: rng.split(kk, n + 2))(key)
            actions, log_probs = _act_eval(forward, eval_actor, params, obs, s[:, n + 1], hp, ctx)
            env_state, st = env.step(env_state, actions, s[:, 1:n + 1])
            ret = jnp.where(~done & st.done, st.episode_return, ret)
            if ctx.log_ref is not None:
                kl = act_lib.kl(log_probs, ctx.log_ref(obs))
                kl_sum, kl_n = kl_sum + jnp.where(done, 0.0, kl), kl_n + jnp.where(done, 0.0, 1.0)
            obs = rb.push_frame(obs, st.obs, ~st.valid, spec.frame_stack)
            return (t + 1, env_state, obs, done | st.done, ret, s[:, 0], kl_sum, kl_n)

        zeros = jnp.zeros((M, n), jnp.float32)
        init = (jnp.zeros((), jnp.int32), env_state, obs, jnp.zeros((M, n), bool), zeros, split[:, 0], zeros, zeros)
        out = jax.lax.while_loop(cond, body, init)
        # Every episode ends by the time limit (truncated there), so `ret` holds all n returns.
        kl_per_step = jnp.sum(out[6], axis=1) / jnp.maximum(jnp.sum(out[7], axis=1), 1.0)
        return jnp.mean(out[4], axis=1), kl_per_step

    def end_of_chunk(acc, params, keys, hp, ctx):
        eval_return, kl = play(params, keys, hp, ctx)
        return {"eval_return": eval_return, **({"kl_ref": kl} if ctx.log_ref is not None else {})}

    return Evaluator(test_envs=0, init=lambda members, with_kl: {}, observe=lambda acc, acted, ctx: acc,
                     end_of_chunk=end_of_chunk)


def make_final_eval(forward: Callable, eval_actor, env_of: Callable[[int], Any], spec, *, envs: int,
                    episodes: int, in_graph_reset: bool) -> Callable:
    """`final(params, key, hp, ctx, env_start_state) -> (return sum [M], episodes [M])`: every one
    of the `envs` envs per member (freshly reset by `env_start_state`) plays k = ⌈episodes/envs⌉
    episodes at the evaluation policy; a member's score is the mean raw return of its k·envs ≥
    `episodes` episodes. A fixed count per env, not the first n to end, so short episodes are
    not favoured. Episodes end per game (episode_end); each is capped by the env's time limit,
    which bounds the loop."""
    n_per_env = -(-episodes // envs)
    max_steps = n_per_env * (spec.max_episode_steps + 1) + 1

    def final(params, key, hp, ctx, env_start_state):
        M = key.shape[0]
        env = env_of(M)
        env_state, frame = env_start_state
        obs, _ = first_stack(frame, spec.obs_dtype, spec.frame_stack)

        def cond(c):
            return (c[0] < max_steps) & ~jnp.all(c[4] >= n_per_env)

        def body(c):
            t, env_state, obs, ret_sum, count, key = c
            s = jax.vmap(lambda kk: rng.split(kk, 3))(key)
            actions, _ = _act_eval(forward, eval_actor, params, obs, s[:, 1], hp, ctx)
            env_keys = jax.vmap(lambda kk: rng.split(kk, envs))(s[:, 2]) if in_graph_reset else None
            env_state, st = env.step(env_state, actions, env_keys)
            take = st.episode_end & (count < n_per_env)
            ret_sum = ret_sum + jnp.where(take, st.episode_return, 0.0)
            obs = rb.push_frame(obs, st.obs, ~st.valid, spec.frame_stack)
            return (t + 1, env_state, obs, ret_sum, count + take, s[:, 0])

        zeros = jnp.zeros((M, envs), jnp.float32)
        init = (jnp.zeros((), jnp.int32), env_state, obs, zeros, jnp.zeros((M, envs), jnp.int32), key)
        _, _, _, ret_sum, count, _ = jax.lax.while_loop(cond, body, init)
        return jnp.sum(ret_sum, axis=1), jnp.sum(count, axis=1).astype(jnp.float32)

    return final


__all__ = ["FINAL_EVAL_SALT", "Evaluator", "concurrent", "episodes", "make_final_eval", "mean_or_nan"]
