"""Gin-visible constructors for the binaries: the model's config and the model.

gin chooses the student family (`model_config.family`, default 't5'; t5x's `MODEL`), and
gin/models/*.gin spell the model out field by field on the family's config class, as
t5x's model files do:

    T5Config.d_model = 768                 # any T5Config field (dss_jax/model/config.py)
    T5Config.num_encoder_layers = 12

and a run changes one the same way (`--gin.T5Config.dtype="'bfloat16'"`); gin names a
misspelt field. With INITIAL_CHECKPOINT_PATH set, the checkpoint's own config.json
decides the model (its family included), and only the run-time fields `dtype`,
`dropout_rate` and `remat_policy` bound on the config class apply over it, so a
converted Hugging Face checkpoint cannot be paired with the wrong shape.
"""

from __future__ import annotations

from typing import Any, Optional

import gin
from dss_jax import settings
from dss_jax.cli import UserError
from dss_jax.model import interface

RUNTIME_FIELDS = ("dtype", "dropout_rate", "remat_policy")

# {family: its config class as gin makes it}. Only calls through these read gin's
# `<ConfigClass>.<field>` bindings; `T5Config(...)` and `T5Config.preset(...)` in code do not.
GIN_CONFIGS = {
    name: gin.external_configurable(family.config_class, name=family.config_class.__name__)
    for name, family in interface.families().items()
}


class ModelConfigError(UserError, ValueError):
    """A model config setting (or an INITIAL_CHECKPOINT_PATH config.json) the model cannot take."""


def _config_name(family: str) -> str:
    return interface.families()[family].config_class.__name__


@gin.configurable
def model_config(checkpoint_path: Optional[str] = None, family: Optional[str] = None) -> Any:
    """The model config of a run: gin's bindings on the family's config class, or the
    checkpoint's config.json (with the run-time fields gin binds) when checkpoint_path
    is given. `family`: the student family (None: the checkpoint's, else 't5')."""
    known = interface.families()
    if family is not None and family not in known:
        raise ModelConfigError(
            f"model_config.family={family!r} is not a model family dss_jax implements; choose one of "
            f"{', '.join(sorted(known))}"
        )
    name = _config_name(family or interface.DEFAULT_FAMILY)
    # The config classes validate every field (ValueError/TypeError naming it); here that
    # is a setting the user wrote, so it is reported as one (gin appends its call stack).
    try:
        if not checkpoint_path:
            return GIN_CONFIGS[family or interface.DEFAULT_FAMILY]()
        from dss_jax import checkpoints

        try:
            base, config_path = checkpoints.read_config(checkpoint_path)
        except checkpoints.CheckpointNotFoundError:
            raise ModelConfigError(
                f"{checkpoint_path} has no config.json (in it or its training run's MODEL_DIR): "
                "INITIAL_CHECKPOINT_PATH must be a directory written by `python -m dss_jax.convert` "
                "or a training run"
            ) from None
        if family is not None and base.family != family:
            raise ModelConfigError(
                f"model_config.family={family!r}, but {config_path} holds a {base.family!r} model: "
                "leave model_config.family unbound (the checkpoint decides) or use a checkpoint of that family"
            )
        name = type(base).__name__
        return base.replace(**bound_runtime_fields(base.family))
    except (ValueError, TypeError) as e:
        if isinstance(e, UserError):
            raise
        raise ModelConfigError(f"{name}: {' '.join(str(e).splitlines()[0].split())}") from None


def bound_runtime_fields(family: str = interface.DEFAULT_FAMILY) -> dict:
    """{field: value} of the RUNTIME_FIELDS that gin binds on the family's config class."""
    # Through macros: a T5X model file binds dropout_rate = %DROPOUT_RATE.
    values, _ = settings.gin_values(f"{_config_name(family)}.{field}" for field in RUNTIME_FIELDS)
    return {name.rsplit(".", 1)[1]: value for name, value in values.items()}


@gin.configurable
def build_model(config: Optional[Any] = None) -> interface.StudentModel:
    """The run's student model (dss_jax.model.interface) for `config` (None: `model_config()`)."""
    return interface.build(config if config is not None else model_config())


def register_for_decoding() -> None:
    """Registers what the eval and infer gin files bind besides the model config
    (DecodeSettings, the tasks' options): called by those binaries before they parse,
    not at import, since `scoring` brings in seqio and TensorFlow."""
    from dss_jax import scoring  # noqa: F401
