"""Vocabularies: a checkpoint's SentencePiece model, one trained here for a corpus, or a
Hugging Face tokenizer.json (`TokenizerJsonVocabulary`, for decoder-only students).

A student finetuned from a pretrained T5 uses the `spiece.model` saved beside its
checkpoint (`from_checkpoint`). A student trained from scratch can use a SentencePiece
model trained on the task's own text (`cached_vocabulary`): training is deterministic
(one thread, no sampling, sentences in the given order) and the model is cached under a
name that hashes the corpus and the settings, so the same data gives the same file and
it is trained once.

Ids follow T5: pad 0, eos 1, unk 2, no bos; unknown characters fall back to bytes.

Every path may be local or on an object store (gs://...). seqio reads a SentencePiece
model through tf.io.gfile, a GCS client of its own, so a gs:// model is copied into a
local cache first (`sentencepiece_vocabulary`); `vocabulary_file` still gives the URL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import pathlib
import tempfile
from typing import Iterable, Optional

import numpy as np
import sentencepiece as spm
import seqio

from dss_jax import files
from dss_jax.data.cache import load_records

SPIECE_NAME = "spiece.model"


def from_checkpoint(path: str | os.PathLike) -> seqio.Vocabulary:
    """The vocabulary of a checkpoint dir (its `spiece.model`, else its Hugging Face
    `tokenizer.json`), of a .model file or of a tokenizer.json; local or gs://."""
    path = files.path(path)
    if path.is_dir() and not (path / SPIECE_NAME).is_file() and (path / TOKENIZER_JSON).is_file():
        path = path / TOKENIZER_JSON
    if path.name == TOKENIZER_JSON:
        return TokenizerJsonVocabulary(path)
    model = path / SPIECE_NAME if path.is_dir() else path
    if not model.is_file():
        raise FileNotFoundError(
            f"{model} not found; expected a SentencePiece model ({SPIECE_NAME} in the checkpoint dir, "
            f"saved there by dss_jax.checkpoints.save_params) or a Hugging Face {TOKENIZER_JSON}"
        )
    return sentencepiece_vocabulary(model)


def sentencepiece_vocabulary(path: str | os.PathLike, extra_ids: int = 0) -> seqio.SentencePieceVocabulary:
    """seqio's SentencePieceVocabulary of the model file `path`, local or on an object
    store. seqio reads its file through tf.io.gfile, whose GCS client is not ours (it
    ignores the emulator and gcsfs's settings), so a remote model is copied to a local
    cache file, named by its content, and seqio reads that; `vocabulary_file` gives `path`."""
    if not files.is_remote(path):
        return seqio.SentencePieceVocabulary(str(path), extra_ids=extra_ids)
    url = str(files.path(path))
    return _StagedSentencePieceVocabulary(_local_copy(url), url, extra_ids=extra_ids)


def _local_copy(url: str) -> str:
    """A local copy of the object-store file `url`, under the temp dir's dss_vocab/."""
    data = files.path(url).read_bytes()
    local = pathlib.Path(tempfile.gettempdir()) / "dss_vocab" / f"{hashlib.sha256(data).hexdigest()[:32]}.model"
    if not (local.is_file() and local.stat().st_size == len(data)):
        local.parent.mkdir(parents=True, exist_ok=True)
        files.atomic_write(local, data)  # processes copying the same model write the same bytes
    return str(local)


class _StagedSentencePieceVocabulary(seqio.SentencePieceVocabulary):
    """A SentencePiece model on an object store, which seqio reads from a local copy;
    `source` is its URL (what `vocabulary_file` gives and a run records)."""

    def __init__(self, local: str, source: str, extra_ids: int = 0):
        super().__init__(local, extra_ids=extra_ids)
        self.source = source

    def _model_context(self):
        # Unpickled where the local copy is missing (another host, a cleaned temp dir).
        if not self._model and not os.path.isfile(self._sentencepiece_model_file):
            self._sentencepiece_model_file = _local_copy(self.source)
        return super()._model_context()


def input_prefix(vocabulary: seqio.Vocabulary) -> list[int]:
    """The ids an input (a prompt) starts with before its text: a Hugging Face tokenizer's
    BOS (`TokenizerJsonVocabulary.prefix_ids`); none for SentencePiece vocabularies (T5)."""
    vocabulary = vocabulary.resolve() if hasattr(vocabulary, "resolve") else vocabulary
    return list(getattr(vocabulary, "prefix_ids", []))


def vocabulary_file(vocabulary: seqio.Vocabulary) -> Optional[str]:
    """The file behind a vocabulary (a SentencePiece model or a tokenizer.json), if any: for
    one on an object store its URL, not the local copy seqio reads."""
    vocabulary = vocabulary.resolve() if hasattr(vocabulary, "resolve") else vocabulary
    if isinstance(vocabulary, TokenizerJsonVocabulary):
        return str(vocabulary.file)
    return getattr(vocabulary, "source", None) or getattr(vocabulary, "sentencepiece_model_file", None)


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
    """Trains a SentencePiece model on `texts` and writes it to `output` (a .model file,
    local or gs://)."""
    lines = _lines(texts)
    if not lines:
        raise ValueError("cannot train a vocabulary on an empty corpus")
    output = files.path(output)
    files.makedirs(output.parent)
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
    """A vocabulary trained on `texts`, trained once and cached in `cache_dir` (local or gs://)."""
    lines = _lines(texts)
    path = files.path(cache_dir) / f"{name}.{settings.vocab_size}.{corpus_fingerprint(lines, settings)}.model"
    if not path.is_file():
        logging.info("training a %d-piece vocabulary on %d lines -> %s", settings.vocab_size, len(lines), path)
        train_vocabulary(lines, path, settings)
    return sentencepiece_vocabulary(path)


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


TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


def sentencepiece_as_tokenizer_json(spm_file: str | os.PathLike) -> dict[str, bytes]:
    """{tokenizer.json, tokenizer_config.json} of a Hugging Face fast tokenizer that gives the
    ids a SentencePiece unigram model gives, byte fallback included (transformers' own
    converter drops byte fallback for unigram models, so characters outside the pieces
    become <unk>); for exporting a decoder-only student trained with a SentencePiece
    vocabulary. Built from the model's pieces and its normalizer spec:

        normalizer     its precompiled character map (e.g. nmt_nfkc), then SentencePiece's
                       whitespace rule: no leading, trailing or repeated spaces
        pre-tokenizer  spaces become "▁", one before the text (add_dummy_prefix), words
                       split at them (pieces never span a word: split_by_whitespace)
        model          Unigram over the pieces and scores, unknown id and byte fallback
        decoder        "▁" back to spaces, <0xNN> pieces back to bytes, the prefix dropped

    Control pieces (<pad>, </s>) are special tokens. Other kinds of model (BPE, word, char)
    and options this does not express are refused in one line."""
    from sentencepiece import sentencepiece_model_pb2 as model_pb2
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    spm_file = files.path(spm_file)
    proto = model_pb2.ModelProto()
    proto.ParseFromString(spm_file.read_bytes())
    trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
    refusals = [
        (trainer.model_type != model_pb2.TrainerSpec.UNIGRAM, "it is not a unigram model"),
        (not trainer.split_by_whitespace, "its pieces may span words (split_by_whitespace=false)"),
        (trainer.treat_whitespace_as_suffix, "it puts whitespace after words (treat_whitespace_as_suffix)"),
        (not normalizer.escape_whitespaces, "it keeps whitespace unescaped"),
        (bool(normalizer.normalization_rule_tsv), "it has a custom normalization rule"),
        (
            any(p.type == model_pb2.ModelProto.SentencePiece.USER_DEFINED for p in proto.pieces),
            "it has user-defined pieces",
        ),
    ]
    for refused, why in refusals:
        if refused:
            raise ValueError(f"{spm_file}: cannot be written as a tokenizer.json: {why}")
    pieces = [(p.piece, p.score) for p in proto.pieces]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=trainer.unk_id, byte_fallback=trainer.byte_fallback))
    steps = [normalizers.Precompiled(normalizer.precompiled_charsmap)] if normalizer.precompiled_charsmap else []
    if normalizer.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if steps:
        tokenizer.normalizer = normalizers.Sequence(steps)
    scheme = "always" if normalizer.add_dummy_prefix else "never"
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)
    to_text = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if normalizer.add_dummy_prefix:
        to_text.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(to_text)
    control = model_pb2.ModelProto.SentencePiece.CONTROL
    tokenizer.add_special_tokens([p.piece for p in proto.pieces if p.type == control])

    def piece(index: int) -> Optional[str]:
        return proto.pieces[index].piece if 0 <= index < len(proto.pieces) else None

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": piece(trainer.eos_id),
        "unk_token": piece(trainer.unk_id),
        "pad_token": piece(trainer.pad_id),
        "bos_token": piece(trainer.bos_id),
        "model_max_length": int(1e30),
    }
    return {
        TOKENIZER_JSON: tokenizer.to_str(pretty=True).encode(),
        TOKENIZER_CONFIG: (json.dumps({k: v for k, v in config.items() if v is not None}, indent=2) + "\n").encode(),
    }


class TokenizerJsonVocabulary(seqio.Vocabulary):
    """A SeqIO vocabulary over a Hugging Face `tokenizer.json` (Llama 3, Qwen, Gemma 3 ship
    one), through the `tokenizers` library: the ids and text transformers' fast tokenizer
    gives, in Python and in tf.data.

        vocab = TokenizerJsonVocabulary("/models/Qwen3-0.6B")   # a directory or the file

    EOS and BOS are the `eos_token` / `bos_token` of the tokenizer_config.json beside it
    (or given). `encode` adds no special tokens, as seqio's vocabularies do not; `decode`
    stops at the first EOS (seqio) and drops special tokens. seqio reserves id 0 for
    padding, which these vocabularies give to a real token: rows built from them must mark
    padding by segment ids and loss weights, never by the token value.
    """

    def __init__(self, path: str | os.PathLike, eos_token: Optional[str] = None, bos_token: Optional[str] = None):
        import tokenizers

        path = files.path(path)
        file = path / TOKENIZER_JSON if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"{file} not found; expected a Hugging Face {TOKENIZER_JSON}")
        try:
            if files.is_remote(file):  # the library reads only local files
                self._tokenizer = tokenizers.Tokenizer.from_buffer(file.read_bytes())
            else:
                self._tokenizer = tokenizers.Tokenizer.from_file(str(file))
        except Exception as e:  # the library raises its own exception type for a damaged file
            raise ValueError(f"{file}: not a readable {TOKENIZER_JSON} ({str(e).splitlines()[0]})") from None
        config_file = file.parent / TOKENIZER_CONFIG
        config = files.read_json_object(config_file, ValueError) if config_file.is_file() else {}
        self._file = file
        self._digest = hashlib.sha256(file.read_bytes()).hexdigest()
        self._eos = self._token_id(eos_token or _token_text(config.get("eos_token")), "eos_token", config_file)
        self._bos = self._token_id(bos_token or _token_text(config.get("bos_token")), "bos_token", config_file)
        super().__init__(extra_ids=0)

    def _token_id(self, token: Optional[str], field: str, config_file: pathlib.Path) -> Optional[int]:
        if token is None:
            return None
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{config_file}: {field}={token!r} is not a token of {self._file}")
        return token_id

    @property
    def file(self) -> pathlib.Path:
        """The tokenizer.json read (its tokenizer_config.json is beside it)."""
        return self._file

    @property
    def eos_id(self) -> Optional[int]:
        return self._eos

    @property
    def bos_id(self) -> Optional[int]:
        return self._bos

    @property
    def unk_id(self) -> Optional[int]:
        unk = getattr(self._tokenizer.model, "unk_token", None)
        return None if unk is None else self._tokenizer.token_to_id(unk)

    @property
    def _base_vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def _encode(self, s: str) -> list[int]:
        return self._tokenizer.encode(s, add_special_tokens=False).ids

    def _decode(self, ids) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def _encode_tf(self, s):
        """A string -> ids [None]; a vector of strings -> ragged ids [batch, None]."""
        import tensorflow as tf

        def encode(texts):
            rows = [self._encode(t.decode("utf-8")) for t in np.reshape(texts, -1)]
            lengths = np.asarray([len(r) for r in rows], np.int64)
            return np.asarray([i for r in rows for i in r], np.int32), lengths

        ids, lengths = tf.numpy_function(encode, [s], (tf.int32, tf.int64), stateful=False)
        ids = tf.ensure_shape(ids, [None])
        if s.shape.rank == 0:
            return ids
        return tf.RaggedTensor.from_row_lengths(ids, tf.ensure_shape(lengths, [None]))

    @property
    def prefix_ids(self) -> list[int]:
        """The ids the tokenizer puts before a text when it adds special tokens (Llama 3's
        and Gemma's BOS; none for Qwen): what a prompt starts with, as in transformers."""
        with_special = self._tokenizer.encode("x", add_special_tokens=True).ids
        plain = self._tokenizer.encode("x", add_special_tokens=False).ids
        starts = [i for i in range(len(with_special)) if with_special[i : i + len(plain)] == plain]
        return with_special[: starts[0]] if starts else []

    def _decode_tf(self, ids):
        import tensorflow as tf

        def decode(batch):
            rows = batch.reshape(-1, batch.shape[-1]) if batch.ndim else batch.reshape(1, 1)
            texts = [self._decode(row).encode("utf-8") for row in rows]
            return np.asarray(texts, dtype=object).reshape(batch.shape[:-1])

        return tf.numpy_function(decode, [ids], tf.string, stateful=False)

    def __eq__(self, other) -> bool:
        return isinstance(other, TokenizerJsonVocabulary) and (self._digest, self._eos, self._bos) == (
            other._digest,
            other._eos,
            other._bos,
        )

    def __hash__(self) -> int:
        return hash((self._digest, self._eos, self._bos))


def _token_text(value) -> Optional[str]:
    """tokenizer_config.json writes a special token as its text or as {"content": text}."""
    if isinstance(value, dict):
        return value.get("content")
    return value
