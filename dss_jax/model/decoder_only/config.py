"""The decoder-only student's configuration: one frozen dataclass for the Llama 3.x,
Qwen2.5, Qwen3 and Gemma 3 architectures, as their Hugging Face configs define them.

    DecoderOnlyConfig(architecture="llama", vocab_size=..., d_model=..., ...)
    DecoderOnlyConfig.from_dict(d) / config.to_dict()    # our config.json ("family": "decoder_only")

`architecture` is the Hugging Face model_type it reads and writes ("llama", "qwen2",
"qwen3", "gemma3_text"); the other fields spell the architecture out, so a config says
what the network does without looking the name up: Gemma's (1 + w) norm scale, embedding
scale and extra post-norms, Qwen3's and Gemma 3's norm of queries and keys, Qwen2's
q/k/v biases, RoPE and its scaling, the local sliding-window layers. Every field is
JSON-safe and hashable (layer_types is a tuple).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, ClassVar, Mapping, Optional

import jax.numpy as jnp

from dss_jax.model.config import REMAT_POLICIES

ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3_text")
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")
ROPE_TYPES = ("default", "linear", "llama3")
LAYER_TYPES = ("full_attention", "sliding_attention")
PROMPT_ATTENTIONS = ("causal", "bidirectional")


@dataclasses.dataclass(frozen=True)
class DecoderOnlyConfig:
    """Hyper-parameters of a decoder-only transformer (defaults: a tiny Llama)."""

    family: ClassVar[str] = "decoder_only"  # config.json's "family" (dss_jax.model.interface)

    architecture: str = "llama"
    vocab_size: int = 256
    d_model: int = 32  # hidden_size
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2  # grouped-query attention: num_heads is a multiple of it
    head_dim: int = 8
    d_ff: int = 64  # intermediate_size
    activation: str = "silu"  # of the gated MLP: down(act(gate(x)) * up(x))
    norm_eps: float = 1e-6
    norm_plus_one: bool = False  # Gemma: RMSNorm scales by (1 + weight)
    qk_norm: bool = False  # Qwen3, Gemma 3: RMSNorm over head_dim of queries and keys
    qkv_bias: bool = False  # Qwen2: biases on the q, k and v projections
    out_bias: bool = False  # Llama's attention_bias also biases o_proj
    mlp_bias: bool = False
    post_norms: bool = False  # Gemma 3: norms after attention and after the MLP, before the residual add
    scale_embedding: bool = False  # Gemma: embeddings times sqrt(d_model)
    query_pre_attn_scalar: Optional[int] = None  # Gemma: scores scaled by this ** -0.5 (else head_dim ** -0.5)
    final_logit_softcapping: Optional[float] = None
    rope_theta: float = 10000.0
    rope_type: str = "default"  # "linear" (position / factor), "llama3" (Llama 3.1's smoothed bands)
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0  # llama3
    rope_high_freq_factor: float = 4.0  # llama3
    rope_original_max_position: int = 8192  # llama3
    local_rope_theta: Optional[float] = None  # Gemma 3's sliding layers (no scaling); None: rope_theta
    sliding_window: Optional[int] = None  # keys within the last `sliding_window` positions
    layer_types: tuple[str, ...] = ()  # per layer, LAYER_TYPES; () = all full attention
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 2048
    bos_token_id: Optional[int] = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    # How a DSS prompt is read: "causal" (as the pretrained model and Hugging Face's
    # generate read it) or "bidirectional" (prefix-LM: prompt tokens attend to the whole
    # prompt, T5X's decoder_causal_attention; not expressible in a Hugging Face export).
    prompt_attention: str = "causal"
    # Run-time fields (not the architecture's).
    dtype: str = "float32"
    param_dtype: str = "float32"
    dropout_rate: float = 0.0
    remat_policy: str = "none"

    def __post_init__(self):
        if isinstance(self.layer_types, list):
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        name = type(self).__name__

        def one_of(field, choices):
            if getattr(self, field) not in choices:
                raise ValueError(f"{name}.{field}={getattr(self, field)!r}; choose one of {choices}")

        one_of("architecture", ARCHITECTURES)
        one_of("activation", ACTIVATIONS)
        one_of("rope_type", ROPE_TYPES)
        one_of("remat_policy", REMAT_POLICIES)
        one_of("prompt_attention", PROMPT_ATTENTIONS)
        for field in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "d_ff"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}.{field} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"{name}.num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        for field in ("dtype", "param_dtype"):
            try:
                ok = jnp.issubdtype(jnp.dtype(getattr(self, field)), jnp.floating)
            except TypeError:
                ok = False
            if not ok:
                raise ValueError(f"{name}.{field}={getattr(self, field)!r}; use 'float32' or 'bfloat16'")
        if self.layer_types:
            if len(self.layer_types) != self.num_layers:
                raise ValueError(
                    f"{name}.layer_types has {len(self.layer_types)} entries for num_layers={self.num_layers}"
                )
            bad = [t for t in self.layer_types if t not in LAYER_TYPES]
            if bad:
                raise ValueError(f"{name}.layer_types holds {bad[0]!r}; each must be one of {LAYER_TYPES}")
            if "sliding_attention" in self.layer_types and not self.sliding_window:
                raise ValueError(f"{name}: layer_types has sliding_attention layers but sliding_window is not set")
        for field in ("norm_eps", "rope_theta", "rope_factor"):
            value = getattr(self, field)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name}.{field} must be a finite number > 0, got {value!r}")
        if not (isinstance(self.dropout_rate, (int, float)) and 0 <= self.dropout_rate < 1):
            raise ValueError(f"{name}.dropout_rate must be a number in [0, 1), got {self.dropout_rate!r}")
        for field in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, field)
            if value is not None and not (isinstance(value, int) and 0 <= value < self.vocab_size):
                raise ValueError(
                    f"{name}.{field} must be a token id in [0, vocab_size={self.vocab_size}), got {value!r}"
                )

    # ----- derived ------------------------------------------------------------------------
    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def layer_type(self, i: int) -> str:
        return self.layer_types[i] if self.layer_types else "full_attention"

    @property
    def query_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def replace(self, **changes: Any) -> "DecoderOnlyConfig":
        return dataclasses.replace(self, **changes)

    # ----- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        return {"family": self.family, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> "DecoderOnlyConfig":
        d = dict(d)
        family = d.pop("family", None)
        if family != cls.family:
            raise ValueError(f"{source}: family={family!r}, not a {cls.family!r} config")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{source}: unknown {cls.__name__} keys {unknown}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
