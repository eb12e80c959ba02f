"""klrl.networks: the torsos' shapes, and `conv = "patches"` (im2col + matmul) computing the
same layer as flax's convolution with the same parameters (outputs and gradients to float32
rounding, at the input scale of real runs: uint8 frames scaled by 1/255)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl.networks import make_network


@pytest.mark.parametrize("torso, shape, channels", [("nature_cnn", (84, 84), 4), ("minatar_cnn", (10, 10), 6)])
def test_patches_equal_lax_convolution(torso, shape, channels):
    obs = jax.random.randint(jax.random.PRNGKey(1), (5, *shape, channels), 0, 256).astype(jnp.uint8)
    lax_net = make_network(torso, (32,), 6, obs_scale=1 / 255)
    patch_net = make_network(torso, (32,), 6, obs_scale=1 / 255, conv="patches")
    # jitted: one compile per function instead of one per eager op (test time)
    params = jax.jit(lax_net.init)(jax.random.PRNGKey(0), obs[0])
    # the same parameter tree: a checkpoint of one loads into the other
    other = jax.eval_shape(patch_net.init, jax.random.PRNGKey(0), obs[0])
    assert jax.tree.structure(params) == jax.tree.structure(other)
    assert [x.shape for x in jax.tree.leaves(params)] == [x.shape for x in jax.tree.leaves(other)]
    q_lax, q_patch = jax.jit(lax_net.apply)(params, obs), jax.jit(patch_net.apply)(params, obs)
    assert q_lax.shape == (5, 6)
    np.testing.assert_allclose(q_patch, q_lax, rtol=1e-5, atol=1e-6)
    # auto (the config's default) is patches on CPU (klrl.placement), the same program
    assert jax.default_backend() == "cpu"
    np.testing.assert_array_equal(jax.jit(make_network(torso, (32,), 6, obs_scale=1 / 255, conv="auto").apply)(
        params, obs), q_patch)
    loss = lambda net: lambda p: jnp.sum(net.apply(p, obs) ** 2)  # noqa: E731
    g_lax, g_patch = jax.jit(jax.grad(loss(lax_net)))(params), jax.jit(jax.grad(loss(patch_net)))(params)
    for a, b in zip(jax.tree.leaves(g_lax), jax.tree.leaves(g_patch)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(a))))


def test_torso_and_conv_are_checked():
    with pytest.raises(ValueError, match="conv: got 'fft'; allowed auto, lax, patches"):
        make_network("nature_cnn", (512,), 4, conv="fft")
    with pytest.raises(ValueError, match="torso: got 'resnet'"):
        make_network("resnet", (512,), 4)
