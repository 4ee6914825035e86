"""A tiny deterministic "decoder" and plain-Python reference decoders for the decoding tests.

The toy model is a second-order Markov chain with a per-row context and a per-step bias:

    logits(row, prefix) = W[prev2, prev1] + ctx[row] + step_bias[len(prefix)]

where prev1/prev2 are the last two tokens of [decoder_start] + prefix (prev2 = "none" at
the first step). Its JAX `tokens_to_logits` keeps prev2, ctx and a step counter in the
cache, so a beam search that reorders (or expands) cache rows wrongly decodes differently
from the references below, which recompute logits from the whole prefix with no cache.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

EOS = 1
PAD = 0
START = 0


class ToyModel:
    def __init__(self, vocab: int, batch: int, max_len: int, seed: int = 0, eos_bias: float = 0.0, scale: float = 2.0):
        rng = np.random.RandomState(seed)
        self.vocab, self.batch, self.max_len = vocab, batch, max_len
        # Row `vocab` of the first axis is prev2 = "none" (the first step).
        self.w = rng.normal(scale=scale, size=(vocab + 1, vocab, vocab)).astype(np.float32)
        self.w[..., EOS] += eos_bias
        self.ctx = rng.normal(size=(batch, vocab)).astype(np.float32)
        self.step_bias = rng.normal(scale=0.5, size=(max_len + 1, vocab)).astype(np.float32)

    # --- JAX side -------------------------------------------------------------------------
    def initial_cache(self):
        return {
            "prev2": jnp.full((self.batch,), self.vocab, jnp.int32),  # [batch]
            "ctx": jnp.asarray(self.ctx),  # [batch, vocab]
            "index": jnp.asarray(0, jnp.int32),  # scalar, like a flax cache_index
        }

    def tokens_to_logits(self, tokens, cache):
        prev1 = tokens[:, 0]  # [rows]
        w, step_bias = jnp.asarray(self.w), jnp.asarray(self.step_bias)
        logits = w[cache["prev2"], prev1] + cache["ctx"] + step_bias[cache["index"]]
        new_cache = {"prev2": prev1, "ctx": cache["ctx"], "index": cache["index"] + 1}
        return logits, new_cache

    # --- reference side -------------------------------------------------------------------
    def logits(self, row: int, prefix: list[int]) -> np.ndarray:
        seq = [START] + list(prefix)
        prev1 = seq[-1]
        prev2 = seq[-2] if len(seq) >= 2 else self.vocab
        return (self.w[prev2, prev1] + self.ctx[row] + self.step_bias[len(prefix)]).astype(np.float32)

    def log_probs(self, row: int, prefix: list[int]) -> np.ndarray:
        x = self.logits(row, prefix).astype(np.float64)
        return x - (np.log(np.sum(np.exp(x - x.max()))) + x.max())


def pad_to(tokens: list[int], length: int) -> list[int]:
    return list(tokens) + [PAD] * (length - len(tokens))


def reference_greedy(model: ToyModel, row: int, max_len: int) -> tuple[list[int], float]:
    tokens, score = [], 0.0
    for _ in range(max_len):
        lp = model.log_probs(row, tokens)
        token = int(np.argmax(lp))
        tokens.append(token)
        score += lp[token]
        if token == EOS:
            break
    return pad_to(tokens, max_len), score


def reference_beam(
    model: ToyModel, row: int, max_len: int, num_beams: int, length_penalty: float, early_stopping
) -> list[tuple[float, list[int]]]:
    """Hugging Face beam search rules, written hypothesis by hypothesis.

    Needs vocab >= 2 * num_beams so that the first step only extends the single real beam.
    Returns the num_beams finished hypotheses (score, padded tokens), best first.
    """
    k = num_beams
    assert model.vocab >= 2 * k
    running: list[tuple[list[int], float]] = [([], 0.0)]
    finished: list[tuple[float, list[int]]] = []
    for i in range(max_len):
        candidates = []
        for beam, (tokens, score) in enumerate(running):
            lp = model.log_probs(row, tokens)
            for t in range(model.vocab):
                candidates.append((score + lp[t], beam * model.vocab + t, tokens + [t]))
        candidates.sort(key=lambda c: (-c[0], c[1]))
        candidates = candidates[: 2 * k]
        last_step = i + 1 == max_len
        was_full = len(finished) == k
        next_running = []
        for rank, (score, _, tokens) in enumerate(candidates):
            if tokens[-1] == EOS or last_step:
                # Only candidates ranked among the first k may finish.
                if rank < k and not (early_stopping is True and was_full):
                    finished.append((score / (i + 1) ** length_penalty, tokens))
            elif len(next_running) < k:
                next_running.append((tokens, score))
        finished = sorted(finished, key=lambda f: -f[0])[:k]
        running = next_running
        if last_step:
            break
        if len(finished) == k:
            if early_stopping is True:
                break
            bound_len = max_len if (early_stopping == "never" and length_penalty > 0) else i + 1
            best_possible = running[0][1] / bound_len**length_penalty
            if not best_possible > min(f[0] for f in finished):
                break
    return [(s, pad_to(t, max_len)) for s, t in finished]


def brute_force_best(model: ToyModel, row: int, max_len: int, length_penalty: float):
    """The best of all sequences that end in EOS or reach max_len: (score, padded tokens)."""
    best = (-math.inf, None)

    def visit(prefix: list[int], logp: float):
        nonlocal best
        lp = model.log_probs(row, prefix)
        for t in range(model.vocab):
            seq, total = prefix + [t], logp + lp[t]
            if t == EOS or len(seq) == max_len:
                score = total / len(seq) ** length_penalty
                if score > best[0]:
                    best = (score, pad_to(seq, max_len))
            else:
                visit(seq, total)

    visit([], 0.0)
    return best
