"""Train state, the partitioned train and eval steps.

One jit-compiled step over a (`data`, `model`) mesh: parameter, optimiser-state and
batch shardings all come from the logical-axis rules (partitioning.py), so data
parallel, FSDP and tensor parallel are the same code. The state is donated, master
weights stay float32 while the model computes in its `dtype`, gradients accumulate
over microbatches with loss normalisers taken from the whole batch (so the result is
the full batch's gradient, not an average of microbatch means), and a step whose loss
or gradients are not finite leaves the state untouched and says so.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax
import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dss_jax import losses, optimizers, partitioning
from dss_jax.model import interface


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates applied so far
    params: Any
    opt_state: Any


# Random bit generators for dropout masks (`train.dropout_rng`). "threefry" is JAX's
# default: counter-based, the same bits under any sharding. "rbg"/"unsafe_rbg" use XLA's
# RngBitGenerator with its default algorithm, which TPUs run in hardware (T5X's choice
# there) and XLA:CPU runs as Philox. "xla_threefry" is rbg's key handling with
# RngBitGenerator's ThreeFry algorithm: on CPU the cheapest by far (measured, 2 cores:
# ~3.1 ns per mask value against ~10.5 for threefry, rbg and unsafe_rbg), so it is the
# choice for CPU training; like rbg, its bits depend on the sharding. Every choice is a
# function of (seed, step), so a resumed run draws the same masks.
DROPOUT_RNGS = ("threefry", "rbg", "unsafe_rbg", "xla_threefry")
_UINTS = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint64}


def _xla_threefry_bits(key: jax.Array, bit_width: int, shape: tuple[int, ...]) -> jax.Array:
    _, bits = jax.lax.rng_bit_generator(
        key, shape, dtype=_UINTS[bit_width], algorithm=jax.lax.RandomAlgorithm.RNG_THREE_FRY
    )
    return bits


_RBG = jax.extend.random.rbg_prng_impl
XLA_THREEFRY = jax.extend.random.define_prng_impl(
    key_shape=_RBG.key_shape,
    seed=_RBG.seed,
    split=_RBG.split,
    fold_in=_RBG.fold_in,
    random_bits=_xla_threefry_bits,
    name="xla_threefry",
    tag="xtf",
)


def dropout_key(seed: int, dropout_rng: str) -> jax.Array:
    """The typed base key of the dropout masks for one `train.dropout_rng` choice."""
    if dropout_rng not in DROPOUT_RNGS:
        raise ValueError(f"dropout_rng must be one of {DROPOUT_RNGS}, got {dropout_rng!r}")
    impl = {"threefry": "threefry2x32", "xla_threefry": XLA_THREEFRY}.get(dropout_rng, dropout_rng)
    return jax.random.key(seed, impl=impl)


class Trainer:
    """Owns the mesh, the shardings and the compiled steps for one model + optimiser."""

    def __init__(
        self,
        model: interface.StudentModel,
        *,
        loss_config: losses.LossConfig,
        optimizer_config: optimizers.OptimizerConfig,
        total_steps: int,
        partition_config: partitioning.PartitionConfig = partitioning.PartitionConfig(),
        num_microbatches: int = 1,
        seed: int = 0,
        mesh: jax.sharding.Mesh | None = None,
        dropout_rng: str = "threefry",
    ):
        interface.check_student(model, "Trainer")
        self._dropout_key = dropout_key(seed + 1, dropout_rng)
        self.model = model
        self.loss_config = loss_config
        self.num_microbatches = num_microbatches
        self.mesh = mesh if mesh is not None else partitioning.make_mesh(partition_config.num_partitions)
        self.rules = partition_config.logical_rules()
        self.tx, self.schedule = optimizers.make_optimizer(optimizer_config, total_steps)
        self._init_key = jax.random.PRNGKey(seed)
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = partitioning.batch_sharding(self.mesh)

        with self.context():
            boxed = jax.eval_shape(self.model.init_variables, self._init_key)
            self.params_sharding = partitioning.params_shardings(boxed["params"], self.mesh, self.rules)
            self.abstract_params = partitioning.strip_boxes(boxed["params"])
            abstract_opt = jax.eval_shape(self.tx.init, self.abstract_params)
            opt_sharding = partitioning.derived_shardings(
                abstract_opt, self.abstract_params, self.params_sharding, self.mesh
            )
        self.state_sharding = TrainState(step=self.replicated, params=self.params_sharding, opt_state=opt_sharding)
        self.abstract_state = jax.tree_util.tree_map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=self.abstract_params, opt_state=abstract_opt),
            self.state_sharding,
        )
        self._train_step = None
        self._eval_step = None

    # -- set-up ---------------------------------------------------------------------

    def context(self):
        """Mesh + logical rules, needed while tracing the model (activation constraints)."""
        return _Context(self.mesh, self.rules)

    def init_state(self) -> TrainState:
        """A freshly initialised, sharded state (each device creates only its shards)."""

        def init(key):
            params = nn.meta.unbox(self.model.init_variables(key)["params"])
            return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params))

        with self.context():
            return jax.jit(init, out_shardings=self.state_sharding)(self._init_key)

    def state_from_params(self, params: Any) -> TrainState:
        """A step-0 state from given (host) parameters, e.g. an imported HF checkpoint."""
        expected = jax.tree_util.tree_structure(self.abstract_params)
        got = jax.tree_util.tree_structure(params)
        if expected != got:
            raise ValueError(
                "the initial checkpoint's parameters do not match the model config; "
                f"expected tree {expected}, got {got}"
            )

        def check(path, a, p):
            if tuple(a.shape) != tuple(np.shape(p)):
                raise ValueError(
                    f"initial checkpoint parameter {jax.tree_util.keystr(path)} has shape {np.shape(p)}, "
                    f"the model config expects {a.shape}"
                )
            return jnp.asarray(p, a.dtype)

        params = jax.tree_util.tree_map_with_path(check, self.abstract_params, params)
        params = jax.device_put(params, self.params_sharding)
        with self.context():
            opt_state = jax.jit(self.tx.init, out_shardings=self.state_sharding.opt_state)(params)
        return TrainState(
            step=jax.device_put(jnp.zeros((), jnp.int32), self.replicated), params=params, opt_state=opt_state
        )

    # -- steps ----------------------------------------------------------------------

    def _loss_fn(self, params, batch, dropout_key, normalizers, enable_dropout):
        logits = self.model.logits(params, batch, enable_dropout=enable_dropout, dropout_rng=dropout_key)
        return losses.dss_loss(logits, batch, self.loss_config, normalizers)

    def _train_step_impl(self, state: TrainState, batch: dict[str, jax.Array]):
        key = jax.random.fold_in(self._dropout_key, state.step)
        normalizers = losses.loss_normalizers(batch, self.loss_config)
        grad_fn = jax.value_and_grad(self._loss_fn, has_aux=True)
        m = self.num_microbatches
        if m == 1:
            (loss, metrics), grads = grad_fn(state.params, batch, key, normalizers, True)
        else:
            micro = jax.tree_util.tree_map(lambda x: _split_microbatches(x, m), batch)

            def body(carry, xs):
                mb, i = xs
                mb = jax.lax.with_sharding_constraint(mb, jax.tree_util.tree_map(lambda _: self.batch_sharding, mb))
                (_, mets), g = grad_fn(state.params, mb, jax.random.fold_in(key, i), normalizers, True)
                return jax.tree_util.tree_map(jnp.add, carry, (g, mets)), None

            zero_grads = jax.tree_util.tree_map(jnp.zeros_like, state.params)
            zero_mets = jax.eval_shape(
                lambda: grad_fn(state.params, jax.tree_util.tree_map(lambda x: x[0], micro), key, normalizers, True)[0][
                    1
                ]
            )
            zero_mets = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), zero_mets)
            (grads, metrics), _ = jax.lax.scan(body, (zero_grads, zero_mets), (micro, jnp.arange(m)))
            loss = metrics["loss"]
        grad_norm = optax.tree.norm(grads)
        updates, new_opt_state = self.tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jnp.where(finite, new, old)
        new_state = TrainState(
            step=state.step + finite.astype(jnp.int32),
            params=jax.tree_util.tree_map(keep, new_params, state.params),
            opt_state=jax.tree_util.tree_map(keep, new_opt_state, state.opt_state),
        )
        metrics = dict(metrics)
        metrics["grad_norm"] = grad_norm
        metrics["learning_rate"] = jnp.asarray(self.schedule(state.step), jnp.float32)
        metrics["nonfinite"] = jnp.logical_not(finite)
        metrics.update(self.model.token_counts(batch))
        return new_state, metrics

    def jitted_train_step(self):
        """The jit-wrapped train step (state donated), not yet compiled.

        Ahead-of-time use (dss_jax.aot): inside `self.context()`,
        `.lower(self.abstract_state, abstract_batch).compile()` compiles it for the
        mesh without allocating the state.
        """
        if self._train_step is None:
            self._train_step = jax.jit(
                self._train_step_impl,
                in_shardings=(self.state_sharding, self.batch_sharding),
                out_shardings=(self.state_sharding, self.replicated),
                donate_argnums=(0,),
            )
        return self._train_step

    def train_step(self, state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict]:
        step = self.jitted_train_step()
        with self.context():
            return step(state, dict(batch))

    def compiled_train_step(self, state: TrainState, batch: Mapping[str, jax.Array]) -> jax.stages.Compiled:
        """The step compiled ahead of time for these shapes: its `cost_analysis()` and
        `memory_analysis()` (benchmarks, capacity planning); nothing is run or donated."""
        step = self.jitted_train_step()
        with self.context():
            return step.lower(state, dict(batch)).compile()

    def _eval_step_impl(self, params, batch):
        logits = self.model.logits(params, batch, enable_dropout=False)
        _, metrics = losses.dss_loss(logits, batch, self.loss_config)
        metrics.update(self.model.token_counts(batch))
        return metrics

    def eval_step(self, params: Any, batch: Mapping[str, jax.Array]) -> dict:
        """Teacher-forced loss and token accuracy per task (sums; see losses.finalize_metrics)."""
        if self._eval_step is None:
            self._eval_step = jax.jit(
                self._eval_step_impl,
                in_shardings=(self.params_sharding, self.batch_sharding),
                out_shardings=self.replicated,
            )
        with self.context():
            return self._eval_step(params, dict(batch))

    def global_batch(self, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        return partitioning.global_batch_from_local(local_batch, self.mesh)


def _split_microbatches(x: jax.Array, m: int) -> jax.Array:
    """[batch, ...] -> [m, batch/m, ...], microbatch i = rows i, i+m, ... so that every
    microbatch is spread over all data-parallel devices (rows are sharded in blocks)."""
    if x.shape[0] % m:
        raise ValueError(f"batch size {x.shape[0]} is not divisible by num_microbatches={m}")
    return jnp.swapaxes(x.reshape((x.shape[0] // m, m) + x.shape[1:]), 0, 1)


class _Context:
    def __init__(self, mesh, rules):
        self.mesh, self.rules = mesh, rules

    def __enter__(self):
        self._mesh_cm = jax.set_mesh(self.mesh)
        self._rules_cm = nn.logical_axis_rules(list(self.rules))
        self._mesh_cm.__enter__()
        self._rules_cm.__enter__()
        return self

    def __exit__(self, *exc):
        self._rules_cm.__exit__(*exc)
        self._mesh_cm.__exit__(*exc)
