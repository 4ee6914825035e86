"""`decoding.generate` on our T5 with its key/value cache, against cache-free references.

The references recompute the full decoder for every prefix (no cache), so these tests pin
the incremental path end to end: cache creation, one-token steps, and the beam search's
reordering of cached keys/values.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _decoding_toy import EOS, PAD, pad_to, reference_beam

from dss_jax.model import decoding, t5
from dss_jax.model.config import T5Config
from dss_jax.model.encoder_decoder import EncoderDecoderModel

MAX_LEN = 10


def _random_params(config, seed, std, eos_scale):
    """Random weights that give peaked, varied logits (and some EOS), like the HF tests."""
    variables = t5.init_variables(config, jax.random.key(0), batch=2, enc_len=3, dec_len=3)
    params = jax.tree_util.tree_map(
        lambda x: x.value if hasattr(x, "value") else x,
        variables["params"],
        is_leaf=lambda x: hasattr(x, "value"),
    )
    rng = np.random.RandomState(seed)

    def draw(path, x):
        if "norm" in jax.tree_util.keystr(path):
            return x
        return jnp.asarray(rng.normal(scale=std, size=x.shape), x.dtype)

    params = jax.tree_util.tree_map_with_path(draw, params)
    if config.tie_word_embeddings:
        table = params["token_embedder"]["embedding"]
        params["token_embedder"]["embedding"] = table.at[EOS].multiply(eos_scale)
    else:
        kernel = params["decoder"]["logits_dense"]["kernel"]  # [embed, vocab]
        params["decoder"]["logits_dense"]["kernel"] = kernel.at[:, EOS].multiply(eos_scale)
    return params


VARIANTS = {
    # Seeds picked so that some rows stop at EOS, others run to the length limit.
    "t5.1.0": dict(seed=2, std=1.0, eos_scale=3.0),
    "t5.1.1": dict(seed=1, std=2.0, eos_scale=2.0),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def setup(request):
    variant = request.param
    config = T5Config.preset("tiny", variant, vocab_size=32, dropout_rate=0.0)
    model = EncoderDecoderModel(config)
    params = _random_params(config, **VARIANTS[variant])
    rng = np.random.RandomState(0)
    lengths = [7, 3, 5, 1, 6]
    enc = np.zeros((len(lengths), 7), np.int32)
    for i, n in enumerate(lengths):
        enc[i, :n] = rng.randint(2, config.vocab_size, size=n)
    return model, params, enc


class _FullDecoderOracle:
    """log p(next | prefix) from a full, cache-free decoder pass over [start] + prefix."""

    def __init__(self, model, params, enc):
        self.vocab = model.config.vocab_size
        self._enc = enc
        self._memo = {}
        self._logits = jax.jit(
            lambda ids, dec: model.module.apply({"params": params}, ids, dec)  # [1, len, vocab]
        )

    def log_probs(self, row, prefix):
        key = (row, tuple(prefix))
        if key not in self._memo:
            dec = np.zeros((1, MAX_LEN), np.int32)  # start token 0, then the prefix
            dec[0, 1 : len(prefix) + 1] = prefix[: MAX_LEN - 1]
            logits = np.asarray(self._logits(self._enc[row : row + 1], dec)[0, len(prefix)], np.float64)
            top = logits.max()
            self._memo[key] = logits - (top + np.log(np.exp(logits - top).sum()))
        return self._memo[key]


def test_greedy_generate_matches_full_recompute(setup):
    model, params, enc = setup
    oracle = _FullDecoderOracle(model, params, enc)
    out = decoding.generate(model, params, enc, max_decode_length=MAX_LEN)
    assert out.tokens.shape == (enc.shape[0], MAX_LEN)
    stopped = []
    for row in range(enc.shape[0]):
        tokens = []
        for _ in range(MAX_LEN):
            tokens.append(int(np.argmax(oracle.log_probs(row, tokens))))
            if tokens[-1] == EOS:
                break
        stopped.append(tokens[-1] == EOS)
        assert out.tokens[row].tolist() == pad_to(tokens, MAX_LEN), row
    assert any(stopped) and not all(stopped)


def test_beam_generate_matches_full_recompute(setup):
    model, params, enc = setup
    length_penalty = 0.6
    oracle = _FullDecoderOracle(model, params, enc)
    out = decoding.generate(
        model,
        params,
        enc,
        max_decode_length=MAX_LEN,
        method="beam",
        num_beams=4,
        length_penalty=length_penalty,
        return_all_beams=True,
    )
    for row in range(enc.shape[0]):
        want = reference_beam(oracle, row, MAX_LEN, 4, length_penalty, False)
        assert out.beam_tokens[row].tolist() == [t for _, t in want], row
        np.testing.assert_allclose(out.beam_scores[row], [s for s, _ in want], atol=1e-4)
    np.testing.assert_array_equal(out.tokens, out.beam_tokens[:, 0])


def test_sampling_generate(setup):
    model, params, enc = setup
    a = decoding.generate(
        model, params, enc, max_decode_length=MAX_LEN, method="sample", rng=jax.random.key(0), top_k=5
    )
    b = decoding.generate(
        model, params, enc, max_decode_length=MAX_LEN, method="sample", rng=jax.random.key(0), top_k=5
    )
    np.testing.assert_array_equal(a.tokens, b.tokens)
    for row in np.asarray(a.tokens).tolist():
        if EOS in row:
            assert all(t == PAD for t in row[row.index(EOS) + 1 :])
    with pytest.raises(ValueError, match="rng"):
        decoding.generate(model, params, enc, max_decode_length=MAX_LEN, method="sample")


def test_generate_accepts_a_variables_dict_and_a_config(setup):
    model, params, enc = setup
    config = decoding.DecodeConfig(max_decode_length=MAX_LEN)  # the greedy tests' settings
    a = decoding.generate(model, {"params": params}, enc, config=config)
    b = decoding.generate(model, params, enc, max_decode_length=MAX_LEN)
    np.testing.assert_array_equal(a.tokens, b.tokens)


def test_generate_compiles_once_per_settings_and_shape(setup):
    model, params, enc = setup
    settings = dict(max_decode_length=MAX_LEN, method="beam", num_beams=4, length_penalty=0.6, return_all_beams=True)
    decoding.generate(model, params, enc, **settings)
    jitted = decoding._jit_for(params)
    compiled = jitted._cache_size()
    assert compiled > 0
    decoding.generate(model, params, (enc + 1) * (enc > 0), **settings)  # new values, same shape
    assert jitted._cache_size() == compiled


def _ynn_fusion_ops(hlo: str) -> set[str]:
    """Opcodes inside the fusions that XLA:CPU hands to YNNPACK."""
    import re

    bodies = {m.group(1): m.group(2) for m in re.finditer(r"^%(\S+) \(.*?\{\n(.*?)\n\}", hlo, re.S | re.M)}
    ops = set()
    for line in hlo.splitlines():
        if "__ynn_fusion" in line:
            body = bodies[re.search(r"calls=%([^,\s]+)", line).group(1)]
            ops |= set(re.findall(r"= \S+ ([a-z][\w-]*)\(", body))
    return ops


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's YNNPACK fusions")
def test_cpu_beam_search_keeps_the_lm_head_product_apart_from_the_softmax():
    # Fused with log-softmax's max and subtraction, the lm head's product ran 2.5x slower
    # than alone (bench/decode_floor.py); decoding programs hand YNNPACK single dots only.
    config = T5Config.preset("tiny", "t5.1.1", vocab_size=4096, dropout_rate=0.0)
    model = EncoderDecoderModel(config)
    params = _random_params(config, seed=0, std=1.0, eos_scale=1.0)
    enc = np.full((8, 6), 5, np.int32)
    settings = decoding.DecodeConfig(max_decode_length=4, method="beam", num_beams=4)
    jitted = decoding._jit_for(params)
    hlo = jitted.lower(model, settings, params, enc, None, None).compile().as_text()
    ops = _ynn_fusion_ops(hlo)
    assert "dot" in ops
    assert ops <= {"dot", "parameter", "bitcast", "copy", "transpose"}, ops
