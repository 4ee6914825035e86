"""Greedy decoding and sampling against plain-Python references on a toy Markov decoder."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _decoding_toy import EOS, PAD, ToyModel, reference_greedy

from dss_jax.model import decoding

VOCAB, BATCH, MAX_LEN = 8, 6, 7


@pytest.fixture(scope="module")
def toy():
    # EOS bias so that some rows stop early and others run to max length.
    return ToyModel(VOCAB, BATCH, MAX_LEN, seed=3, eos_bias=0.8)


def _greedy(toy, max_len=MAX_LEN):
    run = jax.jit(
        lambda cache: decoding.greedy_search(
            toy.tokens_to_logits, cache, batch_size=toy.batch, max_decode_length=max_len
        )
    )
    return run(toy.initial_cache())


def test_greedy_matches_reference_with_eos_and_padding(toy):
    out = _greedy(toy)
    assert out.tokens.shape == (BATCH, MAX_LEN) and out.tokens.dtype == jnp.int32
    lengths = []
    for row in range(BATCH):
        want_tokens, want_score = reference_greedy(toy, row, MAX_LEN)
        assert out.tokens[row].tolist() == want_tokens, row
        np.testing.assert_allclose(out.scores[row], want_score, rtol=1e-5, atol=1e-5)
        lengths.append(want_tokens.index(EOS) + 1 if EOS in want_tokens else MAX_LEN + 1)
    # The batch really mixes rows that stop early with rows that hit the length limit.
    assert min(lengths) < MAX_LEN and max(lengths) > MAX_LEN
    # Only pad after EOS.
    for row in out.tokens.tolist():
        if EOS in row:
            assert all(t == PAD for t in row[row.index(EOS) + 1 :])


def test_loop_stops_when_every_row_is_done():
    toy = ToyModel(VOCAB, 3, 12, seed=1, eos_bias=50.0)  # EOS always wins at once
    calls = []

    def counting(tokens, cache):
        jax.debug.callback(lambda: calls.append(1))
        return toy.tokens_to_logits(tokens, cache)

    out = jax.jit(lambda c: decoding.greedy_search(counting, c, batch_size=3, max_decode_length=12))(
        toy.initial_cache()
    )
    jax.effects_barrier()
    assert out.tokens[:, 0].tolist() == [EOS] * 3
    assert (out.tokens[:, 1:] == PAD).all()
    assert len(calls) == 1


def test_compiles_once_per_shape():
    traces = []
    toy = ToyModel(VOCAB, BATCH, MAX_LEN, seed=0)

    def tracing(tokens, cache):
        traces.append(1)
        return toy.tokens_to_logits(tokens, cache)

    run = jax.jit(lambda c: decoding.greedy_search(tracing, c, batch_size=BATCH, max_decode_length=MAX_LEN))
    cache = toy.initial_cache()
    first = run(cache)
    second = run({**cache, "ctx": cache["ctx"] + 1.0})
    assert len(traces) == 1
    assert first.tokens.shape == second.tokens.shape


@functools.lru_cache(maxsize=None)
def _sampler(toy, max_len, settings):
    """One compiled sampler per toy model and settings; keys vary without recompiling."""
    return jax.jit(
        lambda cache, key: decoding.sample(
            toy.tokens_to_logits, cache, key, batch_size=toy.batch, max_decode_length=max_len, **dict(settings)
        )
    )


def _sample(toy, rng, max_len=MAX_LEN, **kw):
    return _sampler(toy, max_len, tuple(sorted(kw.items())))(toy.initial_cache(), rng)


@pytest.mark.parametrize("settings", [dict(temperature=0.0), dict(temperature=1e-4), dict(temperature=1.0, top_k=1)])
def test_sampling_limits_equal_greedy(toy, settings):
    greedy = _greedy(toy)
    for seed in range(3):
        out = _sample(toy, jax.random.key(seed), **settings)
        np.testing.assert_array_equal(out.tokens, greedy.tokens)


def test_sampling_is_reproducible_per_key_and_varies_across_keys(toy):
    a = _sample(toy, jax.random.key(0))
    b = _sample(toy, jax.random.key(0))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    others = [_sample(toy, jax.random.key(s)).tokens for s in range(1, 6)]
    assert any(not np.array_equal(a.tokens, o) for o in others)
    for row in a.tokens.tolist():
        if EOS in row:
            assert all(t == PAD for t in row[row.index(EOS) + 1 :])


def _one_step_frequencies(n, rng, **kw):
    """Empirical distribution of the first sampled token over n identical rows."""
    toy = ToyModel(VOCAB, n, 1, seed=5)
    toy.ctx[:] = toy.ctx[0]  # every row is the same example
    out = _sample(toy, rng, max_len=1, **kw)
    logits = toy.logits(0, [])
    return np.bincount(np.asarray(out.tokens[:, 0]), minlength=VOCAB) / n, logits


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_one_step_sample_follows_tempered_softmax():
    n = 20000
    freq, logits = _one_step_frequencies(n, jax.random.key(11), temperature=0.7)
    np.testing.assert_allclose(freq, _softmax(logits / 0.7), atol=0.015)


def test_one_step_sample_with_top_k_renormalises_over_the_k_best():
    n = 20000
    freq, logits = _one_step_frequencies(n, jax.random.key(12), temperature=1.3, top_k=3)
    best = np.argsort(-logits)[:3]
    want = np.zeros(VOCAB)
    want[best] = _softmax(logits[best] / 1.3)
    assert freq[np.setdiff1d(np.arange(VOCAB), best)].sum() == 0
    np.testing.assert_allclose(freq, want, atol=0.015)


def test_filter_logits_top_p_keeps_smallest_prefix_reaching_p():
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    logits = jnp.log(jnp.asarray(probs))[None]
    kept = lambda p: np.isfinite(np.asarray(decoding.filter_logits(logits, top_p=p)))[0].tolist()
    assert kept(0.8) == [False, True, False, True]  # 0.5 + 0.3 reaches 0.8
    assert kept(0.81) == [False, True, True, True]
    assert kept(0.4) == [False, True, False, False]  # the best token is always kept
    assert kept(1.0) == [True] * 4


def test_one_step_sample_with_top_p():
    n = 20000
    logits = ToyModel(VOCAB, n, 1, seed=5).logits(0, [])  # the rows _one_step_frequencies uses
    probs = _softmax(logits)
    order = np.argsort(-probs)
    top_p = float(np.cumsum(probs[order])[2]) - 1e-3  # exactly three tokens reach it
    freq, _ = _one_step_frequencies(n, jax.random.key(13), top_p=top_p)
    want = np.zeros(VOCAB)
    want[order[:3]] = probs[order[:3]] / probs[order[:3]].sum()
    np.testing.assert_allclose(freq, want, atol=0.015)


def test_decode_config_validation_names_the_field():
    with pytest.raises(ValueError, match="method"):
        decoding.DecodeConfig(max_decode_length=4, method="nucleus")
    with pytest.raises(ValueError, match="early_stopping"):
        decoding.DecodeConfig(max_decode_length=4, early_stopping="sometimes")
    with pytest.raises(ValueError, match="top_p"):
        decoding.DecodeConfig(max_decode_length=4, top_p=0.0)
    with pytest.raises(ValueError, match="max_decode_length"):
        decoding.DecodeConfig(max_decode_length=0)


def test_decode_dispatches_on_config(toy):
    cache = toy.initial_cache()
    greedy = _greedy(toy)
    via_config = decoding.decode(
        toy.tokens_to_logits, cache, decoding.DecodeConfig(max_decode_length=MAX_LEN), batch_size=BATCH
    )
    np.testing.assert_array_equal(via_config.tokens, greedy.tokens)
    with pytest.raises(ValueError, match="rng"):
        decoding.decode(
            toy.tokens_to_logits,
            cache,
            decoding.DecodeConfig(max_decode_length=MAX_LEN, method="sample"),
            batch_size=BATCH,
        )
