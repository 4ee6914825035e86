"""Gin-visible constructors for the binaries: the model config and the model.

    model_config.size = 'small'            # tiny | small | base | large | xl | xxl
    model_config.variant = 't5.1.1'        # t5.1.0 | t5.1.1 | flan
    model_config.overrides = {'dtype': 'bfloat16', 'vocab_size': 1000}

With INITIAL_CHECKPOINT_PATH set, the checkpoint's own config.json wins over the preset
(only the run-time fields `dtype`, `dropout_rate` and `remat_policy` are taken from gin
overrides), so a converted Hugging Face checkpoint cannot be paired with the wrong shape.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

import gin

from dss_jax.model.config import T5Config

RUNTIME_FIELDS = ("dtype", "dropout_rate", "remat_policy")


@gin.configurable
def model_config(
    size: str = "small",
    variant: str = "t5.1.1",
    overrides: Optional[Mapping[str, Any]] = None,
    checkpoint_path: Optional[str] = None,
) -> T5Config:
    overrides = dict(overrides or {})
    if checkpoint_path:
        path = os.path.join(checkpoint_path, "config.json")
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} not found: INITIAL_CHECKPOINT_PATH must be a directory written by "
                "`python -m dss_jax.convert` or a training run"
            )
        with open(path) as f:
            base = T5Config.from_dict(json.load(f), source=path)
        return base.replace(**{k: v for k, v in overrides.items() if k in RUNTIME_FIELDS})
    return T5Config.preset(size, variant, **overrides)


@gin.configurable
def build_model(config: Optional[T5Config] = None):
    from dss_jax.model.t5 import T5

    return T5(config if config is not None else model_config())
