"""Batched, jit-compatible decoding: greedy, sampling, beam search, and `generate` for any student.

The algorithms are generic over one decoder step

    tokens_to_logits(tokens [batch, 1] int32, cache) -> (logits [batch, vocab] float32, new_cache)

and run under a single `jax.lax.while_loop` that stops when every row has emitted EOS or
`max_decode_length` tokens were generated, so a jit of them compiles once per shape.
Rows that finished emit `pad_id` afterwards. Token conventions are T5's: pad 0, EOS 1,
decoder start 0; the returned tokens never include the start token.

Greedy decoding and beam search reproduce Hugging Face `generate(do_sample=False,
num_beams=1)` and `generate(num_beams=k, length_penalty=..., early_stopping=...)` (see
`beam_search.py`). Sampling applies temperature, then top-k, then top-p, like HF's
logits warpers, with an explicit PRNG key (its draws are not PyTorch's, of course).

`generate` decodes with a student model (`dss_jax.model.interface.StudentModel`): the
model's `start_decoding` gives the step function and its cache (T5 encodes once and
creates the decoder's key/value cache), and the loop here decodes step by step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from dss_jax.model import beam_search as beam_lib
from dss_jax.model import cpu_tuning, interface

PyTree = Any
TokensToLogits = beam_lib.TokensToLogits

METHODS = ("greedy", "sample", "beam")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """Static decoding settings (hashable: a jit compiles once per config and shape).

    Attributes:
      max_decode_length: number of tokens to generate at most (HF's `max_new_tokens`).
      method: "greedy", "sample" or "beam".
      num_beams: beams per example (method="beam").
      length_penalty: beam scores are sum(logprobs) / length ** length_penalty.
      early_stopping: True, False or "never", with HF's meaning (method="beam").
      temperature: sampling temperature; 0 means greedy (method="sample").
      top_k: keep only the k most likely tokens before sampling; 0 keeps all.
      top_p: keep the smallest set of tokens whose probability reaches top_p; 1 keeps all.
      return_all_beams: also return every beam's tokens and scores (method="beam").
      eos_id, pad_id, decoder_start_id: token ids (T5: 1, 0, 0); `generate` takes the model's own.
    """

    max_decode_length: int
    method: str = "greedy"
    num_beams: int = 4
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    return_all_beams: bool = False
    eos_id: int = 1
    pad_id: int = 0
    decoder_start_id: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"DecodeConfig.method must be one of {METHODS}, got {self.method!r}")
        if self.max_decode_length < 1:
            raise ValueError(f"DecodeConfig.max_decode_length must be >= 1, got {self.max_decode_length}")
        if self.num_beams < 1:
            raise ValueError(f"DecodeConfig.num_beams must be >= 1, got {self.num_beams}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"DecodeConfig.early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if self.early_stopping != "never":
            object.__setattr__(self, "early_stopping", bool(self.early_stopping))
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"DecodeConfig.temperature must be a finite number >= 0, got {self.temperature}")
        if not math.isfinite(self.length_penalty):
            raise ValueError(f"DecodeConfig.length_penalty must be a finite number, got {self.length_penalty}")
        if self.top_k < 0:
            raise ValueError(f"DecodeConfig.top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"DecodeConfig.top_p must be in (0, 1], got {self.top_p}")


class DecodeOutput(NamedTuple):
    """Decoded tokens (without the decoder start token) and their scores.

    `scores` is the model log-likelihood sum(log p(token)) of each row's tokens up to and
    including EOS for greedy and sampling, and the length-penalised beam score (HF's
    `sequences_scores`) of the best beam for beam search.
    """

    tokens: jax.Array  # [batch, max_decode_length] int32
    scores: jax.Array  # [batch] float32
    beam_tokens: Optional[jax.Array] = None  # [batch, num_beams, max_decode_length], best first
    beam_scores: Optional[jax.Array] = None  # [batch, num_beams]


class _TokenState(NamedTuple):
    step: jax.Array  # [] int32
    tokens: jax.Array  # [batch, length]
    last: jax.Array  # [batch] token fed to the next step
    done: jax.Array  # [batch] bool
    scores: jax.Array  # [batch] accumulated log-likelihood
    cache: PyTree


def _token_by_token(
    tokens_to_logits: TokensToLogits,
    cache: PyTree,
    choose: Callable[[jax.Array, jax.Array], jax.Array],
    *,
    batch_size: int,
    max_decode_length: int,
    eos_id: int,
    pad_id: int,
    decoder_start_id: int,
) -> DecodeOutput:
    """One token per row per step; `choose(logits [batch, vocab], step) -> [batch]`."""
    state = _TokenState(
        step=jnp.asarray(0, jnp.int32),
        tokens=jnp.full((batch_size, max_decode_length), pad_id, jnp.int32),
        last=jnp.full((batch_size,), decoder_start_id, jnp.int32),
        done=jnp.zeros((batch_size,), bool),
        scores=jnp.zeros((batch_size,), jnp.float32),
        cache=cache,
    )

    def cond(s: _TokenState) -> jax.Array:
        return (s.step < max_decode_length) & ~jnp.all(s.done)

    def body(s: _TokenState) -> _TokenState:
        logits, cache = tokens_to_logits(s.last[:, None], s.cache)
        logits = logits.astype(jnp.float32)  # [batch, vocab]
        token = jnp.where(s.done, pad_id, choose(logits, s.step)).astype(jnp.int32)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        token_log_prob = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
        return _TokenState(
            step=s.step + 1,
            tokens=s.tokens.at[:, s.step].set(token),
            last=token,
            done=s.done | (token == eos_id),
            scores=s.scores + jnp.where(s.done, 0.0, token_log_prob),
            cache=cache,
        )

    final = jax.lax.while_loop(cond, body, state)
    return DecodeOutput(tokens=final.tokens, scores=final.scores)


def greedy_search(
    tokens_to_logits: TokensToLogits,
    cache: PyTree,
    *,
    batch_size: int,
    max_decode_length: int,
    eos_id: int = 1,
    pad_id: int = 0,
    decoder_start_id: int = 0,
) -> DecodeOutput:
    """Argmax decoding (ties go to the lowest id, as `torch.argmax`)."""
    return _token_by_token(
        tokens_to_logits,
        cache,
        lambda logits, step: jnp.argmax(logits, axis=-1),
        batch_size=batch_size,
        max_decode_length=max_decode_length,
        eos_id=eos_id,
        pad_id=pad_id,
        decoder_start_id=decoder_start_id,
    )


def filter_logits(logits: jax.Array, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Temperature, then top-k, then top-p on logits [..., vocab]; dropped tokens get -inf.

    top-p keeps the smallest set of most likely tokens whose probability mass reaches
    top_p (always at least the most likely token). Tied logits at a cut are all kept.
    """
    logits = logits.astype(jnp.float32) / temperature
    if top_k > 0:
        top_k = min(top_k, logits.shape[-1])
        kth_best = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth_best, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]  # descending
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # The kept set is a prefix of the sorted tokens; its smallest logit is the cut.
        kept = mass_before < top_p
        cut = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cut, -jnp.inf, logits)
    return logits


def sample(
    tokens_to_logits: TokensToLogits,
    cache: PyTree,
    rng: jax.Array,
    *,
    batch_size: int,
    max_decode_length: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_id: int = 1,
    pad_id: int = 0,
    decoder_start_id: int = 0,
) -> DecodeOutput:
    """Ancestral sampling from `filter_logits(logits)`; temperature 0 is greedy.

    Step `t` draws with `jax.random.fold_in(rng, t)`, so a row's draws depend only on the
    key, the step and the logits, not on when other rows finished.
    """
    if temperature == 0.0:
        # The limit of ever colder sampling; also spares callers a key they do not need.
        return greedy_search(
            tokens_to_logits,
            cache,
            batch_size=batch_size,
            max_decode_length=max_decode_length,
            eos_id=eos_id,
            pad_id=pad_id,
            decoder_start_id=decoder_start_id,
        )

    if rng is None:
        raise ValueError("sample() needs a PRNG key: pass rng=jax.random.key(seed)")

    def choose(logits, step):
        filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
        return jax.random.categorical(jax.random.fold_in(rng, step), filtered, axis=-1)

    return _token_by_token(
        tokens_to_logits,
        cache,
        choose,
        batch_size=batch_size,
        max_decode_length=max_decode_length,
        eos_id=eos_id,
        pad_id=pad_id,
        decoder_start_id=decoder_start_id,
    )


def decode(
    tokens_to_logits: TokensToLogits,
    cache: PyTree,
    config: DecodeConfig,
    *,
    batch_size: int,
    rng: Optional[jax.Array] = None,
) -> DecodeOutput:
    """Runs `config.method` for a batch of `batch_size` rows (cache given for that batch)."""
    ids = dict(eos_id=config.eos_id, pad_id=config.pad_id, decoder_start_id=config.decoder_start_id)
    if config.method == "greedy":
        return greedy_search(
            tokens_to_logits,
            cache,
            batch_size=batch_size,
            max_decode_length=config.max_decode_length,
            **ids,
        )
    if config.method == "sample":
        if rng is None and config.temperature != 0.0:
            raise ValueError("method='sample' needs a PRNG key: pass rng=jax.random.key(seed)")
        return sample(
            tokens_to_logits,
            cache,
            rng,
            batch_size=batch_size,
            max_decode_length=config.max_decode_length,
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
            **ids,
        )
    result = beam_lib.beam_search(
        tokens_to_logits,
        cache,
        batch_size=batch_size,
        max_decode_length=config.max_decode_length,
        num_beams=config.num_beams,
        length_penalty=config.length_penalty,
        early_stopping=config.early_stopping,
        **ids,
    )
    return DecodeOutput(
        tokens=result.tokens[:, 0],
        scores=result.scores[:, 0],
        beam_tokens=result.tokens if config.return_all_beams else None,
        beam_scores=result.scores if config.return_all_beams else None,
    )


# ----------------------------------------------------------------------------------------
# Any student model (dss_jax.model.interface)


def _unwrap_params(params: PyTree) -> PyTree:
    """Accepts either the params tree or a variables dict {"params": ...}."""
    if isinstance(params, dict) and set(params) == {"params"}:
        return params["params"]
    if hasattr(params, "keys") and set(params.keys()) == {"params"}:
        return params["params"]
    return params


def _generate_impl(model, config: DecodeConfig, params, inputs, segment_ids, rng):
    tokens_to_logits, cache = model.start_decoding(params, inputs, segment_ids, config)
    return decode(tokens_to_logits, cache, config, batch_size=inputs.shape[0], rng=rng)


_STATIC = ("model", "config")
_generate_jit = jax.jit(_generate_impl, static_argnames=_STATIC)


@functools.cache
def _generate_jit_for_cpu():
    """`_generate_impl` jitted with XLA:CPU's decoding options (`cpu_tuning`), or the plain
    jit when there are none to give."""
    options = cpu_tuning.decode_compiler_options()
    if not options:
        return _generate_jit
    return jax.jit(_generate_impl, static_argnames=_STATIC, compiler_options=options)


def _jit_for(params: PyTree):
    """The jitted `_generate_impl` for the platform the parameters live on (the default
    backend for host arrays)."""
    platform = jax.default_backend()
    for leaf in jax.tree_util.tree_leaves(params):
        if isinstance(leaf, jax.Array):
            platform = next(iter(leaf.devices())).platform
            break
    return _generate_jit_for_cpu() if platform == "cpu" else _generate_jit


def generate(
    model,
    params: PyTree,
    inputs: jax.Array,
    *,
    max_decode_length: Optional[int] = None,
    method: str = "greedy",
    num_beams: int = 4,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    return_all_beams: bool = False,
    rng: Optional[jax.Array] = None,
    segment_ids: Optional[jax.Array] = None,
    config: Optional[DecodeConfig] = None,
) -> DecodeOutput:
    """Decodes a batch with a student model (jit-compiled per model, settings and shape).

    Args:
      model: a `StudentModel` (hashable: it is a static jit argument).
      params: its parameters (the "params" tree, or a {"params": ...} variables dict).
      inputs: [batch, input_len] int32 prompts (T5: the encoder input), padded with 0.
      max_decode_length ... return_all_beams: the `DecodeConfig` fields; ignored when
        `config` is given.
      rng: PRNG key, needed for method="sample".
      segment_ids: optional [batch, input_len] segment ids of the input
        (1 real, 0 padding). Not needed for ordinary padded rows: the model masks
        encoder tokens equal to 0 anyway. Each row decodes one target.
      config: a complete `DecodeConfig` instead of the keyword settings.

    Returns:
      `DecodeOutput`: tokens [batch, max_decode_length] without the decoder start token,
      pad (0) after EOS, and scores [batch].
    """
    if config is None:
        if max_decode_length is None:
            raise ValueError("generate() needs max_decode_length (or a DecodeConfig as config=)")
        config = DecodeConfig(
            max_decode_length=max_decode_length,
            method=method,
            num_beams=num_beams,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            return_all_beams=return_all_beams,
        )
    interface.check_student(model, "generate()")
    config = dataclasses.replace(config, **model.decode_token_ids())
    if config.method == "sample" and rng is None and config.temperature != 0.0:
        raise ValueError("generate(method='sample') needs rng=jax.random.key(seed)")
    inputs = jnp.asarray(inputs, jnp.int32)
    if inputs.ndim != 2:
        raise ValueError(f"inputs must be [batch, length], got shape {inputs.shape}")
    if segment_ids is not None:
        segment_ids = jnp.asarray(segment_ids, jnp.int32)
    params = _unwrap_params(params)
    return _jit_for(params)(model, config, params, inputs, segment_ids, rng)
