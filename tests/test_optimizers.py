"""Optimiser presets: Adafactor's factored statistics and the schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dss_jax import optimizers
from dss_jax.configurables import build_model
from dss_jax.model.config import T5Config


def _state_bytes(state) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state) if hasattr(x, "size"))


def test_adafactor_state_of_xxl_is_factored():
    # T5-XXL (d_kv 64): every kernel, attention's [embed, heads, kv] included, keeps only
    # row and column statistics; unfactored attention kernels alone were 18 GiB.
    config = T5Config.preset("xxl", "t5.1.1")
    params = build_model(config).abstract_params()
    opt, _ = optimizers.make_optimizer(optimizers.OptimizerConfig(name="adafactor"), total_steps=10)
    state = jax.eval_shape(opt.init, params)
    assert _state_bytes(state) < 0.002 * _state_bytes(params), (_state_bytes(state), _state_bytes(params))


@pytest.mark.parametrize("shape,matrix", [((256, 4, 64), (256, 256)), ((2, 64, 128), (128, 128))])
def test_3d_kernels_are_updated_as_matrices(shape, matrix):
    rng = np.random.default_rng(0)
    param = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    grads = [jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(3)]
    wrapped, _ = optimizers.make_optimizer(optimizers.OptimizerConfig(name="adafactor"), total_steps=10)
    plain = optax.adafactor(
        learning_rate=1e-3, decay_rate=0.8, clipping_threshold=1.0, multiply_by_parameter_scale=True, momentum=None
    )
    tree = {"kernel": param}
    s_wrapped, s_plain = wrapped.init(tree), plain.init({"kernel": param.reshape(matrix)})
    for g in grads:
        u_wrapped, s_wrapped = wrapped.update({"kernel": g}, s_wrapped, tree)
        u_plain, s_plain = plain.update({"kernel": g.reshape(matrix)}, s_plain, {"kernel": param.reshape(matrix)})
        assert u_wrapped["kernel"].shape == shape
        np.testing.assert_allclose(u_wrapped["kernel"], u_plain["kernel"].reshape(shape), rtol=1e-6, atol=1e-9)
    factored = [x for x in jax.tree_util.tree_leaves(s_wrapped) if x.ndim == 1]
    assert sorted(x.shape[0] for x in factored if x.shape[0] > 1) == sorted(matrix)


def test_unknown_optimizer_and_schedule_are_rejected():
    with pytest.raises(ValueError, match="'adafactor' or 'adamw'"):
        optimizers.OptimizerConfig(name="sgd")
    with pytest.raises(ValueError, match="schedule must be one of"):
        optimizers.OptimizerConfig(schedule="exp")
