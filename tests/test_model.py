"""The Flax T5 on its own (no torch): config, packing, incremental decoding, dtypes, axes."""

import dataclasses
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dss_jax.model.config import T5Config
from dss_jax.model.t5 import T5, init_variables, logical_param_specs

TINY = dict(vocab_size=97, relative_attention_num_buckets=8, relative_attention_max_distance=12, dropout_rate=0.0)
VARIANTS = ["t5.1.0", "t5.1.1"]


def _config(variant="t5.1.1", **kw):
    return T5Config.preset("tiny", variant, **{**TINY, **kw})


@functools.lru_cache(maxsize=None)
def _params(config: T5Config, seed: int = 0):
    """Random params drawn with numpy in the model's shapes (compiling init is slow on CPU)."""
    shapes = jax.eval_shape(functools.partial(init_variables, config), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "scale" in name:  # norms start at one; perturbed so a mis-wired norm cannot hide
            return 1.0 + 0.3 * rng.standard_normal(leaf.shape, np.float32)
        std = 1.0 if "embedding" in name else 0.3 if "rel_embedding" in name else leaf.shape[0] ** -0.5
        if "query" in name:
            std /= config.d_kv**0.5
        return (std * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(shapes["params"]))


@functools.partial(jax.jit, static_argnames=("config", "method", "enable_dropout"))
def _apply(config, params, *args, method="__call__", enable_dropout=False, rng=None):
    """Jitted T5(config).apply (eager op-by-op dispatch is slow on a small CPU)."""
    model = T5(config)
    rngs = {"dropout": rng} if rng is not None else None
    kwargs = {"enable_dropout": enable_dropout} if method in ("__call__", "encode") else {}
    return model.apply({"params": params}, *args, method=getattr(model, method), rngs=rngs, **kwargs)


def _tokens(rng, batch, length, pad_from=None, low=2, high=96):
    t = rng.integers(low, high, (batch, length)).astype(np.int32)
    if pad_from is not None:
        for row, start in enumerate(pad_from):
            t[row, start:] = 0
    return t


# ----- config -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "size,expected",
    [
        ("small", (512, 1024, 6, 64, 8)),
        ("base", (768, 2048, 12, 64, 12)),
        ("large", (1024, 2816, 16, 64, 24)),
        ("xl", (2048, 5120, 32, 64, 24)),
        ("xxl", (4096, 10240, 64, 64, 24)),
    ],
)
def test_presets_have_published_v11_sizes(size, expected):
    for variant in ("t5.1.1", "flan"):
        c = T5Config.preset(size, variant)
        assert (c.d_model, c.d_ff, c.num_heads, c.d_kv, c.num_encoder_layers) == expected
        assert c.num_decoder_layers == expected[-1] and c.vocab_size == 32128
        assert c.feed_forward == "gated-gelu" and c.activation == "gelu_new"
        assert not c.tie_word_embeddings and not c.scales_decoder_output


def test_v10_variant_is_relu_tied_and_scaled():
    c = T5Config.preset("base", "t5.1.0")
    assert (c.d_model, c.d_ff, c.num_heads) == (768, 3072, 12)
    assert c.feed_forward == "relu" and c.tie_word_embeddings and c.scales_decoder_output


def test_config_serialisation_round_trips():
    c = _config("t5.1.0", dtype=jnp.bfloat16, remat_policy="minimal")
    assert c.dtype == "bfloat16" and c.compute_dtype == jnp.bfloat16
    assert T5Config.from_dict(json.loads(c.to_json())) == c
    assert T5Config.from_hf_config(c.to_hf_config(), dtype="bfloat16", remat_policy="minimal", dropout_rate=0.0) == c
    with pytest.raises(ValueError, match="model_type"):
        T5Config.from_dict({"model_type": "t5", "d_model": 8})


def test_hf5_style_config_is_read_as_untied():
    # transformers 5 writes tie_word_embeddings=true for v1.1 and keeps the truth elsewhere.
    hf = _config("t5.1.1").to_hf_config()
    hf.update(tie_word_embeddings=True, scale_decoder_outputs=False)
    c = T5Config.from_hf_config(hf)
    assert not c.tie_word_embeddings and not c.scales_decoder_output


@pytest.mark.parametrize(
    "bad, said",
    [
        (dict(feed_forward="gated-tanh"), "feed_forward"),
        (dict(remat_policy="some"), "remat_policy"),
        (dict(dtype="float99"), "not a dtype name"),
        (dict(d_model=0), "d_model must be a positive integer"),
        # Accepted before: an integer compute dtype trains nothing (the loss stays at
        # ln(vocab)), and the others fail far from the setting or silently.
        (dict(dtype="int8"), "T5Config.dtype='int8' is not a floating-point dtype"),
        (dict(param_dtype="int32"), "T5Config.param_dtype='int32' is not a floating-point dtype"),
        (dict(dtype="bool"), "not a floating-point dtype"),
        (dict(num_decoder_layers=0), "num_decoder_layers must be a positive integer"),
        (dict(d_ff=64.5), "d_ff must be a positive integer"),
        (dict(dropout_rate=1.0), "dropout_rate must be a number in [0, 1)"),
        (dict(dropout_rate=float("nan")), "dropout_rate must be a number in [0, 1)"),
        (dict(layer_norm_epsilon=0.0), "layer_norm_epsilon must be a finite number > 0"),
        (dict(eos_token_id=10**6), "eos_token_id must be a token id in [0, vocab_size="),
        (dict(pad_token_id=-1), "pad_token_id must be a token id"),
    ],
)
def test_config_rejects_bad_values(bad, said):
    with pytest.raises(ValueError) as e:
        _config(**bad)
    assert said in str(e.value)


# ----- shapes, axes -------------------------------------------------------------------------
ALLOWED_AXES = {"vocab", "embed", "mlp", "heads", "kv", "relpos_buckets"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_param_has_logical_axis_names(variant):
    config = _config(variant)
    specs = logical_param_specs(config)
    shapes = jax.eval_shape(functools.partial(init_variables, config), jax.random.key(0))
    flat_specs = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    flat_shapes = jax.tree_util.tree_leaves(nn.meta.unbox(shapes["params"]))
    assert len(flat_specs) == len(flat_shapes) > 10
    for (path, spec), shape in zip(flat_specs, flat_shapes):
        assert isinstance(spec, jax.sharding.PartitionSpec), path
        assert len(spec) == len(shape.shape), path
        assert all(name in ALLOWED_AXES for name in spec), (path, spec)
    names = {jax.tree_util.keystr(p) for p, _ in flat_specs}
    assert any("logits_dense" in n for n in names) == (variant == "t5.1.1")
    assert sum("rel_embedding" in n for n in names) == 2  # one table per stack


def test_logits_are_float32_with_expected_shape():
    config = _config()
    rng = np.random.default_rng(0)
    logits = _apply(config, _params(config), _tokens(rng, 2, 7), _tokens(rng, 2, 5))
    assert logits.shape == (2, 5, config.vocab_size) and logits.dtype == jnp.float32


def test_model_runs_sharded_under_logical_axis_rules(cpu_devices):
    config = _config(vocab_size=96)  # divisible by the model axis
    mesh = jax.sharding.Mesh(np.array(cpu_devices[:4]).reshape(2, 2), ("data", "model"))
    rules = (
        ("batch", "data"),
        ("heads", "model"),
        ("mlp", "model"),
        ("vocab", "model"),
        ("embed", None),
        ("kv", None),
        ("length", None),
        ("relpos_buckets", None),
    )
    rng = np.random.default_rng(1)
    enc, dec = _tokens(rng, 4, 6), _tokens(rng, 4, 5)
    params = _params(config)
    expected = _apply(config, params, enc, dec)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        sharded = jax.jit(lambda p, e, d: T5(config).apply({"params": p}, e, d))(params, enc, dec)
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(expected), atol=1e-5)


# ----- packing ------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_packed_row_equals_segments_run_alone(variant):
    config = _config(variant)
    params = _params(config)
    rng = np.random.default_rng(2)
    # Two examples; their lengths exceed the bucket max distance so the log buckets matter.
    enc_a, enc_b = _tokens(rng, 1, 13)[0], _tokens(rng, 1, 6)[0]
    dec_a, dec_b = _tokens(rng, 1, 9)[0], _tokens(rng, 1, 14)[0]
    dec_a[0] = dec_b[0] = 0  # decoder start token

    def pack(a, b, total):
        tokens = np.zeros((1, total), np.int32)
        seg = np.zeros((1, total), np.int32)
        pos = np.zeros((1, total), np.int32)
        tokens[0, : len(a)], tokens[0, len(a) : len(a) + len(b)] = a, b
        seg[0, : len(a)], seg[0, len(a) : len(a) + len(b)] = 1, 2
        pos[0, : len(a)], pos[0, len(a) : len(a) + len(b)] = np.arange(len(a)), np.arange(len(b))
        return tokens, seg, pos

    enc, enc_seg, enc_pos = pack(enc_a, enc_b, 22)
    dec, dec_seg, dec_pos = pack(dec_a, dec_b, 26)

    @jax.jit
    def run(*args):  # logits and encoder output in one compilation
        model = T5(config)
        return (
            model.apply({"params": params}, *args),
            model.apply({"params": params}, args[0], *args[2:5:2], method=T5.encode),
        )

    packed, packed_enc = run(enc, dec, enc_seg, dec_seg, enc_pos, dec_pos)
    # Alone: both examples as two ordinary padded rows, no segment ids or positions.
    enc_alone = np.zeros((2, 13), np.int32)
    enc_alone[0], enc_alone[1, :6] = enc_a, enc_b
    dec_alone = np.zeros((2, 14), np.int32)
    dec_alone[0, :9], dec_alone[1] = dec_a, dec_b
    alone, alone_enc = run(enc_alone, dec_alone)
    np.testing.assert_allclose(packed[0, :9], alone[0, :9], atol=1e-5)
    np.testing.assert_allclose(packed[0, 9:23], alone[1], atol=1e-5)
    np.testing.assert_allclose(packed_enc[0, :13], alone_enc[0], atol=1e-5)
    np.testing.assert_allclose(packed_enc[0, 13:19], alone_enc[1, :6], atol=1e-5)
    # As one segment the two examples do see each other: the test above is not vacuous.
    one = np.ones_like
    arange = lambda x: np.arange(x.shape[1], dtype=np.int32)[None]
    unpacked, _ = run(enc, dec, one(enc), one(dec), arange(enc), arange(dec))
    assert np.abs(np.asarray(unpacked[0, 9:23]) - np.asarray(alone[1])).max() > 1e-3


def test_encoder_padding_does_not_change_logits():
    config = _config()
    params = _params(config)
    rng = np.random.default_rng(3)
    enc, dec = _tokens(rng, 1, 8), _tokens(rng, 1, 6)
    padded = np.concatenate([enc, np.zeros((1, 5), np.int32)], axis=1)
    a = _apply(config, params, enc, dec)
    b = _apply(config, params, padded, dec)
    np.testing.assert_allclose(a, b, atol=1e-5)


# ----- incremental decoding -----------------------------------------------------------------
def _step_by_step(config, params, enc, dec, static_kv=False):
    """Decodes `dec` token by token; with `static_kv` the cross-attention keys/values of
    the encoder output are made once ("encoded_kv") instead of at every step."""
    model = T5(config)
    encoded = _apply(config, params, enc, method="encode")
    mutable = ["cache", "encoded_kv"] if static_kv else ["cache"]
    init_state = jax.jit(
        lambda: model.apply(
            {"params": params}, encoded, enc, jnp.zeros_like(dec), decode=True, mutable=mutable, method=T5.decode
        )[1]
    )
    state = init_state()
    cache, static = state["cache"], state.get("encoded_kv", {})

    # With stored keys/values the steps must not read the encoder output again: give them zeros.
    step_encoded = jnp.zeros_like(encoded) if static_kv else encoded

    @jax.jit
    def step(cache, token):
        logits, state = model.apply(
            {"params": params, "cache": cache, **({"encoded_kv": static} if static else {})},
            step_encoded,
            enc,
            token,
            decode=True,
            mutable=["cache"],
            method=T5.decode,
        )
        return logits, state["cache"]

    initial = cache
    outs = []
    for t in range(dec.shape[1]):
        logits, cache = step(cache, dec[:, t : t + 1])
        outs.append(logits)
    if static_kv:
        return initial, cache, jnp.concatenate(outs, axis=1), static
    return initial, cache, jnp.concatenate(outs, axis=1)


def test_stored_cross_attention_keys_values_give_the_same_steps():
    config = _config()
    params = _params(config)
    rng = np.random.default_rng(7)
    enc = _tokens(rng, 3, 10, pad_from=[10, 6, 3])
    dec = _tokens(rng, 3, 6)
    dec[:, 0] = 0
    _, _, plain = _step_by_step(config, params, enc, dec)
    _, _, stored, static = _step_by_step(config, params, enc, dec, static_kv=True)
    np.testing.assert_allclose(stored, plain, atol=1e-5)
    np.testing.assert_allclose(stored, _apply(config, params, enc, dec), atol=1e-5)
    layer = static["decoder"]["layers_0"]["encoder_decoder_attention"]
    assert layer["static_key"].shape == (3, config.num_heads, 10, config.d_kv)
    assert layer["static_value"].shape == (3, config.num_heads, 10, config.d_kv)
    assert len(static["decoder"]) == config.num_decoder_layers


def test_groups_of_rows_share_one_row_of_stored_cross_attention_keys_values():
    # Beam search: an example's beams (consecutive rows) read its one stored copy.
    config = _config()
    params = _params(config)
    rng = np.random.default_rng(8)
    enc = _tokens(rng, 3, 10, pad_from=[10, 6, 3])
    repeated = np.repeat(enc, 2, axis=0)
    dec = _tokens(rng, 6, 5)  # a different continuation in every row
    dec[:, 0] = 0
    model = T5(config)
    static = model.apply(
        {"params": params},
        _apply(config, params, enc, method="encode"),
        enc,
        jnp.zeros((3, 5), jnp.int32),
        decode=True,
        mutable=["cache", "encoded_kv"],
        method=T5.decode,
    )[1]["encoded_kv"]
    cache = model.apply(
        {"params": params},
        jnp.zeros((6, 10, config.d_model)),
        repeated,
        jnp.zeros_like(dec),
        decode=True,
        mutable=["cache"],
        method=T5.decode,
    )[1]["cache"]
    outs = []
    for t in range(dec.shape[1]):
        logits, state = model.apply(
            {"params": params, "cache": cache, "encoded_kv": static},
            jnp.zeros((6, 10, config.d_model)),
            repeated,
            dec[:, t : t + 1],
            decode=True,
            mutable=["cache"],
            method=T5.decode,
        )
        cache = state["cache"]
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), _apply(config, params, repeated, dec), atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_incremental_decoding_matches_full_decoder_pass(variant):
    config = _config(variant)
    params = _params(config)
    rng = np.random.default_rng(4)
    enc = _tokens(rng, 3, 10, pad_from=[10, 6, 3])
    dec = _tokens(rng, 3, 15)  # longer than the bucket max distance
    dec[:, 0] = 0
    full = _apply(config, params, enc, dec)
    initial, final, stepped = _step_by_step(config, params, enc, dec)
    np.testing.assert_allclose(stepped, full, atol=1e-5)

    # The cache layout the decoding algorithms rely on.
    layer = initial["decoder"]["layers_0"]["self_attention"]
    assert layer["cached_key"].shape == (3, config.num_heads, 15, config.d_kv)
    assert layer["cached_value"].shape == (3, config.num_heads, 15, config.d_kv)
    assert layer["cache_index"].shape == () and layer["cache_index"].dtype == jnp.int32
    indices = [x for p, x in jax.tree_util.tree_leaves_with_path(initial) if "cache_index" in str(p)]
    assert indices and all(int(i) == 0 for i in indices)
    indices = [x for p, x in jax.tree_util.tree_leaves_with_path(final) if "cache_index" in str(p)]
    assert all(int(i) == 15 for i in indices)
    for path, leaf in jax.tree_util.tree_leaves_with_path(final):
        assert leaf.ndim == 0 or leaf.shape[0] == 3, path  # leading batch dim everywhere else


def test_decoding_with_bfloat16_runs_and_is_close():
    config = _config()
    params = _params(config)
    rng = np.random.default_rng(5)
    enc, dec = _tokens(rng, 2, 9, pad_from=[9, 4]), _tokens(rng, 2, 7)
    full32 = np.asarray(_apply(config, params, enc, dec))
    config16 = config.replace(dtype="bfloat16")
    full16 = _apply(config16, params, enc, dec)
    assert full16.dtype == jnp.float32
    full16 = np.asarray(full16)
    assert np.isfinite(full16).all()
    scale = np.abs(full32).max()
    assert np.abs(full16 - full32).max() < 0.05 * scale
    assert np.abs(full16 - full32).max() > 0  # bf16 compute really happened
    _, _, stepped16 = _step_by_step(config16, params, enc, dec)
    assert np.abs(np.asarray(stepped16) - full32).max() < 0.05 * scale


# ----- dropout and remat --------------------------------------------------------------------
def test_dropout_only_with_enable_dropout():
    config = _config(dropout_rate=0.3, num_encoder_layers=1, num_decoder_layers=1)
    params = _params(config)
    rng = np.random.default_rng(6)
    enc, dec = _tokens(rng, 2, 6), _tokens(rng, 2, 5)
    off = _apply(config, params, enc, dec)
    np.testing.assert_allclose(off, _apply(config.replace(dropout_rate=0.0), params, enc, dec), atol=1e-6)
    key = functools.partial(jax.random.key, impl="rbg")  # compiles much faster than threefry
    on1 = _apply(config, params, enc, dec, enable_dropout=True, rng=key(1))
    on1b = _apply(config, params, enc, dec, enable_dropout=True, rng=key(1))
    on2 = _apply(config, params, enc, dec, enable_dropout=True, rng=key(2))
    np.testing.assert_array_equal(on1, on1b)
    assert np.abs(np.asarray(on1) - np.asarray(off)).max() > 1e-3
    assert np.abs(np.asarray(on1) - np.asarray(on2)).max() > 1e-3


@functools.partial(jax.jit, static_argnums=0)
def _loss_and_grad(config, params, enc, dec, tgt):
    def loss(p):
        logits = T5(config).apply({"params": p}, enc, dec)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tgt[..., None], -1))

    return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize("policy", ["full", "minimal"])
def test_remat_gives_the_same_loss_and_gradients(policy):
    base = _config(num_encoder_layers=1, num_decoder_layers=1)
    params = _params(base)
    rng = np.random.default_rng(7)
    enc, dec, tgt = _tokens(rng, 2, 6), _tokens(rng, 2, 5), _tokens(rng, 2, 5)

    l0, g0 = _loss_and_grad(base, params, enc, dec, tgt)
    l1, g1 = _loss_and_grad(dataclasses.replace(base, remat_policy=policy), params, enc, dec, tgt)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g0, g1)


@pytest.mark.parametrize(
    "x_shape,kernel_shape,n_in,dtype,out_dtype",
    [
        ((2, 5, 8), (8, 3, 4), 1, jnp.float32, None),  # q/k/v: embed -> heads x kv
        ((2, 5, 3, 4), (3, 4, 8), 2, jnp.float32, None),  # attention output: heads x kv -> embed
        ((2, 5, 8), (8, 16), 1, jnp.bfloat16, jnp.float32),  # lm head: float32 logits of bf16 inputs
    ],
)
def test_projection_gradients_equal_the_plain_contraction(x_shape, kernel_shape, n_in, dtype, out_dtype):
    # layers.project carries its own weight gradient on CPU (cpu_tuning: an explicit
    # transpose of the input); it must give what differentiating the plain dot_general gives.
    from dss_jax.model import cpu_tuning, layers

    kx, kk, kc = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, x_shape).astype(dtype)
    kernel = jax.random.normal(kk, kernel_shape).astype(dtype)
    out_shape = x_shape[: len(x_shape) - n_in] + kernel_shape[n_in:]
    cotangent = jax.random.normal(kc, out_shape)
    contract = (tuple(range(len(x_shape) - n_in, len(x_shape))), tuple(range(n_in)))

    def plain(x, kernel):
        y = jax.lax.dot_general(x, kernel, (contract, ((), ())), preferred_element_type=out_dtype)
        return jnp.sum(y.astype(jnp.float32) * cotangent)

    def ours(x, kernel):
        assert cpu_tuning.explicit_weight_gradient()  # the custom path, on this CPU
        return jnp.sum(layers.project(x, kernel, n_in, out_dtype).astype(jnp.float32) * cotangent)

    (value, grads), (expected_value, expected) = (
        jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(x, kernel) for f in (ours, plain)
    )
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(value, expected_value, rtol=tol)
    for g, e in zip(grads, expected):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(e, np.float32), rtol=tol, atol=tol)


def test_plain_contractions_compile_the_accelerator_weight_gradient():
    # dss_jax.aot compiles on CPU as a stand-in for an accelerator's program: inside
    # plain_contractions() the CPU-only explicit transpose (and its barrier) is left out.
    from dss_jax.model import cpu_tuning, layers

    x, kernel = jnp.ones((4, 8)), jnp.ones((8, 16))
    grad_hlo = lambda: jax.jit(jax.grad(lambda k: jnp.sum(layers.project(x, k, 1)))).lower(kernel).as_text()
    assert "optimization_barrier" in grad_hlo()
    with cpu_tuning.plain_contractions():
        assert "optimization_barrier" not in grad_hlo()
    assert "optimization_barrier" in grad_hlo()


# ----- a relative-position table per layer (T5X scalable_t5, transformers' UMT5) ------------
def _tables_per_layer(config: T5Config, params: dict) -> dict:
    """`params` of a shared-table model with each stack's table copied into every layer."""
    out = {**params}
    for stack, count in (("encoder", config.num_encoder_layers), ("decoder", config.num_decoder_layers)):
        tree = {k: v for k, v in params[stack].items() if k != "relpos_bias"}
        for i in range(count):
            tree[f"layers_{i}"] = {**tree[f"layers_{i}"], "relpos_bias": params[stack]["relpos_bias"]}
        out[stack] = tree
    return out


def test_layers_that_own_equal_tables_compute_exactly_the_shared_tables_model():
    shared = _config()
    per_layer = shared.replace(relative_attention_per_layer=True)
    specs = logical_param_specs(per_layer)
    for stack in ("encoder", "decoder"):
        assert "relpos_bias" not in specs[stack]
        for i in range(2):
            assert specs[stack][f"layers_{i}"]["relpos_bias"]["rel_embedding"] == jax.sharding.PartitionSpec(
                "relpos_buckets", "heads"
            )
    params = _params(shared)
    own = _tables_per_layer(shared, params)
    rng = np.random.default_rng(11)
    # Packed rows, longer than the bucket max distance: segment ids and positions reach every layer.
    enc, dec = _tokens(rng, 2, 16, pad_from=[16, 11]), _tokens(rng, 2, 15)
    segments = lambda t, cut: np.where(np.arange(t.shape[1]) < cut, 1, 2).astype(np.int32)[None].repeat(2, 0)
    positions = lambda s: np.where(s == 1, np.arange(s.shape[1]), np.arange(s.shape[1]) - (s == 1).sum(1)[:, None])
    enc_seg, dec_seg = segments(enc, 9), segments(dec, 6)
    packed = (enc, dec, enc_seg, dec_seg, positions(enc_seg).astype(np.int32), positions(dec_seg).astype(np.int32))
    np.testing.assert_array_equal(_apply(per_layer, own, *packed), _apply(shared, params, *packed))
    # Through the rematerialised layers of training too.
    np.testing.assert_array_equal(
        _apply(per_layer.replace(remat_policy="full"), own, *packed), _apply(shared, params, *packed)
    )


def test_a_model_with_a_table_per_layer_decodes_step_by_step_as_its_full_forward():
    config = _config(relative_attention_per_layer=True)
    params = _params(config)  # every layer's table drawn apart
    rng = np.random.default_rng(12)
    enc = _tokens(rng, 3, 10, pad_from=[10, 6, 3])
    dec = _tokens(rng, 3, 15)  # longer than the bucket max distance
    dec[:, 0] = 0
    full = _apply(config, params, enc, dec)
    _, _, stepped = _step_by_step(config, params, enc, dec)
    np.testing.assert_allclose(stepped, full, atol=1e-5)
    # Each layer reads its own table: layer 1 given layer 0's computes other logits.
    layer_1 = lambda tree: {**tree, "layers_1": {**tree["layers_1"], "relpos_bias": tree["layers_0"]["relpos_bias"]}}
    other = {**params, "encoder": layer_1(params["encoder"]), "decoder": layer_1(params["decoder"])}
    assert np.abs(np.asarray(_apply(config, other, enc, dec)) - np.asarray(full)).max() > 1e-3
