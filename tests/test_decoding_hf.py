"""Parity of `decoding.generate` with `transformers` `generate` (PyTorch, CPU, float32).

A tiny random T5 of each variant is created with `transformers`, saved to a temporary
directory and imported with `dss_jax.model.hf_convert`; both sides then decode the same
padded batch of inputs of different lengths.
"""

import numpy as np
import pytest
from _decoding_toy import EOS, PAD

from dss_jax.model import decoding, hf_convert
from dss_jax.model.encoder_decoder import EncoderDecoderModel

pytestmark = pytest.mark.torch

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MAX_NEW = 12
VOCAB = 32

# Random weights with a wide spread give peaked, varied next-token distributions (the
# default init makes a tiny model repeat one token); the EOS output row is scaled up so
# that some rows, but not all, stop before the length limit.
VARIANTS = {
    "t5.1.0": dict(hf=dict(feed_forward_proj="relu", tie_word_embeddings=True), std=1.0, eos_scale=3.0),
    "t5.1.1": dict(hf=dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False), std=2.0, eos_scale=2.0),
}


def _hf_model(variant):
    spec = VARIANTS[variant]
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        eos_token_id=1,
        pad_token_id=0,
        **spec["hf"],
    )
    model = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" not in name:
                p.normal_(0.0, spec["std"])
        model.get_output_embeddings().weight[EOS] *= spec["eos_scale"]
    return model


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def models(request, tmp_path_factory):
    hf = _hf_model(request.param)
    path = tmp_path_factory.mktemp(f"hf_{request.param}")
    hf.save_pretrained(path)
    params, config, _ = hf_convert.import_hf_checkpoint(path)
    rng = np.random.RandomState(0)
    lengths = [7, 3, 5, 1, 6, 4, 2, 7]
    enc = np.zeros((len(lengths), 7), np.int32)
    for i, n in enumerate(lengths):
        enc[i, :n] = rng.randint(2, VOCAB, size=n)
    return hf, EncoderDecoderModel(config), params, enc


def _hf_generate(hf, enc, **kw):
    ids = torch.tensor(enc, dtype=torch.long)
    with torch.no_grad():
        out = hf.generate(
            input_ids=ids,
            attention_mask=(ids > 0).long(),
            max_new_tokens=MAX_NEW,
            do_sample=False,
            return_dict_in_generate=True,
            output_scores=True,
            **kw,
        )
    return out


def _normalise(sequences):
    """HF rows -> ours: drop the start token, pad after the first EOS, pad to MAX_NEW.

    (HF pads greedy outputs with pad but beam outputs with EOS, and crops the batch to its
    longest row.)
    """
    rows = []
    for row in sequences[:, 1:].tolist():
        if EOS in row:
            row = row[: row.index(EOS) + 1]
        rows.append(row + [PAD] * (MAX_NEW - len(row)))
    return np.array(rows)


def _ends_early(tokens):
    return [EOS in row for row in np.asarray(tokens).tolist()]


def test_greedy_matches_transformers(models):
    hf, model, params, enc = models
    want = _normalise(_hf_generate(hf, enc, num_beams=1).sequences.numpy())
    got = decoding.generate(model, params, enc, max_decode_length=MAX_NEW)
    np.testing.assert_array_equal(np.asarray(got.tokens), want)
    early = _ends_early(want)
    assert any(early) and not all(early)  # rows stop at EOS and at the length limit


@pytest.mark.parametrize("length_penalty,early_stopping", [(1.0, False), (0.6, False), (2.0, True)])
def test_beam_search_matches_transformers(models, length_penalty, early_stopping):
    hf, model, params, enc = models
    out = _hf_generate(hf, enc, num_beams=4, length_penalty=length_penalty, early_stopping=early_stopping)
    want = _normalise(out.sequences.numpy())
    got = decoding.generate(
        model,
        params,
        enc,
        max_decode_length=MAX_NEW,
        method="beam",
        num_beams=4,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )
    np.testing.assert_array_equal(np.asarray(got.tokens), want)
    np.testing.assert_allclose(np.asarray(got.scores), out.sequences_scores.numpy(), atol=1e-4)
    assert any(_ends_early(want))


def test_beam_search_differs_from_greedy_somewhere(models):
    """Keeps the beam parity test honest: on these inputs the search matters."""
    hf, _, _, enc = models
    greedy = _normalise(_hf_generate(hf, enc, num_beams=1).sequences.numpy())
    beam = _normalise(_hf_generate(hf, enc, num_beams=4).sequences.numpy())
    assert (greedy != beam).any()
