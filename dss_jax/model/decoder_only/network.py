"""The decoder-only transformer (Llama 3.x, Qwen2.5, Qwen3, Gemma 3) in Flax linen.

    model = DecoderOnly(config)             # config: decoder_only.config.DecoderOnlyConfig
    logits = model.apply({"params": params}, tokens, segment_ids=None, positions=None,
                         prompt_mask=None, enable_dropout=False, rngs={"dropout": key})
    # float32 [b, len, vocab]

Packed rows: segment ids (1..n, 0 padding) keep attention within a segment, positions
(restarting at 0 in each) feed RoPE, so each segment sees what it would see alone. With
`prompt_attention="bidirectional"`, `prompt_mask` (1 on prompt tokens) lets a segment's
prompt tokens attend to all of its prompt (prefix-LM); otherwise attention is causal.
Numerics follow the Hugging Face models in float32: RMSNorm statistics in float32 (Gemma's
scale 1 + w), rotate-half RoPE from float32 inverse frequencies, scores scaled before the
mask, softmax in float32.

Parameter tree (`variables["params"]`):
    token_embedder/embedding [vocab, embed]
    layers_{i}/pre_attention_norm/scale [embed]
    layers_{i}/attention/{query [embed, heads, head_dim], key, value [embed, kv_heads, head_dim],
                          out [heads, head_dim, embed]}/kernel   (+ bias: qkv_bias, out_bias)
    layers_{i}/attention/{query_norm, key_norm}/scale [head_dim]          (qk_norm)
    layers_{i}/post_attention_norm/scale, layers_{i}/post_mlp_norm/scale  (post_norms)
    layers_{i}/pre_mlp_norm/scale
    layers_{i}/mlp/{gate, up [embed, mlp], down [mlp, embed]}/kernel      (+ bias: mlp_bias)
    final_norm/scale
    logits_dense/kernel [embed, vocab]                                    (untied only)
"""

from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dss_jax.model.decoder_only.config import DecoderOnlyConfig
from dss_jax.model.layers import NEG_INF, constrain, project, remat_layer

_ACTIVATIONS = {"silu": jax.nn.silu, "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True)}


def _init(stddev: float, names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(stddev=stddev), names)


class RMSNorm(nn.Module):
    config: DecoderOnlyConfig
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        init = nn.initializers.zeros if cfg.norm_plus_one else nn.initializers.ones
        scale = self.param(
            "scale", nn.with_logical_partitioning(init, (self.axis_name,)), (x.shape[-1],), cfg.params_dtype
        )
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + cfg.norm_eps)
        scale = scale.astype(jnp.float32)
        return (y * (1.0 + scale) if cfg.norm_plus_one else y * scale).astype(cfg.compute_dtype)


class Dense(nn.Module):
    """Linear map contracting the last `len(axes) - len(features)` dims, optional bias."""

    config: DecoderOnlyConfig
    features: tuple[int, ...]
    axes: tuple[str, ...]  # logical names of the kernel dims, inputs first
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        n_in = len(self.axes) - len(self.features)
        shape = (*x.shape[x.ndim - n_in :], *self.features)
        kernel = self.param("kernel", _init(float(np.prod(shape[:n_in])) ** -0.5, self.axes), shape, cfg.params_dtype)
        y = project(x.astype(cfg.compute_dtype), kernel.astype(cfg.compute_dtype), n_in)
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, self.axes[n_in:]),
                self.features,
                cfg.params_dtype,
            )
            y = y + bias.astype(cfg.compute_dtype)
        return y


def inverse_frequencies(cfg: DecoderOnlyConfig, layer_type: str) -> np.ndarray:
    """float32 [head_dim // 2] RoPE inverse frequencies of one kind of layer, as the HF
    rope init functions compute them (default, linear, llama3)."""
    local = layer_type == "sliding_attention" and cfg.local_rope_theta is not None
    base = cfg.local_rope_theta if local else cfg.rope_theta
    dim = cfg.head_dim
    inv = (1.0 / (np.float32(base) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))).astype(np.float32)
    if local or cfg.rope_type == "default":
        return inv
    if cfg.rope_type == "linear":
        return (inv / np.float32(cfg.rope_factor)).astype(np.float32)
    # llama3: long wavelengths divided by factor, short kept, the band between smoothed.
    factor, low, high = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    old = cfg.rope_original_max_position
    wavelen = 2 * np.pi / inv
    scaled = np.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """x [batch, len, heads, head_dim], positions [batch|1, len]: rotate-half RoPE."""
    freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # [b, len, head_dim/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [b, len, 1, head_dim]
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Grouped-query attention with RoPE. With decode=True it keeps a key/value cache
    (collection "cache": cached_key, cached_value [batch, kv_heads, cache_length, head_dim]):
    the first call (the prompt) creates it and writes the prompt's keys and values at
    positions 0..len-1; later calls take one token per row and write it at that row's
    position (rows decode at different positions: prompts differ in length)."""

    config: DecoderOnlyConfig
    layer_type: str

    @nn.compact
    def __call__(self, x, positions, mask, deterministic: bool, decode: bool = False, cache_length: int = 0):
        # x [batch, len, embed]; positions [batch|1, len]; mask bool [batch|1, 1, len, keys]
        cfg = self.config
        heads, kv_heads, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q = Dense(cfg, (heads, hd), ("embed", "heads", "kv"), cfg.qkv_bias, name="query")(x)
        k = Dense(cfg, (kv_heads, hd), ("embed", "kv_heads", "kv"), cfg.qkv_bias, name="key")(x)
        v = Dense(cfg, (kv_heads, hd), ("embed", "kv_heads", "kv"), cfg.qkv_bias, name="value")(x)
        if cfg.qk_norm:
            q = RMSNorm(cfg, "kv", name="query_norm")(q)
            k = RMSNorm(cfg, "kv", name="key_norm")(k)
        inv_freq = inverse_frequencies(cfg, self.layer_type)
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        q = constrain(q, ("batch", "length", "heads", "kv"))
        b, length = q.shape[:2]
        layout = "bknd"  # keys [batch, key, kv_heads, head_dim]
        if decode:
            stepping = self.has_variable("cache", "cached_key")
            shape = (b, kv_heads, cache_length, hd)
            cached_k = self.variable("cache", "cached_key", jnp.zeros, shape, k.dtype)
            cached_v = self.variable("cache", "cached_value", jnp.zeros, shape, v.dtype)
            k_heads, v_heads = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # [b, kv_heads, len, hd]
            if stepping:
                at = jnp.arange(cached_k.value.shape[2])[None, None, :, None] == positions[:, None, :1, None]
                cached_k.value = jnp.where(at, k_heads.astype(cached_k.value.dtype), cached_k.value)
                cached_v.value = jnp.where(at, v_heads.astype(cached_v.value.dtype), cached_v.value)
                k, v, layout = cached_k.value, cached_v.value, "bnkd"
            else:
                cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k_heads, (0, 0, 0, 0))
                cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v_heads, (0, 0, 0, 0))
        groups = heads // kv_heads
        q = q.reshape(b, length, kv_heads, groups, hd)  # query head h reads kv head h // groups
        scores = jnp.einsum(f"bqngd,{layout}->bngqk", q, k, preferred_element_type=jnp.float32) * cfg.query_scale
        scores = jnp.where(mask[:, :, None], scores, NEG_INF)  # mask [b, 1, 1, q, k]
        probs = jax.nn.softmax(scores, axis=-1).astype(cfg.compute_dtype)
        probs = nn.Dropout(cfg.dropout_rate)(probs, deterministic=deterministic)
        out = jnp.einsum(f"bngqk,{layout}->bqngd", probs, v).reshape(b, length, heads, hd)
        out = Dense(cfg, (cfg.d_model,), ("heads", "kv", "embed"), cfg.out_bias, name="out")(out)
        return constrain(out, ("batch", "length", "embed"))


class Mlp(nn.Module):
    config: DecoderOnlyConfig

    @nn.compact
    def __call__(self, x, deterministic: bool):
        cfg = self.config
        gate = Dense(cfg, (cfg.d_ff,), ("embed", "mlp"), cfg.mlp_bias, name="gate")(x)
        up = Dense(cfg, (cfg.d_ff,), ("embed", "mlp"), cfg.mlp_bias, name="up")(x)
        h = constrain(_ACTIVATIONS[cfg.activation](gate) * up, ("batch", "length", "mlp"))
        h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        return Dense(cfg, (cfg.d_model,), ("mlp", "embed"), cfg.mlp_bias, name="down")(h)


class Layer(nn.Module):
    config: DecoderOnlyConfig
    layer_type: str

    @nn.compact
    def __call__(self, x, positions, mask, deterministic: bool, decode: bool = False, cache_length: int = 0):
        cfg = self.config
        h = RMSNorm(cfg, name="pre_attention_norm")(x)
        h = Attention(cfg, self.layer_type, name="attention")(h, positions, mask, deterministic, decode, cache_length)
        if cfg.post_norms:
            h = RMSNorm(cfg, name="post_attention_norm")(h)
        x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        h = RMSNorm(cfg, name="pre_mlp_norm")(x)
        h = Mlp(cfg, name="mlp")(h, deterministic)
        if cfg.post_norms:
            h = RMSNorm(cfg, name="post_mlp_norm")(h)
        x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        return constrain(x, ("batch", "length", "embed"))


def attention_masks(
    cfg: DecoderOnlyConfig, query_positions: jax.Array, key_positions: jax.Array, segment_ids=None, prompt_mask=None
) -> dict[str, jax.Array]:
    """bool [batch|1, 1, queries, keys] per layer type: causal (key position <= query
    position), or with `prompt_mask` [batch, len] (queries = keys) any two prompt tokens;
    the same segment; for sliding layers keys within `sliding_window` positions
    (|q - k| < window). Positions are sequence indices, or within a packed segment
    indices shifted by a constant: the distances are the same."""
    q = query_positions[:, :, None]
    k = key_positions[:, None, :]
    allowed = k <= q  # [b|1, queries, keys]
    if prompt_mask is not None:
        prompt = prompt_mask > 0
        allowed = allowed | (prompt[:, :, None] & prompt[:, None, :])
    allowed = allowed[:, None]  # [b|1, 1, queries, keys]
    if segment_ids is not None:
        allowed = allowed & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    masks = {"full_attention": allowed}
    if cfg.sliding_window:
        masks["sliding_attention"] = allowed & (jnp.abs(q - k) < cfg.sliding_window)[:, None]
    return masks


class DecoderOnly(nn.Module):
    config: DecoderOnlyConfig

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,  # [batch, len] int32
        segment_ids: Optional[jax.Array] = None,
        positions: Optional[jax.Array] = None,
        prompt_mask: Optional[jax.Array] = None,
        enable_dropout: bool = False,
        decode: bool = False,
        cache_length: int = 0,
    ) -> jax.Array:
        """Logits float32 [batch, len, vocab]. decode=True: the first call (the prompt,
        positions 0..len-1) creates the key/value cache of `cache_length` positions; later
        calls take one token per row with `positions` [batch, 1] (see `Attention`).
        `prompt_mask` is read only when config.prompt_attention is "bidirectional"."""
        cfg = self.config
        deterministic = not enable_dropout
        length = tokens.shape[1]
        index = jnp.arange(length, dtype=jnp.int32)[None, :]
        if decode and self.has_variable("cache", "layers_0"):
            if positions is None or length != 1:
                raise ValueError("decode=True steps take one token per row and its positions [batch, 1]")
            keys = jnp.arange(self._cache_length(), dtype=jnp.int32)[None, :]
            masks = attention_masks(cfg, positions, keys)
        else:
            if positions is None:
                positions = index
            if cfg.prompt_attention != "bidirectional":
                prompt_mask = None
            masks = attention_masks(cfg, index, index, segment_ids, prompt_mask)
        embedder = Embedder(cfg, name="token_embedder")
        x = embedder(tokens)
        if cfg.scale_embedding:
            x = x * jnp.asarray(cfg.d_model**0.5, cfg.compute_dtype)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        # Rematerialisation is a training-time trade; decoding runs the plain layer.
        layer_cls = remat_layer(Layer, "none" if decode else cfg.remat_policy, (4, 5, 6))
        for i in range(cfg.num_layers):
            kind = cfg.layer_type(i)
            x = layer_cls(cfg, kind, name=f"layers_{i}")(x, positions, masks[kind], deterministic, decode, cache_length)
        x = RMSNorm(cfg, name="final_norm")(x)
        if cfg.tie_word_embeddings:
            logits = embedder.attend(x)
        else:
            logits = LmHead(cfg, name="logits_dense")(x)
        if cfg.final_logit_softcapping:
            logits = jnp.tanh(logits / cfg.final_logit_softcapping) * cfg.final_logit_softcapping
        return constrain(logits, ("batch", "length", "vocab"))  # float32 [batch, len, vocab]

    def _cache_length(self) -> int:
        return self.variables["cache"]["layers_0"]["attention"]["cached_key"].shape[2]


class Embedder(nn.Module):
    config: DecoderOnlyConfig

    def setup(self):
        cfg = self.config
        # Tied to the output, d_model ** -0.5 starts the logits at unit scale (a loss near
        # log(vocab) from scratch); Gemma's embedding scale brings the inputs to unit scale.
        self.embedding = self.param(
            "embedding", _init(cfg.d_model**-0.5, ("vocab", "embed")), (cfg.vocab_size, cfg.d_model), cfg.params_dtype
        )

    def __call__(self, tokens):
        x = jnp.take(self.embedding, tokens, axis=0).astype(self.config.compute_dtype)
        return constrain(x, ("batch", "length", "embed"))

    def attend(self, x):
        dtype = self.config.compute_dtype
        return jnp.einsum(
            "...d,vd->...v", x.astype(dtype), self.embedding.astype(dtype), preferred_element_type=jnp.float32
        )


class LmHead(nn.Module):
    """The untied output projection; logits in float32."""

    config: DecoderOnlyConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        kernel = self.param(
            "kernel", _init(cfg.d_model**-0.5, ("embed", "vocab")), (cfg.d_model, cfg.vocab_size), cfg.params_dtype
        )
        dtype = cfg.compute_dtype
        return project(x.astype(dtype), kernel.astype(dtype), 1, jnp.float32)
