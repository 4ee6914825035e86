"""Parity with transformers' T5 (PyTorch, CPU) and the HF checkpoint import/export.

Every checkpoint is a tiny random model made here with `transformers`, saved to tmp_path.
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dss_jax.model import hf_convert, interface
from dss_jax.model.config import T5Config
from dss_jax.model.encoder_decoder import EncoderDecoderModel
from dss_jax.model.t5 import T5

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB, D_MODEL = 120, 32
HF_VARIANTS = {
    # Original T5: ReLU, tied head with the d_model**-0.5 rescale; default (32, 128) buckets.
    "t5.1.0": dict(config=dict(feed_forward_proj="relu", tie_word_embeddings=True), untie=False, hub_config=False),
    # T5 v1.1 / Flan-T5 as published on the Hub: gated-GELU, separate lm_head.weight and a
    # config.json with tie_word_embeddings=false (transformers 4 style). Few buckets and a short
    # max distance so the logarithmic buckets and the clipping are exercised.
    "t5.1.1": dict(
        config=dict(
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=20,
        ),
        untie=True,
        hub_config=True,
    ),
    # What transformers 5 saves for a fresh v1.1 config: the head tied to the embedding, no
    # rescale, `scale_decoder_outputs: false` in config.json.
    "gated-tied-hf5": dict(
        config=dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False), untie=False, hub_config=False
    ),
    # mT5 as published: T5 v1.1's network (MT5ForConditionalGeneration), its own model_type.
    "mt5": dict(
        config=dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
        untie=True,
        hub_config=False,
        model="MT5",
    ),
    # UMT5: a relative attention bias in every block (a student with relative_attention_per_layer).
    "umt5": dict(
        config=dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, relative_attention_num_buckets=8),
        untie=True,
        hub_config=False,
        model="UMT5",
    ),
}


def _hf_class(variant, suffix="ForConditionalGeneration"):
    return getattr(transformers, HF_VARIANTS[variant].get("model", "T5") + suffix)


def make_hf_checkpoint(path, variant, seed=0):
    """Saves a random tiny T5 of `variant` to `path`; returns the model as HF loads it."""
    spec = HF_VARIANTS[variant]
    config = _hf_class(variant, "Config")(
        vocab_size=VOCAB,
        d_model=D_MODEL,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        dropout_rate=0.1,
        decoder_start_token_id=0,
        **spec["config"],
    )
    torch.manual_seed(seed)
    model = _hf_class(variant)(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:  # norms start at one; a mis-wired norm would not show
                p.mul_(1.0 + 0.3 * torch.randn_like(p))
        if spec["untie"]:
            model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, D_MODEL) * D_MODEL**-0.5)
    model.save_pretrained(path)
    if spec["hub_config"]:
        hf = json.loads((path / "config.json").read_text())
        hf.pop("scale_decoder_outputs", None)
        hf["tie_word_embeddings"] = False
        (path / "config.json").write_text(json.dumps(hf))
    return _hf_class(variant).from_pretrained(path).eval()


@pytest.fixture(scope="module", params=list(HF_VARIANTS))
def hf_checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"hf_{request.param}")
    model = make_hf_checkpoint(path, request.param)
    return request.param, path, model


def _batch(seed=0):
    """Encoder inputs with padding, labels with -100 on padded target positions."""
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, VOCAB, (3, 31))
    enc[1, 17:] = 0
    enc[2, 5:] = 0
    labels = rng.integers(2, VOCAB, (3, 26))
    labels[0, 20:] = -100
    labels[2, 7:] = -100
    dec = np.zeros_like(labels)  # shift right, decoder start token 0, -100 -> pad 0
    dec[:, 1:] = np.where(labels[:, :-1] == -100, 0, labels[:, :-1])
    return enc, dec, labels


def _hf_forward(model, enc, dec, labels=None):
    with torch.no_grad():
        return model(
            input_ids=torch.tensor(enc),
            attention_mask=torch.tensor(enc != 0),
            decoder_input_ids=torch.tensor(dec),
            labels=None if labels is None else torch.tensor(labels),
        )


@jax.jit
def _masked_cross_entropy(logits, labels):
    valid = labels != -100
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    nll = -jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * valid) / jnp.sum(valid)


def _ours(config, params, enc, dec):
    model = T5(config)
    fwd = jax.jit(lambda p, e, d: (model.apply({"params": p}, e, d), model.apply({"params": p}, e, method=T5.encode)))
    logits, encoded = fwd(params, jnp.asarray(enc, jnp.int32), jnp.asarray(dec, jnp.int32))
    return np.asarray(logits), np.asarray(encoded)


def test_parity_with_transformers(hf_checkpoint):
    variant, path, hf_model = hf_checkpoint
    params, config, vocab = hf_convert.import_hf_checkpoint(path)
    assert vocab is None
    assert config.tie_word_embeddings == (not HF_VARIANTS[variant]["untie"])
    assert config.scales_decoder_output == (variant == "t5.1.0")
    assert config.relative_attention_per_layer == (variant == "umt5")
    if variant in ("umt5", "mt5"):  # as `convert --hf_dir` reads it: by config.json's model_type
        jax.tree.map(np.testing.assert_array_equal, interface.import_hf_checkpoint(path)[0], params)
    enc, dec, labels = _batch()
    out = _hf_forward(hf_model, enc, dec, labels)
    logits, encoded = _ours(config, params, enc, dec)
    assert logits.dtype == np.float32
    assert np.abs(encoded - out.encoder_last_hidden_state.numpy()).max() <= 1e-4
    assert np.abs(logits - out.logits.numpy()).max() <= 1e-4
    loss = float(_masked_cross_entropy(logits, labels))
    hf_loss = float(out.loss)
    assert abs(loss - hf_loss) <= 1e-5 * abs(hf_loss), (loss, hf_loss)


def test_round_trip_import_export_gives_identical_logits(hf_checkpoint, tmp_path):
    variant, path, hf_model = hf_checkpoint
    params, config, _ = hf_convert.import_hf_checkpoint(path)
    (tmp_path / "spiece.model").write_bytes(b"not really a sentencepiece model")
    out_dir = hf_convert.export_hf_checkpoint(params, config, tmp_path / "export", vocab_path=tmp_path / "spiece.model")
    assert (out_dir / "spiece.model").read_bytes() == b"not really a sentencepiece model"
    reloaded = _hf_class(variant).from_pretrained(out_dir).eval()
    enc, dec, _ = _batch(1)
    np.testing.assert_array_equal(
        _hf_forward(reloaded, enc, dec).logits.numpy(), _hf_forward(hf_model, enc, dec).logits.numpy()
    )
    exported = hf_convert.read_safetensors(out_dir / "model.safetensors")
    original = hf_convert.read_safetensors(path / "model.safetensors")
    copies = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    # An untied export carries the input embedding's copies (see test_exported_models_load_...).
    assert set(exported) == (set(original) - copies) | (copies if not config.tie_word_embeddings else set())
    for name, value in exported.items():
        np.testing.assert_array_equal(value, original["shared.weight" if name in copies else name], err_msg=name)
    # And our config survives the trip through transformers' config.json.
    again, config_again, _ = hf_convert.import_hf_checkpoint(out_dir)
    assert config_again == config


def test_relative_position_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    from dss_jax.model.layers import relative_position_bucket

    rel = np.arange(-400, 401)
    for bidirectional in (True, False):
        for buckets, max_distance in ((32, 128), (8, 20), (32, 64), (6, 7), (64, 256)):
            expected = T5Attention._relative_position_bucket(
                torch.tensor(rel), bidirectional=bidirectional, num_buckets=buckets, max_distance=max_distance
            ).numpy()
            ours = np.asarray(relative_position_bucket(jnp.asarray(rel), bidirectional, buckets, max_distance))
            np.testing.assert_array_equal(ours, expected)


@pytest.fixture(scope="module")
def v11_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_v11_files")
    model = make_hf_checkpoint(path, "t5.1.1", seed=3)
    return path, model


def _assert_same_params(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_sharded_safetensors_import(v11_dir, tmp_path):
    path, model = v11_dir
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    shutil.copyfile(path / "config.json", tmp_path / "config.json")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    _assert_same_params(hf_convert.import_hf_checkpoint(tmp_path)[0], hf_convert.import_hf_checkpoint(path)[0])


def test_pytorch_bin_import(v11_dir, tmp_path):
    path, model = v11_dir
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    shutil.copyfile(path / "config.json", tmp_path / "config.json")
    _assert_same_params(hf_convert.import_hf_checkpoint(tmp_path)[0], hf_convert.import_hf_checkpoint(path)[0])


def test_bfloat16_safetensors_import(v11_dir, tmp_path):
    from safetensors.torch import save_file

    path, model = v11_dir
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items() if "embed_tokens" not in k}
    save_file(state, tmp_path / "model.safetensors")
    shutil.copyfile(path / "config.json", tmp_path / "config.json")
    params16, config, _ = hf_convert.import_hf_checkpoint(tmp_path)
    params32 = hf_convert.import_hf_checkpoint(path)[0]

    def close(a, b):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-6)
        np.testing.assert_array_equal(a, b.astype(jnp.bfloat16).astype(np.float32))

    jax.tree.map(close, params16, params32)


def test_import_errors_name_the_problem(v11_dir, tmp_path):
    path, _ = v11_dir
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "config.json")):
        hf_convert.import_hf_checkpoint(tmp_path)
    shutil.copyfile(path / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        hf_convert.import_hf_checkpoint(tmp_path)
    weights = dict(hf_convert.read_safetensors(path / "model.safetensors"))
    config = T5Config.from_hf_config(json.loads((path / "config.json").read_text()))
    del weights["decoder.block.1.layer.2.DenseReluDense.wo.weight"]
    with pytest.raises(ValueError, match="decoder.block.1.layer.2.DenseReluDense.wo.weight"):
        hf_convert.hf_to_params(weights, config)
    weights = dict(hf_convert.read_safetensors(path / "model.safetensors"))
    weights["encoder.block.9.layer.0.SelfAttention.q.weight"] = weights["shared.weight"]
    with pytest.raises(ValueError, match="unexpected weights"):
        hf_convert.hf_to_params(weights, config)


def test_a_damaged_pytorch_bin_is_named(v11_dir, tmp_path):
    path, model = v11_dir
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    shutil.copyfile(path / "config.json", tmp_path / "config.json")
    data = (tmp_path / "pytorch_model.bin").read_bytes()
    (tmp_path / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(hf_convert.HFCheckpointError, match=r"pytorch_model\.bin: torch cannot load it") as e:
        hf_convert.import_hf_checkpoint(tmp_path)
    assert "\n" not in str(e.value)


# ----- #17 item 7: an export loads into transformers without a warning, decoding the same -----
GEN_VOCAB, EOS, MAX_NEW = 32, 1, 12


def _generating_params(config, seed=0):
    """Random params whose greedy decodes vary (wide spread), some rows stopping at EOS."""
    import functools

    import flax.linen as nn

    from dss_jax.model.t5 import init_variables

    shapes = nn.meta.unbox(jax.eval_shape(functools.partial(init_variables, config), jax.random.key(0))["params"])
    rng = np.random.default_rng(seed)

    def init(path, s):
        is_norm = "scale" in str(path[-1])
        return (1.0 + 0.3 * rng.standard_normal(s.shape) if is_norm else 2.0 * rng.standard_normal(s.shape)).astype(
            np.float32
        )

    params = jax.tree_util.tree_map_with_path(init, shapes)
    if config.tie_word_embeddings:
        params["token_embedder"]["embedding"][EOS] *= 3.0
    else:
        params["decoder"]["logits_dense"]["kernel"][:, EOS] *= 2.0
    return params


def _greedy_rows(sequences):
    """HF greedy rows -> ours: no start token, pad after the first EOS, MAX_NEW long."""
    rows = []
    for row in sequences[:, 1:].tolist():
        row = row[: row.index(EOS) + 1] if EOS in row else row
        rows.append(row + [0] * (MAX_NEW - len(row)))
    return np.array(rows)


@pytest.mark.parametrize("variant,per_layer", [("t5.1.1", False), ("t5.1.0", False), ("t5.1.1", True)])
def test_exported_models_load_without_a_warning_and_decode_the_same(variant, per_layer, tmp_path):
    """transformers 5 ties T5's lm head whatever config.json says and warns when an
    untied one differs; the documented load (`from_pretrained_call`) is silent, keeps
    the head untied, and generates dss_jax's greedy tokens. A plain load still decodes
    the same (it only warns). A student with a table per layer exports as UMT5."""
    import logging
    import warnings

    from dss_jax.model import decoding

    config = T5Config.preset(
        "tiny",
        variant,
        vocab_size=GEN_VOCAB,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        relative_attention_per_layer=per_layer,
    )
    params = _generating_params(config)
    out = hf_convert.export_hf_checkpoint(params, config, tmp_path / "hf")
    untied = not config.tie_word_embeddings
    kwargs = {"tie_word_embeddings": False} if untied else {}
    hf_class = transformers.UMT5ForConditionalGeneration if per_layer else transformers.T5ForConditionalGeneration
    assert hf_convert.from_pretrained_call(config, out) == (
        f"transformers.{hf_class.__name__}.from_pretrained({str(out)!r}"
        f"{', tie_word_embeddings=False' if untied else ''})"
    )

    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    hf_logger = logging.getLogger("transformers")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()  # another test may have silenced it
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = hf_class.from_pretrained(out, **kwargs).eval()
    finally:
        hf_logger.removeHandler(handler)
        transformers.logging.set_verbosity(verbosity)
    assert [r.getMessage() for r in records] == [] and [str(w.message) for w in caught] == []
    assert (model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()) == (not untied)

    rng = np.random.default_rng(0)
    lengths = [7, 3, 5, 1, 6, 4, 2, 7]
    enc = np.zeros((len(lengths), 7), np.int32)
    for i, n in enumerate(lengths):
        enc[i, :n] = rng.integers(2, GEN_VOCAB, n)
    ours = np.asarray(decoding.generate(EncoderDecoderModel(config), params, enc, max_decode_length=MAX_NEW).tokens)
    stops = [EOS in row for row in ours.tolist()]
    assert any(stops) and not all(stops) and len({tuple(r) for r in ours.tolist()}) > 4  # a telling check

    def hf_greedy(hf_model):
        ids = torch.tensor(enc, dtype=torch.long)
        with torch.no_grad():
            return _greedy_rows(
                hf_model.generate(
                    input_ids=ids, attention_mask=(ids > 0).long(), max_new_tokens=MAX_NEW, do_sample=False, num_beams=1
                ).numpy()
            )

    np.testing.assert_array_equal(hf_greedy(model), ours)
    np.testing.assert_array_equal(hf_greedy(hf_class.from_pretrained(out).eval()), ours)
