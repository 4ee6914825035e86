"""Beam search against a hypothesis-by-hypothesis reference of HF's rules and brute force."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _decoding_toy import EOS, PAD, ToyModel, brute_force_best, reference_beam

from dss_jax.model import beam_search, decoding


def _run(toy, max_len, **kw):
    fn = jax.jit(
        lambda cache: beam_search.beam_search(
            toy.tokens_to_logits, cache, batch_size=toy.batch, max_decode_length=max_len, **kw
        )
    )
    return fn(toy.initial_cache())


@pytest.mark.parametrize(
    "num_beams,length_penalty,early_stopping",
    [
        (4, 1.0, False),
        (4, 0.6, False),
        (3, 2.0, False),
        (4, -0.5, False),
        (4, 1.0, True),
        (2, 1.5, "never"),
    ],
)
def test_beam_search_matches_reference(num_beams, length_penalty, early_stopping):
    vocab, batch, max_len = 8, 5, 7
    toy = ToyModel(vocab, batch, max_len, seed=7, eos_bias=1.0)
    out = _run(toy, max_len, num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping)
    assert out.tokens.shape == (batch, num_beams, max_len)
    lengths = set()
    for row in range(batch):
        want = reference_beam(toy, row, max_len, num_beams, length_penalty, early_stopping)
        assert len(want) == num_beams
        got_tokens = out.tokens[row].tolist()
        assert got_tokens == [t for _, t in want], row
        np.testing.assert_allclose(out.scores[row], [s for s, _ in want], rtol=1e-5, atol=1e-5)
        lengths.update(t.index(EOS) + 1 if EOS in t else max_len + 1 for _, t in want)
    # Hypotheses of several lengths, some cut by max length, some ended by EOS.
    assert len(lengths) >= 3 and max(lengths) == max_len + 1 and min(lengths) <= max_len


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, -1.0, 3.0])
def test_wide_beam_finds_the_exhaustive_optimum(length_penalty):
    """With more beams than live prefixes and the exact bound, beam search is exhaustive."""
    vocab, batch, max_len = 4, 3, 4  # 3**3 = 27 live prefixes at most
    toy = ToyModel(vocab, batch, max_len, seed=2, eos_bias=0.5)
    out = _run(toy, max_len, num_beams=32, length_penalty=length_penalty, early_stopping="never")
    for row in range(batch):
        score, tokens = brute_force_best(toy, row, max_len, length_penalty)
        assert out.tokens[row, 0].tolist() == tokens
        np.testing.assert_allclose(out.scores[row, 0], score, rtol=1e-5)


def test_rows_are_independent_of_the_batch_they_are_in():
    vocab, max_len = 8, 6
    toy = ToyModel(vocab, 4, max_len, seed=4, eos_bias=0.7)
    together = _run(toy, max_len, num_beams=3)
    alone = jax.jit(
        lambda cache: beam_search.beam_search(
            toy.tokens_to_logits, cache, batch_size=1, max_decode_length=max_len, num_beams=3
        )
    )
    full_cache = toy.initial_cache()
    for row in range(4):
        cache = {**full_cache, "prev2": full_cache["prev2"][:1], "ctx": full_cache["ctx"][row : row + 1]}
        np.testing.assert_array_equal(alone(cache).tokens[0], together.tokens[row])


def test_after_eos_only_padding():
    toy = ToyModel(8, 5, 7, seed=7, eos_bias=1.0)
    out = _run(toy, 7, num_beams=4)
    for beams in out.tokens.tolist():
        for row in beams:
            if EOS in row:
                assert all(t == PAD for t in row[row.index(EOS) + 1 :])


def test_cache_expansion_repeats_rows_and_keeps_scalars():
    cache = {"k": jnp.arange(6).reshape(2, 3), "index": jnp.asarray(5)}
    out = beam_search.expand_for_beams(cache, batch_size=2, num_beams=3)
    assert out["k"][:, 0].tolist() == [0, 0, 0, 3, 3, 3]
    assert int(out["index"]) == 5
    with pytest.raises(ValueError, match=r"\['bad'\].*leading batch dimension of 2"):
        beam_search.expand_for_beams({"bad": jnp.zeros((3, 2))}, batch_size=2, num_beams=3)


def test_decode_beam_returns_best_and_optionally_all_beams():
    toy = ToyModel(8, 3, 6, seed=9, eos_bias=1.0)
    full = _run(toy, 6, num_beams=4, length_penalty=0.8)
    cfg = decoding.DecodeConfig(max_decode_length=6, method="beam", num_beams=4, length_penalty=0.8)
    best = decoding.decode(toy.tokens_to_logits, toy.initial_cache(), cfg, batch_size=3)
    np.testing.assert_array_equal(best.tokens, full.tokens[:, 0])
    np.testing.assert_allclose(best.scores, full.scores[:, 0])
    assert best.beam_tokens is None
    import dataclasses

    every = decoding.decode(
        toy.tokens_to_logits, toy.initial_cache(), dataclasses.replace(cfg, return_all_beams=True), batch_size=3
    )
    np.testing.assert_array_equal(every.beam_tokens, full.tokens)
    assert (np.diff(np.asarray(every.beam_scores), axis=1) <= 0).all()  # best first
