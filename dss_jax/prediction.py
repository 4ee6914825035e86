"""What a trained student answers: one home for the prediction that eval, infer, the
train loop's eval hook and annotate's student backend share.

    rows = np.stack([encode_input(vocabulary, LABEL_PREFIX + x, 128, separator=False)[0] for x in inputs])
    labels, rationales = answer(model, params, vocabulary, rows, label_length=32, batch_size=32)

`encode_input` tokenizes a raw input as the DSS tasks do; `decode_batches` decodes rows
in batches of one fixed size (the last padded with copies of its last row, whose outputs
are dropped: rows never interact, so predictions do not depend on the batch size);
`answer` decodes labels and, when asked, rationales, and splits the single-task
ablation's "rationale So the answer is: label" answers in two. Decoding settings without
a length (`DecodeSettings`, gin-configurable) become a `DecodeConfig` per target length.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Optional, Union

import jax
import numpy as np
from jax.experimental import multihost_utils

import gin
from dss_jax import settings
from dss_jax.data import sources
from dss_jax.data.vocab import input_prefix
from dss_jax.model.decoding import METHODS, DecodeConfig, generate

# --------------------------------------------------------------------------------------
# Decoding settings
# --------------------------------------------------------------------------------------


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """How to decode, without the length (that comes from TASK_FEATURE_LENGTHS).

    In gin: `DecodeSettings.method = 'beam'`, `DecodeSettings.num_beams = 4`. Sampling
    draws with `seed` folded with the batch index, so (unlike greedy and beam search)
    its results depend on the batch size.
    """

    method: str = "greedy"  # "greedy" | "beam" | "sample"
    num_beams: int = 4
    length_penalty: float = 1.0
    early_stopping: Union[bool, str] = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def config(self, max_decode_length: int) -> DecodeConfig:
        return DecodeConfig(
            max_decode_length=max_decode_length,
            method=self.method,
            num_beams=self.num_beams,
            length_penalty=self.length_penalty,
            early_stopping=self.early_stopping,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
        )


# The values each DecodeSettings field may take, checked by the binaries before any work.
DECODE_SETTINGS: dict[str, settings.Rule] = {
    "DecodeSettings.method": settings.one_of(METHODS),
    "DecodeSettings.num_beams": settings.positive_int,
    "DecodeSettings.length_penalty": settings.number(),
    "DecodeSettings.early_stopping": settings.one_of((True, False, "never")),
    "DecodeSettings.temperature": settings.number(0),  # 0: greedy
    "DecodeSettings.top_k": settings.nonnegative_int,  # 0: off
    "DecodeSettings.top_p": settings.number(0, 1, open_low=True),
    "DecodeSettings.seed": settings.integer,
}


def as_decode_config(decode: Union[DecodeSettings, DecodeConfig, None], max_decode_length: int) -> DecodeConfig:
    """A DecodeConfig for targets of `max_decode_length` tokens (a given config's length is replaced)."""
    if decode is None:
        decode = DecodeSettings()
    if isinstance(decode, DecodeConfig):
        return dataclasses.replace(decode, max_decode_length=max_decode_length)
    return decode.config(max_decode_length)


def seed_of(decode) -> int:
    """The sampling seed of decoding settings (0 for a DecodeConfig or None)."""
    return getattr(decode, "seed", 0)


# --------------------------------------------------------------------------------------
# Batched decoding
# --------------------------------------------------------------------------------------


def decode_batches(
    model,
    params,
    encoder_tokens: np.ndarray,
    config: DecodeConfig,
    batch_size: int,
    seed: int = 0,
    progress: Optional[str] = None,
) -> np.ndarray:
    """Decodes every row of `encoder_tokens` [n, enc_len] in batches of `batch_size`.

    Returns the generated tokens [n, max_decode_length] (pad after EOS). The last batch is
    padded to `batch_size` (at most n) with copies of its last row, so one shape is compiled.
    `progress`: a description to show a progress bar under (examples/s, ETA) on process 0.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = encoder_tokens.shape[0]
    # No larger than the rows there are: a BATCH_SIZE of 100000 for 4 inputs would pad them
    # to 100000 rows (tens of GB of decoder state).
    batch_size = max(1, min(batch_size, n))
    out = np.zeros((n, config.max_decode_length), np.int32)
    bar = progress_bar(n, progress) if progress else None
    for index, start in enumerate(range(0, n, batch_size)):
        rows = encoder_tokens[start : start + batch_size]  # [<=batch, enc_len]
        real = rows.shape[0]
        if real < batch_size:
            rows = np.concatenate([rows, np.repeat(rows[-1:], batch_size - real, axis=0)])
        rng = jax.random.fold_in(jax.random.key(seed), index) if config.method == "sample" else None
        tokens = generate(model, params, rows, config=config, rng=rng).tokens  # [batch, max_len]
        if not tokens.is_fully_addressable:
            # Multi-process training: every process decodes the same rows with the global
            # (sharded) params, and the tokens come back as a global array.
            tokens = multihost_utils.process_allgather(tokens, tiled=True)
        out[start : start + real] = np.asarray(jax.device_get(tokens))[:real]
        if bar is not None:
            bar.update(real)
    if bar is not None:
        bar.close()
    return out


def progress_bar(total: int, description: str):
    """A tqdm bar on stderr counting examples (rate and ETA), shown by process 0 only. In a
    log file rather than a terminal it writes a line every 30 s instead of redrawing."""
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=description,
        unit="ex",
        file=sys.stderr,
        disable=jax.process_index() != 0,
        mininterval=0.5 if interactive else 30,
        dynamic_ncols=interactive,
        ascii=not interactive,
    )


def tokens_to_texts(vocabulary, tokens: np.ndarray, model) -> list[str]:
    """Texts of rows [n, length] that `model` generated: each row up to (without) its first EOS."""
    return [vocabulary.decode(model.text_ids(row)) for row in np.asarray(tokens)]


# --------------------------------------------------------------------------------------
# Inputs and answers
# --------------------------------------------------------------------------------------


def encode_input(vocabulary, text: str, length: int, separator: bool) -> tuple[np.ndarray, int]:
    """(token ids [length] padded with 0 and ending in EOS, untrimmed length with EOS).

    Tokenized as the DSS tasks tokenize (`dss_jax.data.tasks`): the vocabulary's input
    prefix (a Hugging Face tokenizer's BOS) first; with `separator`, each literal "</s>"
    becomes EOS; too long inputs are cut to length-1 tokens plus EOS.
    """
    eos = vocabulary.eos_id
    parts = text.split(sources.EOS_SEPARATOR) if separator else [text]
    ids: list[int] = input_prefix(vocabulary)
    for i, part in enumerate(parts):
        ids += list(vocabulary.encode(part))
        if i < len(parts) - 1:
            ids.append(eos)
    full = len(ids) + 1
    ids = ids[: length - 1] + [eos]
    row = np.zeros((length,), np.int32)
    row[: len(ids)] = ids
    return row, full


def answer(
    model,
    params,
    vocabulary,
    label_rows: np.ndarray,
    *,
    label_length: int,
    rationale_rows: Optional[np.ndarray] = None,
    rationale_length: Optional[int] = None,
    single_task: bool = False,
    batch_size: int = 32,
    decode: Union[DecodeSettings, DecodeConfig, None] = None,
    progress: Optional[str] = None,
) -> tuple[list[str], Optional[list[str]]]:
    """(labels, rationales or None) of encoded "predict:" rows [n, input length] (and
    "explain:" rows, decoded when given).

    single_task: the student was trained on the single-task ablation, whose answer to
    "predict:" is "rationale So the answer is: label" (label_length then covers both):
    it is split into the rationale and the label, and rationale_rows are not decoded.
    progress: a progress bar per pass, named "<progress> labels" / "<progress> rationales"
    (with "": just "labels" / "rationales"); None: no bars.
    """
    from dss_jax.data.options import split_single_task

    def texts(rows, length, what):
        description = None if progress is None else f"{progress} {what}".strip()
        tokens = decode_batches(
            model, params, rows, as_decode_config(decode, length), batch_size, seed_of(decode), progress=description
        )
        return tokens_to_texts(vocabulary, tokens, model)

    labels = texts(label_rows, label_length, "labels")
    if single_task:
        rationales, labels = (list(x) for x in zip(*map(split_single_task, labels)))
        return labels, rationales
    if rationale_rows is None:
        return labels, None
    if rationale_length is None:
        raise ValueError("answer: rationale_rows need a rationale_length")
    return labels, texts(rationale_rows, rationale_length, "rationales")
