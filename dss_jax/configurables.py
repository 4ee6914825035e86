"""Gin-visible constructors for the binaries: the model's config and the model.

gin/models/*.gin spell a model out field by field, as t5x's model files do:

    T5Config.d_model = 768                 # any T5Config field (dss_jax/model/config.py)
    T5Config.num_encoder_layers = 12

and a run changes one the same way (`--gin.T5Config.dtype="'bfloat16'"`); gin names a
misspelt field. With INITIAL_CHECKPOINT_PATH set, the checkpoint's own config.json
decides the model, and only the run-time fields `dtype`, `dropout_rate` and
`remat_policy` bound on T5Config apply over it, so a converted Hugging Face checkpoint
cannot be paired with the wrong shape.
"""

from __future__ import annotations

from typing import Optional

import gin
from dss_jax.cli import UserError
from dss_jax.model.config import T5Config

RUNTIME_FIELDS = ("dtype", "dropout_rate", "remat_policy")

# The T5Config that gin's `T5Config.<field>` bindings make. Only calls through this name
# read gin; `T5Config(...)` and `T5Config.preset(...)` in code do not.
gin_t5_config = gin.external_configurable(T5Config, name="T5Config")


class ModelConfigError(UserError, ValueError):
    """A T5Config setting (or an INITIAL_CHECKPOINT_PATH config.json) the model cannot take."""


@gin.configurable
def model_config(checkpoint_path: Optional[str] = None) -> T5Config:
    """The model of a run: gin's T5Config bindings, or the checkpoint's config.json (with
    the run-time fields gin binds) when checkpoint_path is given."""
    # T5Config validates every field (ValueError/TypeError naming it); here that is a
    # setting the user wrote, so it is reported as one (gin appends its call stack).
    try:
        if not checkpoint_path:
            return gin_t5_config()
        from dss_jax import checkpoints

        try:
            base, _ = checkpoints.read_config(checkpoint_path)
        except checkpoints.CheckpointNotFoundError:
            raise ModelConfigError(
                f"{checkpoint_path} has no config.json (in it or its training run's MODEL_DIR): "
                "INITIAL_CHECKPOINT_PATH must be a directory written by `python -m dss_jax.convert` "
                "or a training run"
            ) from None
        return base.replace(**bound_runtime_fields())
    except (ValueError, TypeError) as e:
        if isinstance(e, UserError):
            raise
        raise ModelConfigError(f"T5Config: {' '.join(str(e).splitlines()[0].split())}") from None


def bound_runtime_fields() -> dict:
    """{field: value} of the RUNTIME_FIELDS that gin binds on T5Config."""
    bound = {}
    for field in RUNTIME_FIELDS:
        try:
            bound[field] = gin.query_parameter(f"T5Config.{field}")
        except ValueError:  # not bound
            pass
    return bound


@gin.configurable
def build_model(config: Optional[T5Config] = None):
    from dss_jax.model.t5 import T5

    return T5(config if config is not None else model_config())


def register_for_decoding() -> None:
    """Registers what the eval and infer gin files bind besides T5Config
    (DecodeSettings, the tasks' options): called by those binaries before they parse,
    not at import, since `scoring` brings in seqio and TensorFlow."""
    from dss_jax import scoring  # noqa: F401
