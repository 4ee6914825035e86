"""Gin-visible constructors for the binaries: the model config and the model.

    model_config.size = 'small'            # tiny | small | base | large | xl | xxl
    model_config.variant = 't5.1.1'        # t5.1.0 | t5.1.1 | flan
    model_config.overrides = {'dtype': 'bfloat16', 'vocab_size': 1000}

With INITIAL_CHECKPOINT_PATH set, the checkpoint's own config.json wins over the preset
(only the run-time fields `dtype`, `dropout_rate` and `remat_policy` are taken from gin
overrides), so a converted Hugging Face checkpoint cannot be paired with the wrong shape.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import gin
from dss_jax.cli import UserError
from dss_jax.model.config import T5Config

RUNTIME_FIELDS = ("dtype", "dropout_rate", "remat_policy")


class ModelConfigError(UserError, ValueError):
    """A model_config setting (or an INITIAL_CHECKPOINT_PATH config.json) the model cannot take."""


@gin.configurable
def model_config(
    size: str = "small",
    variant: str = "t5.1.1",
    overrides: Optional[Mapping[str, Any]] = None,
    checkpoint_path: Optional[str] = None,
) -> T5Config:
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ModelConfigError(f"model_config.overrides = {overrides!r} must be a dict of T5Config fields")
    overrides = dict(overrides or {})
    fields = [f.name for f in dataclasses.fields(T5Config)]
    unknown = [k for k in overrides if k not in fields]
    if unknown:
        from dss_jax.gin_utils import did_you_mean

        raise ModelConfigError(
            f"model_config.overrides: {unknown[0]!r} is not a T5Config field{did_you_mean(str(unknown[0]), fields)} "
            f"(fields: {', '.join(fields)})"
        )
    # T5Config validates every field (ValueError/TypeError naming it); here that is a setting
    # the user wrote, so it is reported as one.
    try:
        if checkpoint_path:
            from dss_jax import checkpoints

            try:
                base, _ = checkpoints.read_config(checkpoint_path)
            except checkpoints.CheckpointNotFoundError:
                raise ModelConfigError(
                    f"{checkpoint_path} has no config.json (in it or its training run's MODEL_DIR): "
                    "INITIAL_CHECKPOINT_PATH must be a directory written by `python -m dss_jax.convert` "
                    "or a training run"
                ) from None
            return base.replace(**{k: v for k, v in overrides.items() if k in RUNTIME_FIELDS})
        return T5Config.preset(size, variant, **overrides)
    except (ValueError, TypeError) as e:
        if isinstance(e, UserError):
            raise
        raise ModelConfigError(
            f"model_config (size={size!r}, variant={variant!r}, overrides={overrides}): {' '.join(str(e).split())}"
        ) from None


@gin.configurable
def build_model(config: Optional[T5Config] = None):
    from dss_jax.model.t5 import T5

    return T5(config if config is not None else model_config())


def register_for_decoding() -> None:
    """Registers what the eval and infer gin files bind besides model_config
    (DecodeSettings, the tasks' options): called by those binaries before they parse,
    not at import, since `scoring` brings in seqio and TensorFlow."""
    from dss_jax import scoring  # noqa: F401
