"""Optimisers and learning-rate schedules (optax), chosen in gin.

Two presets cover the two lineages users come from:

- `adafactor`: T5X's finetuning defaults (constant 1e-3, decay rate 0.8, update
  clipping at 1.0, parameter-scale-relative steps, no momentum).
- `adamw`: the reference implementation's Hugging Face defaults (5e-5, betas 0.9/0.999,
  eps 1e-8, no weight decay; linear decay to 0 over the run).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import optax

import gin
from dss_jax import settings

SCHEDULES = ("constant", "linear", "cosine", "rsqrt")


# The rule for every OptimizerConfig field (a message fragment when broken, else None).
SETTINGS: dict[str, settings.Rule] = {
    "name": settings.one_of(("adafactor", "adamw")),
    "learning_rate": settings.optional(settings.number(0, open_low=True)),  # None: the preset's
    "schedule": settings.optional(settings.one_of(SCHEDULES)),
    "warmup_steps": settings.nonnegative_int,
    "decay_steps": settings.optional(settings.positive_int),
    "end_learning_rate_fraction": settings.number(0, 1),
    "weight_decay": settings.number(0),
    "b1": settings.number(0, 1, open_high=True),
    "b2": settings.number(0, 1, open_high=True),
    "eps": settings.number(0, open_low=True),
    "adafactor_decay_rate": settings.number(0, 1),
    "adafactor_clipping_threshold": settings.optional(settings.number(0, open_low=True)),
    "clip_grad_norm": settings.optional(settings.number(0, open_low=True)),
}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adafactor"  # "adafactor" | "adamw"
    learning_rate: Optional[float] = None  # None: the preset's (1e-3 adafactor, 5e-5 adamw)
    schedule: Optional[str] = None  # None: constant (adafactor) / linear (adamw)
    warmup_steps: int = 0
    decay_steps: Optional[int] = None  # None: the run's TRAIN_STEPS
    end_learning_rate_fraction: float = 0.0  # linear/cosine decay to this fraction of the peak
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    adafactor_decay_rate: float = 0.8
    adafactor_clipping_threshold: Optional[float] = 1.0
    clip_grad_norm: Optional[float] = None  # global-norm gradient clipping before the update

    def __post_init__(self):
        settings.check(
            {f"OptimizerConfig.{f.name}": getattr(self, f.name) for f in dataclasses.fields(self)},
            {f"OptimizerConfig.{k}": rule for k, rule in SETTINGS.items()},
        )

    @property
    def peak_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-3 if self.name == "adafactor" else 5e-5

    @property
    def schedule_name(self) -> str:
        if self.schedule is not None:
            return self.schedule
        return "constant" if self.name == "adafactor" else "linear"


def make_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    peak = cfg.peak_learning_rate
    warmup = max(0, cfg.warmup_steps)
    decay = max(1, (cfg.decay_steps or total_steps) - warmup)
    end = peak * cfg.end_learning_rate_fraction
    name = cfg.schedule_name
    if name == "constant":
        main = optax.constant_schedule(peak)
    elif name == "linear":
        main = optax.linear_schedule(peak, end, decay)
    elif name == "cosine":
        main = optax.cosine_decay_schedule(peak, decay, alpha=cfg.end_learning_rate_fraction)
    else:  # rsqrt, T5 pre-training style: constant for `warmup` steps then 1/sqrt(step)
        base = max(warmup, 1)
        return lambda step: peak * jnp.sqrt(base / jnp.maximum(jnp.asarray(step, jnp.float32) + 1.0, base))
    if not warmup:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The 2-D shape Adafactor factors a 3-D kernel as: the largest dim against the
    product of the other two (which must be adjacent), e.g. attention's [embed, heads,
    kv] as [embed, heads·kv]. Other shapes are returned unchanged."""
    if len(shape) != 3:
        return shape
    largest = max(range(3), key=lambda i: shape[i])
    if largest == 0:
        return (shape[0], shape[1] * shape[2])
    if largest == 2:
        return (shape[0] * shape[1], shape[2])
    return shape


def factor_as_matrices(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """Runs `inner` on 3-D kernels reshaped to matrices (see `_matrix_shape`).

    optax's Adafactor factors the second moment over a parameter's two largest dims only
    when both are >= 128, so an attention kernel [embed, heads, kv] with d_kv 64 keeps a
    full second moment: 18 GiB of optimiser state for T5-XXL instead of a few MiB. T5X
    factors these kernels as [embed, heads·kv] matrices; so does this wrapper. The
    update of a reshaped leaf is the same elementwise rule; only the statistics change.
    """

    def to_matrices(tree):
        return jax.tree_util.tree_map(lambda x: x.reshape(_matrix_shape(x.shape)), tree)

    def init(params):
        return inner.init(to_matrices(params))

    def update(updates, state, params=None):
        new, state = inner.update(to_matrices(updates), state, None if params is None else to_matrices(params))
        return jax.tree_util.tree_map(lambda n, u: n.reshape(u.shape), new, updates), state

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = make_schedule(cfg, total_steps)
    chain = []
    if cfg.clip_grad_norm:
        chain.append(optax.clip_by_global_norm(cfg.clip_grad_norm))
    if cfg.name == "adafactor":
        chain.append(
            factor_as_matrices(
                optax.adafactor(
                    learning_rate=schedule,
                    decay_rate=cfg.adafactor_decay_rate,
                    clipping_threshold=cfg.adafactor_clipping_threshold,
                    multiply_by_parameter_scale=True,
                    momentum=None,
                    weight_decay_rate=cfg.weight_decay or None,
                )
            )
        )
    else:
        chain.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay))
    return optax.chain(*chain), schedule
