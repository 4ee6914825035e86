"""The T5 encoder-decoder (v1.0, v1.1, Flan-T5) in Flax linen.

API
---
    model = T5(config)                      # config: dss_jax.model.config.T5Config
    variables = model.init(rngs, encoder_input_tokens, decoder_input_tokens)
    logits = model.apply(variables, encoder_input_tokens, decoder_input_tokens,
                         encoder_segment_ids=None, decoder_segment_ids=None,
                         encoder_positions=None, decoder_positions=None,
                         enable_dropout=False, rngs={"dropout": key})   # float32 [b, dec_len, vocab]
    encoded = model.apply(variables, tokens, ..., method=T5.encode)      # [b, enc_len, d_model]
    logits = model.apply(variables, encoded, encoder_input_tokens, decoder_input_tokens, ...,
                         method=T5.decode)

Packed rows: segment ids (1..n, 0 = padding) restrict self-attention to the same segment
and cross-attention to the encoder tokens of the same segment; positions (restarting at 0 in
each segment) feed the relative position bias, so each segment sees exactly what it would
see alone. Encoder tokens equal to 0 (padding) are never attended to.

Incremental decoding (used by dss_jax.model.decoding):
    _, state = model.apply({"params": params}, encoded, enc_tokens,
                           jnp.zeros([batch, max_len], jnp.int32), decode=True,
                           mutable=["cache", "encoded_kv"], method=T5.decode)  # creates the cache
    cache, encoded_kv = state["cache"], state["encoded_kv"]
    logits, state = model.apply({"params": params, "cache": cache, "encoded_kv": encoded_kv},
                                encoded, enc_tokens, tokens[:, None], decode=True,
                                mutable=["cache"], method=T5.decode)  # logits [b, 1, vocab]
The cache holds, per decoder self-attention layer, cached_key / cached_value
[batch, heads, max_len, kv] (heads-major: the layout each step's attention reads) and
cache_index (); the decoder stack keeps its own cache_index (the query position of the next
step, used for the relative position bias and causal mask). "encoded_kv" holds each
layer's cross-attention keys and values of the encoder output [batch, heads, enc_len, kv]:
made once, read by every step (optional: without it each step projects the encoder output).

Parameter tree (`variables["params"]`):
    token_embedder/embedding [vocab, embed]
    encoder/relpos_bias/rel_embedding [buckets, heads]   (shared by all encoder layers; with
        relative_attention_per_layer each layer owns one: encoder/layers_{i}/relpos_bias/...)
    encoder/layers_{i}/{pre_attention_layer_norm, attention/{query,key,value,out},
                        pre_mlp_layer_norm, mlp/{wi | wi_0, wi_1, wo}}
    encoder/encoder_norm/scale
    decoder/relpos_bias/rel_embedding
    decoder/layers_{i}/{pre_self_attention_layer_norm, self_attention,
                        pre_cross_attention_layer_norm, encoder_decoder_attention,
                        pre_mlp_layer_norm, mlp}
    decoder/decoder_norm/scale
    decoder/logits_dense/kernel [embed, vocab]     (untied variants only)
"""

from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from dss_jax.model.config import T5Config
from dss_jax.model.layers import (
    Embed,
    LmHead,
    MlpBlock,
    MultiHeadAttention,
    RelativePositionBias,
    RMSNorm,
    attention_mask,
    constrain,
    mask_to_bias,
    remat_layer,
)


def _own_relpos_bias(cfg: T5Config, bidirectional: bool, bias: jax.Array, positions) -> jax.Array:
    """`bias` plus the calling layer's own relative-position bias of `positions` (query
    positions, key positions) when each layer owns a table, else `bias` itself (it already
    holds the stack's shared table's)."""
    if not cfg.relative_attention_per_layer:
        return bias
    return RelativePositionBias(cfg, bidirectional=bidirectional, name="relpos_bias")(*positions) + bias


class EncoderLayer(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(
        self, x: jax.Array, bias: jax.Array, deterministic: bool, positions: Optional[tuple] = None
    ) -> jax.Array:
        # x [batch, length, embed]; positions: (query, key) positions for a table of its own
        cfg = self.config
        bias = _own_relpos_bias(cfg, True, bias, positions)
        h = RMSNorm(cfg, name="pre_attention_layer_norm")(x)
        h = MultiHeadAttention(cfg, name="attention")(h, h, bias, deterministic)
        x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        h = RMSNorm(cfg, name="pre_mlp_layer_norm")(x)
        h = MlpBlock(cfg, name="mlp")(h, deterministic)
        x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        return constrain(x, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(
        self,
        x: jax.Array,  # [batch, dec_len, embed]
        encoded: jax.Array,  # [batch, enc_len, embed]
        self_bias: jax.Array,
        cross_bias: jax.Array,
        deterministic: bool,
        decode: bool,
        positions: Optional[tuple] = None,  # (query, key) positions for a table of its own
    ) -> jax.Array:
        cfg = self.config
        self_bias = _own_relpos_bias(cfg, False, self_bias, positions)
        h = RMSNorm(cfg, name="pre_self_attention_layer_norm")(x)
        h = MultiHeadAttention(cfg, name="self_attention")(h, h, self_bias, deterministic, decode)
        x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        h = RMSNorm(cfg, name="pre_cross_attention_layer_norm")(x)
        h = MultiHeadAttention(cfg, name="encoder_decoder_attention")(
            h, encoded, cross_bias, deterministic, static_kv=decode
        )
        x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        h = RMSNorm(cfg, name="pre_mlp_layer_norm")(x)
        h = MlpBlock(cfg, name="mlp")(h, deterministic)
        x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        return constrain(x, ("batch", "length", "embed"))


def _default_positions(length: int) -> jax.Array:
    return jnp.arange(length, dtype=jnp.int32)[None, :]  # [1, length]


class Encoder(nn.Module):
    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,  # [batch, enc_len] int32
        segment_ids: Optional[jax.Array] = None,
        positions: Optional[jax.Array] = None,
        enable_dropout: bool = False,
    ) -> jax.Array:
        cfg = self.config
        deterministic = not enable_dropout
        if positions is None:
            positions = _default_positions(tokens.shape[1])
        mask = attention_mask(None, tokens > 0, segment_ids, segment_ids)
        bias = mask_to_bias(mask)  # [batch, 1, enc_len, enc_len]
        # Each layer adds its own table's bias (relative_attention_per_layer), or all share one.
        layer_positions = (positions, positions) if cfg.relative_attention_per_layer else None
        if layer_positions is None:
            relpos = RelativePositionBias(cfg, bidirectional=True, name="relpos_bias")
            bias = relpos(positions, positions) + bias  # [batch, heads, enc_len, enc_len]

        x = self.shared_embedding(tokens)  # [batch, enc_len, embed]
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        layer_cls = remat_layer(EncoderLayer, cfg.remat_policy, (3,))
        for i in range(cfg.num_encoder_layers):
            x = layer_cls(cfg, name=f"layers_{i}")(x, bias, deterministic, layer_positions)
        x = RMSNorm(cfg, name="encoder_norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        return constrain(x, ("batch", "length", "embed"))


class Decoder(nn.Module):
    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(
        self,
        encoded: jax.Array,  # [batch, enc_len, embed]
        encoder_input_tokens: jax.Array,  # [batch, enc_len]
        decoder_input_tokens: jax.Array,  # [batch, dec_len]
        encoder_segment_ids: Optional[jax.Array] = None,
        decoder_segment_ids: Optional[jax.Array] = None,
        decoder_positions: Optional[jax.Array] = None,
        enable_dropout: bool = False,
        decode: bool = False,
        max_decode_length: Optional[int] = None,
    ) -> jax.Array:
        cfg = self.config
        deterministic = not enable_dropout
        per_layer = cfg.relative_attention_per_layer
        # With a table per layer each layer adds its own bias of these positions; else all share one.
        relpos = None if per_layer else RelativePositionBias(cfg, bidirectional=False, name="relpos_bias")
        dec_len = decoder_input_tokens.shape[1]

        stepping = False
        if decode:
            stepping = self.has_variable("cache", "cache_index")
            cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if stepping:
            # One token per row at query position cache_index, over all cached key slots.
            max_len = self._cache_length()
            if max_decode_length is not None and max_decode_length != max_len:
                raise ValueError(f"max_decode_length={max_decode_length} but the cache holds {max_len} steps")
            index = cache_index.value
            key_positions = _default_positions(max_len)  # [1, max_len]
            self_positions = (index[None, None], key_positions)
            self_bias = mask_to_bias((key_positions <= index)[:, None, None, :])  # [1, 1, 1, max_len]
            cache_index.value = index + 1
            # A finished cache cannot take another step: the update would be silently clipped.
        else:
            positions = decoder_positions
            if positions is None:
                positions = _default_positions(dec_len)
            self_positions = (positions, positions)
            mask = attention_mask(
                None, jnp.ones(decoder_input_tokens.shape, bool), decoder_segment_ids, decoder_segment_ids, causal=True
            )
            self_bias = mask_to_bias(mask)
        if relpos is not None:
            self_bias = relpos(*self_positions) + self_bias  # [batch|1, heads, dec_len|1, dec_len|max_len]

        # Cross-attention: only real encoder tokens of the same segment; no position bias.
        cross_mask = attention_mask(
            None, encoder_input_tokens > 0, None if stepping else decoder_segment_ids, encoder_segment_ids
        )
        cross_bias = mask_to_bias(cross_mask)  # [batch, 1, dec_len|1, enc_len]

        x = self.shared_embedding(decoder_input_tokens)  # [batch, dec_len, embed]
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        # Rematerialisation is a training-time trade; decoding steps run the plain layer.
        layer_cls = remat_layer(DecoderLayer, "none" if decode else cfg.remat_policy, (5, 6))
        for i in range(cfg.num_decoder_layers):
            x = layer_cls(cfg, name=f"layers_{i}")(
                x, encoded, self_bias, cross_bias, deterministic, decode, self_positions if per_layer else None
            )
        x = RMSNorm(cfg, name="decoder_norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)

        if cfg.scales_decoder_output:
            # Original T5 rescales before the tied head (the embedding has unit variance).
            x = x * (cfg.d_model**-0.5)
        if cfg.tie_word_embeddings:
            logits = self.shared_embedding.attend(x)
        else:
            logits = LmHead(cfg, name="logits_dense")(x)
        return constrain(logits, ("batch", "length", "vocab"))  # float32 [batch, dec_len, vocab]

    def _cache_length(self) -> int:
        cache = self.variables["cache"]
        try:
            return cache["layers_0"]["self_attention"]["cached_key"].shape[2]  # [batch, heads, len, kv]
        except KeyError:
            raise ValueError(
                "the decoder cache lacks layers_0/self_attention/cached_key; create it with a "
                "decode=True call on [batch, max_decode_length] tokens and mutable=['cache']"
            ) from None


class T5(nn.Module):
    """T5 encoder-decoder; see the module docstring for the call conventions."""

    config: T5Config

    def setup(self):
        self.token_embedder = Embed(self.config)
        self.encoder = Encoder(self.config, shared_embedding=self.token_embedder)
        self.decoder = Decoder(self.config, shared_embedding=self.token_embedder)

    def encode(
        self,
        encoder_input_tokens: jax.Array,
        encoder_segment_ids: Optional[jax.Array] = None,
        encoder_positions: Optional[jax.Array] = None,
        enable_dropout: bool = False,
    ) -> jax.Array:
        return self.encoder(encoder_input_tokens, encoder_segment_ids, encoder_positions, enable_dropout)

    def decode(
        self,
        encoded: jax.Array,
        encoder_input_tokens: jax.Array,
        decoder_input_tokens: jax.Array,
        encoder_segment_ids: Optional[jax.Array] = None,
        decoder_segment_ids: Optional[jax.Array] = None,
        decoder_positions: Optional[jax.Array] = None,
        enable_dropout: bool = False,
        decode: bool = False,
        max_decode_length: Optional[int] = None,
    ) -> jax.Array:
        return self.decoder(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            encoder_segment_ids=encoder_segment_ids,
            decoder_segment_ids=decoder_segment_ids,
            decoder_positions=decoder_positions,
            enable_dropout=enable_dropout,
            decode=decode,
            max_decode_length=max_decode_length,
        )

    def __call__(
        self,
        encoder_input_tokens: jax.Array,  # [batch, enc_len]
        decoder_input_tokens: jax.Array,  # [batch, dec_len]
        encoder_segment_ids: Optional[jax.Array] = None,
        decoder_segment_ids: Optional[jax.Array] = None,
        encoder_positions: Optional[jax.Array] = None,
        decoder_positions: Optional[jax.Array] = None,
        enable_dropout: bool = False,
    ) -> jax.Array:
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions, enable_dropout)
        return self.decode(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            encoder_segment_ids=encoder_segment_ids,
            decoder_segment_ids=decoder_segment_ids,
            decoder_positions=decoder_positions,
            enable_dropout=enable_dropout,
        )


def init_variables(config: T5Config, rng: jax.Array, batch: int = 1, enc_len: int = 1, dec_len: int = 1) -> dict:
    """Boxed variables (nn.Partitioned leaves carrying logical axis names)."""
    enc = jnp.ones((batch, enc_len), jnp.int32)
    dec = jnp.ones((batch, dec_len), jnp.int32)
    return T5(config).init({"params": rng, "dropout": rng}, enc, dec)


def logical_param_specs(config: T5Config):
    """PartitionSpecs of logical axis names for every param, without allocating any."""
    abstract = jax.eval_shape(functools.partial(init_variables, config), jax.random.key(0))
    return nn.get_partition_spec(abstract)["params"]
