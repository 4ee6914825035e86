"""Vocabularies: a checkpoint's SentencePiece model, or one trained here for a corpus.

A student finetuned from a pretrained T5 uses the `spiece.model` saved beside its
checkpoint (`from_checkpoint`). A student trained from scratch can use a SentencePiece
model trained on the task's own text (`cached_vocabulary`): training is deterministic
(one thread, no sampling, sentences in the given order) and the model is cached under a
name that hashes the corpus and the settings, so the same data gives the same file and
it is trained once.

Ids follow T5: pad 0, eos 1, unk 2, no bos; unknown characters fall back to bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import pathlib
from typing import Iterable, Optional

import sentencepiece as spm
import seqio

from dss_jax import files
from dss_jax.data.cache import load_records

SPIECE_NAME = "spiece.model"


def from_checkpoint(path: str | os.PathLike) -> seqio.SentencePieceVocabulary:
    """The vocabulary of a checkpoint dir (its `spiece.model`) or of a .model file."""
    path = pathlib.Path(path)
    model = path / SPIECE_NAME if path.is_dir() else path
    if not model.is_file():
        raise FileNotFoundError(
            f"{model} not found; expected a SentencePiece model ({SPIECE_NAME} in the checkpoint dir, "
            "saved there by dss_jax.checkpoints.save_params)"
        )
    return seqio.SentencePieceVocabulary(str(model))


@dataclasses.dataclass(frozen=True)
class VocabSettings:
    vocab_size: int = 8000
    model_type: str = "unigram"
    character_coverage: float = 1.0
    byte_fallback: bool = True

    def trainer_args(self) -> dict:
        return dict(
            vocab_size=self.vocab_size,
            model_type=self.model_type,
            character_coverage=self.character_coverage,
            byte_fallback=self.byte_fallback,
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,  # T5's ids
            # Determinism: every sentence, in order, on one thread.
            num_threads=1,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            # A small corpus may not support vocab_size pieces; take what it supports.
            hard_vocab_limit=False,
            max_sentence_length=1 << 16,
            split_digits=True,  # numbers matter for SVAMP equations
            minloglevel=2,
        )


def _lines(texts: Iterable[str]) -> list[str]:
    lines = []
    for text in texts:
        lines += [line for line in text.split("\n") if line.strip()]
    return lines


def train_vocabulary(
    texts: Iterable[str], output: str | os.PathLike, settings: VocabSettings = VocabSettings()
) -> pathlib.Path:
    """Trains a SentencePiece model on `texts` and writes it to `output` (a .model file)."""
    lines = _lines(texts)
    if not lines:
        raise ValueError("cannot train a vocabulary on an empty corpus")
    output = pathlib.Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buffer, **settings.trainer_args())
    files.atomic_write(output, buffer.getvalue())  # concurrent trainers write the same bytes
    return output


def corpus_fingerprint(lines: list[str], settings: VocabSettings) -> str:
    digest = hashlib.sha256(repr(dataclasses.astuple(settings)).encode())
    for line in lines:
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def cached_vocabulary(
    texts: Iterable[str],
    cache_dir: str | os.PathLike,
    settings: VocabSettings = VocabSettings(),
    name: str = "dss",
) -> seqio.SentencePieceVocabulary:
    """A vocabulary trained on `texts`, trained once and cached in `cache_dir`."""
    lines = _lines(texts)
    path = pathlib.Path(cache_dir) / f"{name}.{settings.vocab_size}.{corpus_fingerprint(lines, settings)}.model"
    if not path.is_file():
        logging.info("training a %d-piece vocabulary on %d lines -> %s", settings.vocab_size, len(lines), path)
        train_vocabulary(lines, path, settings)
    return seqio.SentencePieceVocabulary(str(path))


def cache_texts(cache_paths: Iterable[str | os.PathLike], sample_index: Optional[int] = None) -> list[str]:
    """The text of teacher caches, as a vocabulary corpus: inputs, gold labels, and every
    parsed teacher rationale and label (only sample `sample_index` when given)."""
    texts: list[str] = []
    for path in cache_paths:
        for record in load_records(path):
            texts.append(record.input)
            if record.label:
                texts.append(record.label)
            samples = record.samples if sample_index is None else record.samples[sample_index : sample_index + 1]
            for sample in samples:
                texts += [t for t in (sample.rationale, sample.label) if t]
    return texts
