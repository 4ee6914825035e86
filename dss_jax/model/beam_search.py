"""Beam search with Hugging Face `generate(num_beams=...)` semantics, in JAX.

The algorithm follows the rules of `transformers`' beam search step for step, so that a
model converted from (or exported to) Hugging Face decodes to the same token ids:

* Each step scores all `num_beams * vocab` continuations by accumulated log-probability
  and keeps the best `2 * num_beams` candidates (so that at least `num_beams` of them do
  not end in EOS and the search can go on).
* A candidate that ends in EOS (or reaches `max_decode_length`) becomes a finished
  hypothesis only if it ranks among the first `num_beams` candidates. Its score is
  `sum(logprobs) / generated_length ** length_penalty`, where the generated length counts
  the EOS token. Each example keeps the `num_beams` best finished hypotheses.
* The `num_beams` best unfinished candidates are the running beams of the next step.
* Stopping (`early_stopping`): `True` stops an example once it has `num_beams` finished
  hypotheses; `False` stops once the best running beam, scored at the current length,
  cannot beat the worst finished hypothesis (HF's heuristic); `"never"` uses the
  maximal length instead when `length_penalty > 0`, which makes the bound exact.
* The first step expands only beam 0 (the other beams start at -1e9), so the beams do
  not start as copies of each other.

Arithmetic is kept in float32 with HF's finite `-1e9` sentinels and a length-penalty
table computed in float64, so ties and near-ties resolve as they do in PyTorch.

The model is reached only through `tokens_to_logits(tokens [batch, 1], cache) ->
(logits [batch, vocab], new_cache)`. The cache is given for the unexpanded batch; every
leaf with a leading batch dimension is repeated `num_beams` times (`[b0, b0, ..., b1,
...]`, like HF's `repeat_interleave`) and re-gathered when beams are reordered; scalar
leaves (a `cache_index`) are kept as they are.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
TokensToLogits = Callable[[jax.Array, PyTree], tuple[jax.Array, PyTree]]
EarlyStopping = Union[bool, str]

# HF's finite "minus infinity"; the same constant keeps penalised scores ordered as there.
NEG_INF = -1.0e9


class BeamSearchResult(NamedTuple):
    """Finished hypotheses per example, best first."""

    tokens: jax.Array  # [batch, num_beams, max_decode_length] int32, pad after EOS
    scores: jax.Array  # [batch, num_beams] float32, sum(logprobs) / length ** length_penalty


class _BeamState(NamedTuple):
    step: jax.Array  # [] int32: index of the token generated in this step
    alive: jax.Array  # [] bool: whether any example may still change its finished set
    running_tokens: jax.Array  # [batch, beams, length]
    running_scores: jax.Array  # [batch, beams] accumulated log-probs
    finished_tokens: jax.Array  # [batch, beams, length]
    finished_scores: jax.Array  # [batch, beams] length-penalised
    finished_flags: jax.Array  # [batch, beams] bool: slot holds a real finished hypothesis
    improvable: jax.Array  # [batch] bool: early-stop heuristic not yet satisfied
    cache: PyTree  # leaves [batch * beams, ...] or scalars


def expand_for_beams(tree: PyTree, batch_size: int, num_beams: int) -> PyTree:
    """Repeats each leaf with leading dim `batch_size` `num_beams` times along axis 0.

    Scalars are kept. A non-scalar leaf with another leading size is an error: it could
    not be reordered with the beams.
    """

    def expand(path, x):
        x = jnp.asarray(x)
        if x.ndim == 0:
            return x
        if x.shape[0] != batch_size:
            raise ValueError(
                f"cache leaf {jax.tree_util.keystr(path)} has shape {x.shape}; beam search needs "
                f"a leading batch dimension of {batch_size} (or a scalar)"
            )
        return jnp.repeat(x, num_beams, axis=0)

    return jax.tree_util.tree_map_with_path(expand, tree)


def gather_beams(tree: PyTree, flat_indices: jax.Array) -> PyTree:
    """Selects rows `flat_indices` [batch * beams] of every non-scalar leaf."""
    return jax.tree_util.tree_map(lambda x: x if x.ndim == 0 else jnp.take(x, flat_indices, axis=0), tree)


def _take_beams(x: jax.Array, indices: jax.Array) -> jax.Array:
    """x [batch, n, ...], indices [batch, m] -> [batch, m, ...]."""
    idx = indices.reshape(indices.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def _length_penalties(max_decode_length: int, length_penalty: float) -> np.ndarray:
    """[max_decode_length] float32: entry i is (i + 1) ** length_penalty.

    Computed in float64 and rounded once, as PyTorch does when it divides a float32
    tensor by a Python float.
    """
    lengths = np.arange(1, max_decode_length + 1, dtype=np.float64)
    return (lengths**length_penalty).astype(np.float32)


def beam_search(
    tokens_to_logits: TokensToLogits,
    cache: PyTree,
    *,
    batch_size: int,
    max_decode_length: int,
    num_beams: int,
    length_penalty: float = 1.0,
    early_stopping: EarlyStopping = False,
    eos_id: int = 1,
    pad_id: int = 0,
    decoder_start_id: int = 0,
) -> BeamSearchResult:
    """Runs HF-compatible beam search under one `jax.lax.while_loop`.

    Args:
      tokens_to_logits: one decoder step for the expanded batch of `batch_size *
        num_beams` rows.
      cache: decoder state for `batch_size` rows (expanded here).
      batch_size, max_decode_length, num_beams: static sizes; `max_decode_length` is the
        number of generated tokens (HF's `max_new_tokens`).
      length_penalty: exponent of the generated length that divides a finished score.
      early_stopping: True, False or "never", as in HF.
      eos_id, pad_id, decoder_start_id: T5 uses 1, 0, 0.

    Returns:
      `BeamSearchResult` with the `num_beams` finished hypotheses per example, best first.
    """
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if max_decode_length < 1:
        raise ValueError(f"max_decode_length must be >= 1, got {max_decode_length}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if early_stopping != "never":
        early_stopping = bool(early_stopping)
    b, k, length = batch_size, num_beams, max_decode_length
    n_candidates = 2 * k  # one EOS id: HF keeps max(2, 1 + n_eos) * num_beams candidates
    penalties = jnp.asarray(_length_penalties(length, length_penalty))  # [length]
    if early_stopping == "never" and length_penalty > 0.0:
        # Longer is better under a positive penalty, so bound by the maximal length.
        bound_penalty = jnp.full((length,), _length_penalties(length, length_penalty)[-1])
    else:
        bound_penalty = penalties
    stop_when_full = early_stopping is True
    # Only the first num_beams candidates may become finished hypotheses.
    top_beam_mask = jnp.arange(n_candidates) < k  # [2k]

    running_scores = jnp.full((b, k), NEG_INF, jnp.float32).at[:, 0].set(0.0)
    empty_tokens = jnp.full((b, k, length), pad_id, jnp.int32)
    state = _BeamState(
        step=jnp.asarray(0, jnp.int32),
        alive=jnp.asarray(True),
        running_tokens=empty_tokens,
        running_scores=running_scores,
        finished_tokens=empty_tokens,
        finished_scores=jnp.full((b, k), NEG_INF, jnp.float32),
        finished_flags=jnp.zeros((b, k), bool),
        improvable=jnp.ones((b,), bool),
        cache=expand_for_beams(cache, b, k),
    )

    def cond(s: _BeamState) -> jax.Array:
        return s.alive & (s.step < length)

    def body(s: _BeamState) -> _BeamState:
        i = s.step
        previous = jax.lax.dynamic_index_in_dim(
            s.running_tokens, jnp.maximum(i - 1, 0), axis=2, keepdims=False
        )  # [b, k]
        last = jnp.where(i == 0, decoder_start_id, previous).astype(jnp.int32)
        logits, cache = tokens_to_logits(last.reshape(b * k, 1), s.cache)  # [b*k, vocab]
        vocab = logits.shape[-1]
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        log_probs = log_probs.reshape(b, k, vocab) + s.running_scores[:, :, None]
        log_probs = log_probs.reshape(b, k * vocab)

        # Best 2k continuations over all beams.
        top_log_probs, top_indices = jax.lax.top_k(log_probs, n_candidates)  # [b, 2k]
        top_origin = top_indices // vocab  # [b, 2k] beam each candidate extends
        top_ids = (top_indices % vocab).astype(jnp.int32)
        top_tokens = _take_beams(s.running_tokens, top_origin).at[:, :, i].set(top_ids)
        hits_stop = (top_ids == eos_id) | (i + 1 >= length)  # [b, 2k]

        # Next running beams: the best candidates that did not stop.
        running_candidates = top_log_probs + hits_stop.astype(jnp.float32) * NEG_INF
        _, keep = jax.lax.top_k(running_candidates, k)  # [b, k]
        running_tokens = _take_beams(top_tokens, keep)
        running_scores = _take_beams(running_candidates, keep)
        origin = _take_beams(top_origin, keep)  # [b, k]

        # Finished hypotheses: merge stopping candidates among the first k into the pool.
        just_finished = hits_stop & top_beam_mask[None, :]
        candidate_scores = top_log_probs / penalties[i]
        full = jnp.all(s.finished_flags, axis=-1, keepdims=True) & stop_when_full  # [b, 1]
        candidate_scores += full.astype(jnp.float32) * NEG_INF
        candidate_scores += (~s.improvable[:, None]).astype(jnp.float32) * NEG_INF
        candidate_scores += (~just_finished).astype(jnp.float32) * NEG_INF
        merged_scores = jnp.concatenate([s.finished_scores, candidate_scores], axis=1)  # [b, 3k]
        _, best = jax.lax.top_k(merged_scores, k)  # [b, k]
        finished_tokens = _take_beams(jnp.concatenate([s.finished_tokens, top_tokens], axis=1), best)
        finished_scores = _take_beams(merged_scores, best)
        finished_flags = _take_beams(jnp.concatenate([s.finished_flags, just_finished], axis=1), best)

        flat_origin = (jnp.arange(b)[:, None] * k + origin).reshape(b * k)
        cache = gather_beams(cache, flat_origin)

        # Can a running beam still beat the worst finished hypothesis?
        best_possible = running_scores[:, :1] / bound_penalty[i]  # [b, 1]
        worst_finished = jnp.where(finished_flags, jnp.min(finished_scores, axis=-1, keepdims=True), NEG_INF)  # [b, k]
        improvable = s.improvable & jnp.any(best_possible > worst_finished, axis=-1)
        all_full = jnp.all(finished_flags) & stop_when_full
        alive = jnp.any(improvable) & ~all_full & ~jnp.all(hits_stop)
        return _BeamState(
            step=i + 1,
            alive=alive,
            running_tokens=running_tokens,
            running_scores=running_scores,
            finished_tokens=finished_tokens,
            finished_scores=finished_scores,
            finished_flags=finished_flags,
            improvable=improvable,
            cache=cache,
        )

    final = jax.lax.while_loop(cond, body, state)
    return BeamSearchResult(tokens=final.finished_tokens, scores=final.finished_scores)
