"""Input checks of the targets: one-line `ValueError`s that name the argument.

Shapes are static under `jit`, so the shape checks cost nothing at run time. Action values
are checked when they are concrete (eager calls: a ValueError). Traced actions (under `jit`,
`vmap`, `scan`) cannot raise a Python error; for them an action in [0, A) is a precondition,
checked by `jax.experimental.checkify`: wrapped in `checkify.checkify(fn)`, a program whose
actions leave the range returns an error (`err.throw()` raises "action: a value outside
0..A-1"). Without checkify the check is a no-op that XLA removes; an unchecked out-of-range
action reads NaN (≥ A, a non-finite loss the trainer reports as divergence) or counts from
the end (< 0). Nothing here changes a result.

`trusted_actions()`: a context in which traced actions get no check, for a caller whose actions
are in range by construction. The trainer traces its losses in it (its actions are its own
actor's draws in [0, A), read back from replay). Why: checkify numbers every check from a
process-wide counter and the number stays in the lowered program as a constant, so two
traces of the same trainer in one process (or in two processes that traced other checks
first) were different programs to JAX's persistent compilation cache, and each recompiled.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

_TRUSTED = contextvars.ContextVar("klrl_trusted_actions", default=False)


@contextlib.contextmanager
def trusted_actions():
    """Within: traced actions are taken to be in [0, A) and get no checkify check (concrete
    ones are still checked). For callers whose actions are in range by construction; it keeps
    their lowered program free of checkify's process-wide check numbers (module docstring).
    It acts at trace time: a jitted function traced inside keeps no check when jit reuses that
    trace outside."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def _shape(x) -> tuple[int, ...]:
    return tuple(np.shape(x))


def check_transition(reward, discount, **q_arrays) -> None:
    """`reward` and `discount` share one shape [...]; each q-array is [..., A] over it.

    Args:
      reward: rewards [...], float.
      discount: γ·(1 − terminated) [...], the shape of `reward`. A scalar is refused when
        `reward` is batched: it would bootstrap through terminal states.
      **q_arrays: name -> q-array [..., A] (the name is used in the error message).

    Raises:
      ValueError: naming the first argument whose shape does not fit.
    """
    lead = _shape(reward)
    if _shape(discount) != lead:
        raise ValueError(
            f"discount: shape {_shape(discount)} does not match reward's {lead}; pass an array "
            f"gamma * (1 - terminated) shaped like reward (jnp.full_like(reward, gamma) if nothing terminates)")
    for name, q in q_arrays.items():
        if _shape(q)[:-1] != lead or len(_shape(q)) != len(lead) + 1:
            raise ValueError(
                f"{name}: shape {_shape(q)} must be reward's shape {lead} plus an action axis [..., A]")


def check_action(action, num_actions: int, lead: tuple[int, ...]) -> None:
    """`action` is an integer array of shape `lead`, with values in [0, num_actions).

    Raises:
      ValueError: on a wrong shape or dtype, or (concrete actions) an out-of-range action.
        A traced action's range is a `checkify.debug_check` (see the module docstring), left
        out inside `trusted_actions()`.
    """
    if _shape(action) != tuple(lead):
        raise ValueError(f"action: shape {_shape(action)} does not match the leading shape {tuple(lead)}")
    dtype = np.dtype(action.dtype) if hasattr(action, "dtype") else np.result_type(action)
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(f"action: dtype {dtype}; allowed an integer array")
    if np.size(action) == 0:
        return
    if isinstance(action, jax.core.Tracer):
        if _TRUSTED.get():
            return
        checkify.debug_check(jnp.all((action >= 0) & (action < num_actions)),
                             f"action: a value outside 0..{num_actions - 1}")
        return
    values = np.asarray(action)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= num_actions:
        raise ValueError(f"action: values in [{low}, {high}]; allowed 0..{num_actions - 1}")
