"""T5 building blocks in Flax linen: RMS norm, embeddings, feed-forward, attention, relative bias;
and what every family's network shares: projections, constraints, the remat wrapper.

Every parameter is created through `nn.with_logical_partitioning` with logical axis names
(vocab, embed, mlp, heads, kv, relpos_buckets) and the main activations are constrained with
`nn.with_logical_constraint` (batch, length, embed, mlp, heads, kv, vocab), so partitioning
rules chosen at run time shard the model without touching it. Without active axis rules the
constraints are no-ops.

Numerics follow Hugging Face's T5 (and mesh-tf): RMS norm in float32 without mean subtraction
or bias; no 1/sqrt(d_kv) scaling of attention logits; attention logits, bias and softmax in
float32 whatever the compute dtype; relative position buckets computed exactly as
`T5Attention._relative_position_bucket` (via an exact lookup table, see `_bucket_table`).

Masks are passed to attention as an additive float32 bias [batch|1, heads|1, q_len, k_len]
that already contains the relative position bias; `NEG_INF` marks forbidden pairs.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dss_jax.model import cpu_tuning
from dss_jax.model.config import T5Config

# Large but finite: a fully masked row (padding query) softmaxes to uniform, never NaN.
NEG_INF = -1e10

_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def _init(stddev: float, names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(stddev=stddev), names)


def constrain(x: jax.Array, names: tuple[str, ...]) -> jax.Array:
    return nn.with_logical_constraint(x, names)


class RMSNorm(nn.Module):
    """T5 layer norm: scale only, statistics in float32."""

    config: T5Config

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            (x.shape[-1],),
            cfg.params_dtype,
        )
        x32 = x.astype(jnp.float32)
        variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(variance + cfg.layer_norm_epsilon)
        return (scale.astype(jnp.float32) * y).astype(cfg.compute_dtype)


class Embed(nn.Module):
    """Token embedding; `attend` is the tied lm head (logits in float32)."""

    config: T5Config

    def setup(self):
        cfg = self.config
        self.embedding = self.param(
            "embedding",
            _init(1.0, ("vocab", "embed")),
            (cfg.vocab_size, cfg.d_model),
            cfg.params_dtype,
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = jnp.take(self.embedding, tokens, axis=0).astype(self.config.compute_dtype)
        return constrain(x, ("batch", "length", "embed"))  # [batch, length, embed]

    def attend(self, x: jax.Array) -> jax.Array:
        dtype = self.config.compute_dtype
        return jnp.einsum(
            "...d,vd->...v",
            x.astype(dtype),
            self.embedding.astype(dtype),
            preferred_element_type=jnp.float32,
        )


def project(x: jax.Array, kernel: jax.Array, n_in: int, out_dtype=None) -> jax.Array:
    """x [..., *in] . kernel [*in, *out] -> [..., *out] (in the inputs' dtype, or `out_dtype`);
    its gradient is the CPU-tuned one on XLA:CPU (`cpu_tuning.contract`)."""
    return cpu_tuning.contract(x, kernel, n_in, out_dtype)


class LmHead(nn.Module):
    """Untied output projection (T5 v1.1 / Flan); logits in float32."""

    config: T5Config

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        kernel = self.param(
            "kernel",
            _init(cfg.d_model**-0.5, ("embed", "vocab")),
            (cfg.d_model, cfg.vocab_size),
            cfg.params_dtype,
        )
        dtype = cfg.compute_dtype
        return project(x.astype(dtype), kernel.astype(dtype), 1, jnp.float32)


class Projection(nn.Module):
    """Bias-free linear map contracting the last `len(in_axes)` dims: kernel [*in, *features].

    (flax's DenseGeneral creates its kernel flat and reshapes it, which breaks the logical
    axis names of a multi-dim kernel under a mesh.)
    """

    config: T5Config
    features: tuple[int, ...]
    axes: tuple[str, ...]  # logical names of the kernel dims, inputs first
    stddev: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        n_in = len(self.axes) - len(self.features)
        kernel = self.param(
            "kernel", _init(self.stddev, self.axes), (*x.shape[x.ndim - n_in :], *self.features), cfg.params_dtype
        )
        dtype = cfg.compute_dtype
        return project(x.astype(dtype), kernel.astype(dtype), n_in)


class MlpBlock(nn.Module):
    """T5 feed-forward: act(x wi) wo, or act(x wi_0) * (x wi_1) wo when gated."""

    config: T5Config

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        cfg = self.config
        act = _ACTIVATIONS[cfg.activation]

        def dense_in(name):
            return Projection(cfg, (cfg.d_ff,), ("embed", "mlp"), cfg.d_model**-0.5, name=name)(x)

        if cfg.is_gated:
            h = act(dense_in("wi_0")) * dense_in("wi_1")
        else:
            h = act(dense_in("wi"))
        h = constrain(h, ("batch", "length", "mlp"))  # [batch, length, mlp]
        h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        out = Projection(cfg, (cfg.d_model,), ("mlp", "embed"), cfg.d_ff**-0.5, name="wo")(h)
        return constrain(out, ("batch", "length", "embed"))


class MultiHeadAttention(nn.Module):
    """T5 attention (no logit scaling). With decode=True it keeps a key/value cache.

    Cache (collection "cache"): cached_key, cached_value [batch, heads, max_length, kv],
    cache_index () int32. The first decode=True call (cache absent) only creates the cache
    from the shape of `inputs_q` and attends normally; later calls take one token, write it at
    cache_index and attend over all max_length slots (the caller's bias masks future slots).
    """

    config: T5Config

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,  # [batch, q_len, embed]
        inputs_kv: jax.Array,  # [batch, kv_len, embed]
        bias: Optional[jax.Array],  # float32 [batch|1, heads|1, q_len, kv_len]
        deterministic: bool,
        decode: bool = False,
        static_kv: bool = False,
    ) -> jax.Array:
        """`static_kv` (cross-attention while decoding): the keys and values of `inputs_kv`
        (the encoder output, the same at every step) are kept heads-major in the
        "encoded_kv" collection. The call that creates the decoding cache stores them when
        that collection is mutable; later steps read them instead of projecting and
        transposing the encoder output again (XLA hoists the projections out of a decoding
        loop but not the transposes that the attention products need). Without a stored
        or mutable "encoded_kv" they are computed at each call."""
        cfg = self.config
        heads, d_kv, d_model = cfg.num_heads, cfg.d_kv, cfg.d_model

        def proj(name, stddev, x):
            y = Projection(cfg, (heads, d_kv), ("embed", "heads", "kv"), stddev, name=name)(x)
            return constrain(y, ("batch", "length", "heads", "kv"))  # [batch, len, heads, kv]

        query = proj("query", (d_model * d_kv) ** -0.5, inputs_q)
        if static_kv and self.has_variable("encoded_kv", "static_key"):
            keys, values = (
                self.get_variable("encoded_kv", "static_key"),
                self.get_variable("encoded_kv", "static_value"),
            )
            return self._project_out(self._attend(query, keys, values, bias, deterministic, "bhkd"))
        key = proj("key", d_model**-0.5, inputs_kv)
        value = proj("value", d_model**-0.5, inputs_kv)
        if static_kv and self.is_mutable_collection("encoded_kv"):
            keys = self.variable("encoded_kv", "static_key", lambda: jnp.swapaxes(key, 1, 2)).value
            values = self.variable("encoded_kv", "static_value", lambda: jnp.swapaxes(value, 1, 2)).value
            return self._project_out(self._attend(query, keys, values, bias, deterministic, "bhkd"))

        if decode:
            # The cache is kept heads-major, [batch, heads, max_length, kv]: the layout the
            # per-step attention products read, so no step transposes the whole cache.
            initialized = self.has_variable("cache", "cached_key")
            cache_shape = (key.shape[0], heads, key.shape[1], d_kv)
            cached_key = self.variable("cache", "cached_key", jnp.zeros, cache_shape, key.dtype)
            cached_value = self.variable("cache", "cached_value", jnp.zeros, cache_shape, value.dtype)
            cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            if initialized:
                if inputs_q.shape[1] != 1:
                    raise ValueError(f"decode=True steps take one token per row, got length {inputs_q.shape[1]}")
                index = cache_index.value
                keys = jax.lax.dynamic_update_slice(
                    cached_key.value, jnp.swapaxes(key, 1, 2).astype(cached_key.value.dtype), (0, 0, index, 0)
                )
                values = jax.lax.dynamic_update_slice(
                    cached_value.value, jnp.swapaxes(value, 1, 2).astype(cached_value.value.dtype), (0, 0, index, 0)
                )
                cached_key.value = keys
                cached_value.value = values
                cache_index.value = index + 1
                out = self._attend(query, keys, values, bias, deterministic, "bhkd")
                return self._project_out(out)

        return self._project_out(self._attend(query, key, value, bias, deterministic, "bkhd"))

    def _attend(self, query, key, value, bias, deterministic: bool, kv_layout: str) -> jax.Array:
        """Softmax attention of query [rows, q, heads, kv] over key/value laid out as
        `kv_layout` ("bkhd": [batch, len, heads, kv]; "bhkd": the decode cache's).

        `rows` may be a multiple of `batch`: consecutive groups of query rows then share one
        row of keys/values (beam search's beams of one example and that example's encoder
        output), which each step then reads once per example instead of once per beam."""
        cfg = self.config
        rows, batch = query.shape[0], key.shape[0]
        if rows % batch:
            raise ValueError(f"{rows} query rows cannot share {batch} rows of keys/values")
        group = rows // batch
        # [rows, heads, q_len, kv_len]; T5 folds 1/sqrt(d_kv) into the query init.
        if group == 1:
            logits = jnp.einsum(f"bqhd,{kv_layout}->bhqk", query, key, preferred_element_type=jnp.float32)
        else:
            grouped = query.reshape(batch, group, *query.shape[1:])  # [batch, group, q, heads, kv]
            logits = jnp.einsum(f"bgqhd,{kv_layout}->bghqk", grouped, key, preferred_element_type=jnp.float32)
            logits = logits.reshape(rows, *logits.shape[2:])
        if bias is not None:
            logits = logits + bias
        weights = jax.nn.softmax(logits, axis=-1)
        weights = nn.Dropout(cfg.dropout_rate)(weights, deterministic=deterministic)
        weights = weights.astype(cfg.compute_dtype)
        if group == 1:
            return jnp.einsum(f"bhqk,{kv_layout}->bqhd", weights, value)  # [rows, q, heads, kv]
        out = jnp.einsum(f"bghqk,{kv_layout}->bgqhd", weights.reshape(batch, group, *weights.shape[1:]), value)
        return out.reshape(rows, *out.shape[2:])

    def _project_out(self, out: jax.Array) -> jax.Array:
        cfg = self.config
        heads, d_kv, d_model = cfg.num_heads, cfg.d_kv, cfg.d_model
        out = constrain(out, ("batch", "length", "heads", "kv"))
        out = Projection(cfg, (d_model,), ("heads", "kv", "embed"), (heads * d_kv) ** -0.5, name="out")(out)
        return constrain(out, ("batch", "length", "embed"))


@functools.lru_cache(maxsize=None)
def _bucket_table(num_buckets: int, max_distance: int) -> np.ndarray:
    """Bucket of each one-sided distance n in [0, max_distance] (larger n: the last bucket).

    Evaluated once in float32 numpy with the same operations as HF/mesh-tf, so that the
    boundaries (e.g. n = 16, 32, 64) land exactly where the reference puts them.
    """
    max_exact = num_buckets // 2
    n = np.arange(max_distance + 1)
    ratio = np.maximum(n, 1).astype(np.float32) / np.float32(max_exact)
    large = np.float32(max_exact) + (
        np.log(ratio) / np.float32(math.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact)
    )
    large = np.minimum(large.astype(np.int64), num_buckets - 1)
    return np.where(n < max_exact, n, large).astype(np.int32)


def relative_position_bucket(
    relative_position: jax.Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    """T5 bucketing of (memory_position - query_position); int32 in [0, num_buckets)."""
    if bidirectional:
        half = num_buckets // 2
        table = jnp.asarray(_bucket_table(half, max_distance))
        distance = jnp.minimum(jnp.abs(relative_position), max_distance)
        return jnp.where(relative_position > 0, half, 0) + table[distance]
    table = jnp.asarray(_bucket_table(num_buckets, max_distance))
    distance = jnp.minimum(jnp.maximum(-relative_position, 0), max_distance)
    return table[distance]


class RelativePositionBias(nn.Module):
    """Per-head scalar bias of each (query, key) position pair: one table per stack, or per
    layer (T5Config.relative_attention_per_layer)."""

    config: T5Config
    bidirectional: bool

    @nn.compact
    def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
        # query_positions [batch|1, q_len], key_positions [batch|1, k_len] (int32)
        cfg = self.config
        table = self.param(
            "rel_embedding",
            _init(cfg.d_model**-0.5, ("relpos_buckets", "heads")),
            (cfg.relative_attention_num_buckets, cfg.num_heads),
            cfg.params_dtype,
        )
        relative = key_positions[:, None, :] - query_positions[:, :, None]  # [b, q, k]
        buckets = relative_position_bucket(
            relative,
            self.bidirectional,
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
        )
        values = jnp.take(table.astype(jnp.float32), buckets, axis=0)  # [b, q, k, heads]
        return jnp.transpose(values, (0, 3, 1, 2))  # [b, heads, q, k]


def mask_to_bias(mask: jax.Array) -> jax.Array:
    """bool [batch, 1, q, k] (True = may attend) -> additive float32 bias."""
    return jnp.where(mask, 0.0, NEG_INF).astype(jnp.float32)


def attention_mask(
    query_valid: Optional[jax.Array],
    key_valid: jax.Array,
    query_segment_ids: Optional[jax.Array] = None,
    key_segment_ids: Optional[jax.Array] = None,
    causal: bool = False,
) -> jax.Array:
    """bool [batch, 1, q_len, k_len]: key is real, same segment (packed rows), causal.

    query_valid may be None (padding queries are left unmasked, as HF does; their outputs are
    never used).
    """
    mask = key_valid[:, None, None, :]
    if query_valid is not None:
        mask = mask & query_valid[:, None, :, None]
    if query_segment_ids is not None and key_segment_ids is not None:
        mask = mask & (query_segment_ids[:, None, :, None] == key_segment_ids[:, None, None, :])
    if causal:  # self-attention over the full sequence: queries and keys are the same positions
        length = key_valid.shape[-1]
        mask = mask & jnp.tril(jnp.ones((length, length), bool))[None, None]
    return mask


_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
}


@functools.lru_cache(maxsize=None)
def remat_layer(layer: type, policy: str, static_argnums: tuple[int, ...]) -> type:
    """`layer` itself, or wrapped in nn.remat with `policy` (a REMAT_POLICIES name);
    parameter names are unchanged either way. Every family's layers go through it."""
    if policy == "none":
        return layer
    return nn.remat(layer, policy=_REMAT_POLICIES[policy], static_argnums=static_argnums)
