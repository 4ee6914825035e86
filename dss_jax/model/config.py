"""The T5 student's configuration: one frozen dataclass, presets, and HF config mapping.

API
---
    T5Config(vocab_size=..., d_model=..., ...)          # frozen; every field JSON-serialisable
    T5Config.preset(size, variant="t5.1.1", **overrides)
        size:    "tiny" | "small" | "base" | "large" | "xl" | "xxl"
        variant: "t5.1.0" (ReLU FF, tied embeddings, decoder output scaled by d_model**-0.5)
                 "t5.1.1" (gated-GELU FF, untied lm head)
                 "flan"   (Flan-T5: the t5.1.1 architecture and sizes)
    T5Config.from_hf_config(dict) / config.to_hf_config() -> dict   # transformers' config.json
    T5Config.from_dict(dict) / config.to_dict() -> dict             # our own config.json
    config.replace(**changes)

Sizes: t5.1.1/flan use the published T5 v1.1 sizes (small 512/1024/6 heads/8+8 layers ...
xxl 4096/10240/64 heads/24+24); t5.1.0 uses the original T5 sizes (t5-small ... t5-11b,
where "xl" is t5-3b and "xxl" is t5-11b). "tiny" is a test-size model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Any, ClassVar, Mapping, Optional

import jax.numpy as jnp

FEED_FORWARD_ACTIVATIONS = ("relu", "gelu", "gelu_new", "silu", "swish")
REMAT_POLICIES = ("none", "full", "minimal", "dots")
VARIANTS = ("t5.1.0", "t5.1.1", "flan")
SIZES = ("tiny", "small", "base", "large", "xl", "xxl")

# (d_model, d_ff, num_heads, d_kv, num_layers per stack)
_V11_SIZES = {
    "tiny": (32, 64, 4, 8, 2),
    "small": (512, 1024, 6, 64, 8),
    "base": (768, 2048, 12, 64, 12),
    "large": (1024, 2816, 16, 64, 24),
    "xl": (2048, 5120, 32, 64, 24),
    "xxl": (4096, 10240, 64, 64, 24),
}
_V10_SIZES = {
    "tiny": (32, 64, 4, 8, 2),
    "small": (512, 2048, 8, 64, 6),
    "base": (768, 3072, 12, 64, 12),
    "large": (1024, 4096, 16, 64, 24),
    "xl": (1024, 16384, 32, 128, 24),  # t5-3b
    "xxl": (1024, 65536, 128, 128, 24),  # t5-11b
}


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyper-parameters of the encoder-decoder. Defaults are T5 v1.1 small."""

    family: ClassVar[str] = "t5"  # config.json's "family" (dss_jax.model.interface)

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 1024
    num_heads: int = 6
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    # True: every encoder and decoder layer owns its relative-position table
    # (`layers_<i>/relpos_bias`) for its self-attention, as T5X's examples/scalable_t5 and
    # transformers' UMT5 do; False: one table per stack shared by its layers (T5, mT5, Flan-T5).
    relative_attention_per_layer: bool = False
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    # As transformers' `feed_forward_proj`: "relu" | "gated-gelu" | "gelu" | "gated-silu" ...
    # "gated-gelu" means the tanh approximation ("gelu_new"), as in HF and mesh-tf.
    feed_forward: str = "gated-gelu"
    # True: the lm head is the transposed token embedding (T5 v1.0).
    tie_word_embeddings: bool = False
    # Multiply the decoder output by d_model**-0.5 before the lm head. None: same as
    # tie_word_embeddings (the original T5 couples the two; v1.1 has neither).
    scale_decoder_outputs: Optional[bool] = None
    dtype: str = "float32"  # compute dtype, e.g. "bfloat16"
    param_dtype: str = "float32"
    # Rematerialisation of each encoder/decoder layer in training: "none" | "full"
    # (save nothing) | "minimal" (save matmuls without batch dims) | "dots" (save all matmuls).
    remat_policy: str = "none"
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0

    def __post_init__(self):
        # Accept jnp dtypes as well as names; store names so the config stays JSON-able.
        for field in ("dtype", "param_dtype"):
            value = getattr(self, field)
            try:
                dtype = jnp.dtype(value)
            except TypeError as e:
                raise ValueError(f"T5Config.{field}={value!r} is not a dtype name") from e
            if not jnp.issubdtype(dtype, jnp.floating):
                # An integer compute dtype rounds every activation and gradient to whole
                # numbers: the loss stays at ln(vocab) and nothing trains.
                raise ValueError(
                    f"T5Config.{field}={value!r} is not a floating-point dtype; use 'float32' or 'bfloat16'"
                )
            object.__setattr__(self, field, dtype.name)
        if self.activation not in FEED_FORWARD_ACTIVATIONS:
            raise ValueError(
                f"T5Config.feed_forward={self.feed_forward!r}: activation {self.activation!r} is not "
                f"supported; use 'relu', 'gated-gelu', 'gelu', 'gated-silu' "
                f"(activations: {FEED_FORWARD_ACTIVATIONS})"
            )
        if len(self.feed_forward.split("-")) > 2 or (
            "-" in self.feed_forward and not self.feed_forward.startswith("gated-")
        ):
            raise ValueError(f"T5Config.feed_forward={self.feed_forward!r} must be 'ACT' or 'gated-ACT'")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"T5Config.remat_policy={self.remat_policy!r}; choose one of {REMAT_POLICIES}")
        for field in (
            "vocab_size",
            "d_model",
            "d_kv",
            "d_ff",
            "num_heads",
            "num_encoder_layers",
            "num_decoder_layers",
            "relative_attention_num_buckets",
            "relative_attention_max_distance",
        ):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ValueError(f"T5Config.{field} must be a positive integer, got {value!r}")
        for field in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"T5Config.{field} must be a token id in [0, vocab_size={self.vocab_size}), got {value!r}"
                )
        if not isinstance(self.relative_attention_per_layer, bool):
            value = self.relative_attention_per_layer
            raise ValueError(f"T5Config.relative_attention_per_layer must be true or false, got {value!r}")
        if not _finite(self.dropout_rate) or not 0 <= self.dropout_rate < 1:
            raise ValueError(f"T5Config.dropout_rate must be a number in [0, 1), got {self.dropout_rate!r}")
        if not _finite(self.layer_norm_epsilon) or self.layer_norm_epsilon <= 0:
            raise ValueError(
                f"T5Config.layer_norm_epsilon must be a finite number > 0, got {self.layer_norm_epsilon!r}"
            )

    # ----- derived properties -------------------------------------------------------------
    @property
    def is_gated(self) -> bool:
        return self.feed_forward.startswith("gated-")

    @property
    def activation(self) -> str:
        """The FF activation name; "gated-gelu" maps to the tanh approximation, as in HF."""
        if self.feed_forward == "gated-gelu":
            return "gelu_new"
        return self.feed_forward.split("-")[-1]

    @property
    def scales_decoder_output(self) -> bool:
        if self.scale_decoder_outputs is None:
            return self.tie_word_embeddings
        return self.scale_decoder_outputs

    @property
    def hf_architecture(self) -> str:
        """transformers' model of this config: "UMT5" (a relative-position table per layer) or "T5"."""
        return "UMT5" if self.relative_attention_per_layer else "T5"

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes: Any) -> "T5Config":
        return dataclasses.replace(self, **changes)

    # ----- presets ------------------------------------------------------------------------
    @classmethod
    def preset(cls, size: str, variant: str = "t5.1.1", **overrides: Any) -> "T5Config":
        if size not in SIZES:
            raise ValueError(f"unknown T5 size {size!r}; known sizes: {SIZES}")
        if variant not in VARIANTS:
            raise ValueError(f"unknown T5 variant {variant!r}; known variants: {VARIANTS}")
        table = _V10_SIZES if variant == "t5.1.0" else _V11_SIZES
        d_model, d_ff, heads, d_kv, layers = table[size]
        fields = dict(
            d_model=d_model,
            d_ff=d_ff,
            num_heads=heads,
            d_kv=d_kv,
            num_encoder_layers=layers,
            num_decoder_layers=layers,
        )
        if variant == "t5.1.0":
            fields.update(feed_forward="relu", tie_word_embeddings=True)
        else:
            fields.update(feed_forward="gated-gelu", tie_word_embeddings=False)
        fields.update(overrides)
        return cls(**fields)

    # ----- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"family": self.family, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> "T5Config":
        """A config.json's config; one without "family" was written before families, by T5."""
        d = dict(d)
        family = d.pop("family", cls.family)
        if family != cls.family:
            raise ValueError(f"{source}: family={family!r}, not a {cls.family!r} config")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            hint = ""
            if "model_type" in d or "num_layers" in d:
                hint = (
                    " (this looks like a Hugging Face config.json: use T5Config.from_hf_config "
                    "or `python -m dss_jax.convert`)"
                )
            raise ValueError(f"{source}: unknown T5Config keys {unknown}{hint}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides: Any) -> "T5Config":
        """Reads a transformers T5 (or UMT5: a relative-position table per layer) config.json
        dict (transformers 4.x and 5.x both).

        transformers 5 writes `tie_word_embeddings: true` for every T5 and keeps the real
        switch in `scale_decoder_outputs`; whether the lm head is untied then shows only in
        the weights (lm_head.weight present), which the checkpoint importer checks.
        """
        if hf.get("model_type", "t5") not in ("t5", "mt5", "umt5"):
            raise ValueError(f"not a T5 config: model_type={hf.get('model_type')!r}")
        try:
            num_layers = hf["num_layers"]
            fields = dict(
                vocab_size=hf["vocab_size"],
                d_model=hf["d_model"],
                d_kv=hf["d_kv"],
                d_ff=hf["d_ff"],
                num_heads=hf["num_heads"],
            )
        except KeyError as e:
            raise ValueError(f"HF T5 config lacks the key {e.args[0]!r}") from None
        tie = bool(hf.get("tie_word_embeddings", True))
        scale = hf.get("scale_decoder_outputs")
        if scale is None and hf.get("model_type") == "mt5":
            scale = False  # transformers' MT5 never rescales the decoder output (T5 v1.1's network)
        if scale is not None:  # transformers >= 5: `tie_word_embeddings` is always true
            tie = bool(scale)
        fields.update(
            num_encoder_layers=num_layers,
            num_decoder_layers=hf.get("num_decoder_layers") or num_layers,
            relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
            relative_attention_per_layer=hf.get("model_type") == "umt5",
            dropout_rate=float(hf.get("dropout_rate", 0.1)),
            layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)),
            feed_forward=hf.get("feed_forward_proj", "relu"),
            tie_word_embeddings=tie,
            scale_decoder_outputs=None if scale is None or bool(scale) == tie else bool(scale),
            pad_token_id=_int_or(hf.get("pad_token_id"), 0),
            eos_token_id=_int_or(hf.get("eos_token_id"), 1),
            decoder_start_token_id=_int_or(hf.get("decoder_start_token_id"), 0),
        )
        fields.update(overrides)
        return cls(**fields)

    def to_hf_config(self) -> dict:
        """A config.json dict for transformers.T5ForConditionalGeneration (4.x and 5.x), or
        UMT5ForConditionalGeneration for a relative-position table per layer."""
        hf = {
            "architectures": [f"{self.hf_architecture}ForConditionalGeneration"],
            "model_type": self.hf_architecture.lower(),
            "is_encoder_decoder": True,
            "vocab_size": self.vocab_size,
            "d_model": self.d_model,
            "d_kv": self.d_kv,
            "d_ff": self.d_ff,
            "num_heads": self.num_heads,
            "num_layers": self.num_encoder_layers,
            "num_decoder_layers": self.num_decoder_layers,
            "relative_attention_num_buckets": self.relative_attention_num_buckets,
            "relative_attention_max_distance": self.relative_attention_max_distance,
            "dropout_rate": self.dropout_rate,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "initializer_factor": 1.0,
            "feed_forward_proj": self.feed_forward,
            "dense_act_fn": self.activation,
            "is_gated_act": self.is_gated,
            "tie_word_embeddings": self.tie_word_embeddings,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
            "decoder_start_token_id": self.decoder_start_token_id,
            "use_cache": True,
            "torch_dtype": "float32",
        }
        if self.scales_decoder_output != self.tie_word_embeddings:
            hf["scale_decoder_outputs"] = self.scales_decoder_output
        return hf


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _int_or(value: Any, default: int) -> int:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return default if value is None else int(value)
