"""Pretraining objectives as SeqIO tasks (T5 span corruption for encoder-decoder students,
causal language modelling for decoder-only ones), and an offline corpus for the built-in domain.

    from dss_jax.data import pretrain
    pretrain.register_span_corruption_task("my_pretrain", text_files=["/data/domain.txt"])
    pretrain.register_causal_lm_task("my_causal_pretrain", text_files=["/data/domain.txt"])

then `python -m dss_jax.train --gin_file=runs/pretrain.gin ...` trains on it with the
same binary, and a DSS run starts from its checkpoint with INITIAL_CHECKPOINT_PATH.

The objective is T5's: the text (one document per line) is tokenized, concatenated and
cut into chunks of `chunk_length` tokens; in each chunk `noise_density` (0.15) of the
tokens, in spans of `mean_noise_span_length` (3) on average, are noise. The input keeps
the other tokens and replaces each noise span with a sentinel; the target lists each
sentinel followed by the span it replaced. Sentinels are the vocabulary's extra ids,
from the top down (the first span of a chunk gets the highest id), as in T5. Spans are
drawn with stateless random ops from the chunk's position in the corpus, so a chunk is
corrupted the same way in every epoch and run (as a SeqIO task that corrupts before it
repeats does); the order of the chunks follows the run's seed, and a resumed run sees
exactly the stream it left.

The task's features are the DSS pipeline's: the corrupted chunk is `label_inputs` and
its sentinel target `label_targets`; the rationale features are empty, and
runs/pretrain.gin trains with RATIONALE_WEIGHT = 0, so only the label segments are
packed.

The causal LM objective cuts the same concatenated stream into chunks of `length` tokens:
the first token is `label_inputs`, the other length - 1 are `label_targets` (a decoder-only
row predicts each token from the ones before it; no EOS is added, the documents are
already separated by theirs).

`write_synthetic_corpus` writes the built-in domain's corpus (see its docstring):
generated text only, nothing downloaded.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import re
from typing import Callable, Mapping, Optional, Sequence, Union

import seqio
import tensorflow as tf

import gin
from dss_jax import files
from dss_jax.data import options as dss_options
from dss_jax.data import paired as dss_paired
from dss_jax.data import tasks as dss_tasks
from dss_jax.data import vocab as dss_vocab
from dss_jax.data.lazy_vocab import LazyVocabulary

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0


@dataclasses.dataclass(frozen=True)
class SpanCorruption:
    """How a chunk of `chunk_length` tokens is corrupted; every count is fixed by the
    settings, so every example has the same shape before EOS."""

    chunk_length: int
    noise_density: float = NOISE_DENSITY
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH

    def __post_init__(self):
        if self.chunk_length < 2:
            raise ValueError(f"span corruption: chunk_length must be at least 2, got {self.chunk_length}")
        if not 0.0 < self.noise_density < 1.0:
            raise ValueError(f"span corruption: noise_density must be in (0, 1), got {self.noise_density}")
        if self.mean_noise_span_length < 1.0:
            raise ValueError(f"span corruption: mean_noise_span_length must be >= 1, got {self.mean_noise_span_length}")

    @property
    def noise_tokens(self) -> int:
        return min(max(int(round(self.chunk_length * self.noise_density)), 1), self.chunk_length - 1)

    @property
    def spans(self) -> int:
        return max(int(round(self.noise_tokens / self.mean_noise_span_length)), 1)

    @property
    def inputs_length(self) -> int:
        """Tokens of a corrupted input, EOS included."""
        return self.chunk_length - self.noise_tokens + self.spans + 1

    @property
    def targets_length(self) -> int:
        """Tokens of a target (sentinel + span, per span), EOS included."""
        return self.noise_tokens + self.spans + 1

    @classmethod
    def fitting(
        cls,
        inputs_length: int,
        targets_length: int,
        noise_density: float = NOISE_DENSITY,
        mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
    ) -> "SpanCorruption":
        """The longest chunk whose corrupted input and target fit the given lengths (T5
        sizes its chunks the same way, so that nothing is cut)."""
        best = None
        for n in range(2, 8 * inputs_length):
            c = cls(n, noise_density, mean_noise_span_length)
            if c.inputs_length <= inputs_length and c.targets_length <= targets_length:
                best = c
            elif c.inputs_length > inputs_length:
                break
        if best is None:
            raise ValueError(
                f"span corruption: no chunk fits inputs of {inputs_length} and targets of "
                f"{targets_length} tokens; give longer TASK_FEATURE_LENGTHS"
            )
        return best


def _random_partition(total: int, parts: int, seed: tf.Tensor) -> tf.Tensor:
    """`parts` positive lengths summing to `total`, uniformly among such compositions."""
    if parts == 1:
        return tf.constant([total], tf.int32)
    # parts - 1 distinct cut points among 1 .. total - 1.
    order = tf.argsort(tf.random.stateless_uniform([total - 1], seed=seed))
    cuts = tf.sort(order[: parts - 1] + 1)
    bounds = tf.concat([[0], tf.cast(cuts, tf.int32), [total]], axis=0)
    return bounds[1:] - bounds[:-1]


def noise_mask(corruption: SpanCorruption, seed: tf.Tensor) -> tf.Tensor:
    """[chunk_length] bool: which tokens are noise. Spans alternate non-noise, noise, ...
    starting with non-noise; exactly `noise_tokens` noise tokens in `spans` spans."""
    n = corruption.chunk_length
    seeds = tf.random.experimental.stateless_split(seed, 2)
    noise = _random_partition(corruption.noise_tokens, corruption.spans, seeds[0])
    kept = _random_partition(n - corruption.noise_tokens, corruption.spans, seeds[1])
    lengths = tf.reshape(tf.stack([kept, noise], axis=1), [-1])  # kept_0, noise_0, kept_1, ...
    starts = tf.cumsum(lengths)[:-1]
    first = tf.scatter_nd(starts[:, None], tf.ones_like(starts), [n])
    span_index = tf.cumsum(first)  # 0 for kept_0, 1 for noise_0, 2 for kept_1, ...
    return tf.equal(span_index % 2, 1)


def _replace_spans(tokens: tf.Tensor, mask: tf.Tensor, top_id: int) -> tf.Tensor:
    """Each run of masked tokens becomes one sentinel: top_id, top_id - 1, ... in order."""
    previous = tf.concat([[False], mask[:-1]], axis=0)
    first = mask & ~previous
    sentinels = top_id + 1 - tf.cumsum(tf.cast(first, tf.int32))
    out = tf.where(first, sentinels, tokens)
    return tf.boolean_mask(out, ~(mask & previous))


def corrupt(tokens: tf.Tensor, corruption: SpanCorruption, top_id: int, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(inputs, targets) of one chunk, without EOS: the noise spans replaced by sentinels
    in the input; each sentinel followed by its span in the target."""
    mask = noise_mask(corruption, seed)
    return _replace_spans(tokens, mask, top_id), _replace_spans(tokens, ~mask, top_id)


def _chunks(dataset: tf.data.Dataset, vocabulary: seqio.Vocabulary, chunk_length: int) -> tf.data.Dataset:
    """The documents tokenized, concatenated (EOS between them, as T5 concatenates
    documents) and cut into chunks of exactly `chunk_length` tokens."""
    eos = tf.constant([vocabulary.eos_id], tf.int32)

    def tokenize(ex):
        return tf.concat([tf.cast(vocabulary.encode_tf(ex["text"]), tf.int32), eos], axis=0)

    return dataset.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE).unbatch().batch(chunk_length, drop_remainder=True)


def _span_corruption_fn(corruption: SpanCorruption, vocabulary: seqio.Vocabulary):
    def preprocess(dataset: tf.data.Dataset, sequence_length=None, output_features=None) -> tf.data.Dataset:
        del sequence_length, output_features
        top_id = vocabulary.vocab_size - 1  # seqio counts the extra ids in vocab_size
        if corruption.spans > vocabulary.extra_ids:
            raise ValueError(
                f"span corruption: {corruption.spans} spans per chunk need as many sentinels, but the "
                f"vocabulary has {vocabulary.extra_ids} extra ids; give it more (extra_ids) or use "
                "shorter TASK_FEATURE_LENGTHS"
            )
        chunks = _chunks(dataset, vocabulary, corruption.chunk_length).enumerate()

        def example(index, tokens):
            inputs, targets = corrupt(tokens, corruption, top_id, tf.stack([tf.constant(0, tf.int64), index]))
            empty = tf.zeros([0], tf.int32)
            return {
                "label_inputs": inputs,
                "label_targets": targets,
                "rationale_inputs": empty,
                "rationale_targets": empty,
            }

        return chunks.map(example, num_parallel_calls=tf.data.AUTOTUNE)

    return preprocess


TextFiles = Union[Sequence[Union[str, os.PathLike]], Callable[[], Sequence[Union[str, os.PathLike]]]]


def register_span_corruption_task(
    name: str,
    text_files: Union[TextFiles, Mapping[str, TextFiles]],
    vocabulary: Optional[seqio.Vocabulary] = None,
    *,
    inputs_length: int = 128,
    targets_length: int = 32,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
    extra_ids: int = 100,
) -> seqio.Task:
    """Registers a span-corruption task over text files (one document per line).

    text_files: the train split's files, or {split: files}; files may be a callable
      returning them (asked whenever the split is read, e.g. to write them on demand).
    vocabulary: a seqio vocabulary *with* extra ids for the sentinels (None: the gin
      `task_vocabulary.spm_path` with `extra_ids` added).
    inputs_length / targets_length: the task's label_inputs / label_targets lengths
      (TASK_FEATURE_LENGTHS); chunks are sized so that nothing is cut.
    """
    splits = dict(text_files) if isinstance(text_files, Mapping) else {"train": text_files}
    corruption = SpanCorruption.fitting(inputs_length, targets_length, noise_density, mean_noise_span_length)
    if vocabulary is None:
        vocabulary = LazyVocabulary(functools.partial(_gin_vocabulary, extra_ids), name=f"{name} vocabulary")

    # The rationale features stay empty (no EOS): there is nothing to explain.
    output_features = {
        k: seqio.Feature(vocabulary, add_eos=k.startswith("label_"), required=False)
        for k in dss_paired.PAIRED_TEXT_FEATURES
    }
    preprocessors = [_span_corruption_fn(corruption, vocabulary), seqio.preprocessors.append_eos_after_trim]
    return _register_text_task(name, splits, output_features, preprocessors)


def _register_text_task(name: str, splits: Mapping[str, TextFiles], output_features, preprocessors) -> seqio.Task:
    """A task over text files (one document per line, feature "text"), replacing any of that name."""

    def dataset_fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None) -> tf.data.Dataset:
        del shuffle_files, seed  # the chunks are shuffled by seqio
        paths = splits[split]() if callable(splits[split]) else splits[split]
        paths = [os.fspath(f) for f in paths]
        missing = [f for f in paths if not (files.path(f).is_file() if files.is_remote(f) else os.path.isfile(f))]
        if not paths or missing:
            raise FileNotFoundError(f"{name}/{split}: text file not found: {missing[0] if missing else '(none given)'}")
        return text_lines(paths).map(lambda line: {"text": line})

    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    dss_tasks.REGISTERED.add(name)
    return seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=list(splits)),
        output_features=output_features,
        preprocessors=preprocessors,
        metric_fns=[],
    )


def text_lines(paths: Sequence[str]) -> tf.data.Dataset:
    """The lines of the files in order, without their line ends, as TextLineDataset gives
    them. TensorFlow's file readers use their own GCS client (which ignores what files.py
    is told, e.g. an emulator), so an object-store file is read in Python, streamed."""
    if not any(files.is_remote(p) for p in paths):
        return tf.data.TextLineDataset(list(paths))
    parts = [_object_lines(p) if files.is_remote(p) else tf.data.TextLineDataset([p]) for p in paths]
    dataset = parts[0]
    for part in parts[1:]:
        dataset = dataset.concatenate(part)
    return dataset


def _object_lines(url: str) -> tf.data.Dataset:
    def lines():
        with files.path(url).open("rb") as f:
            for line in f:
                if line.endswith(b"\n"):
                    line = line[:-1]
                    if line.endswith(b"\r"):  # TextLineDataset drops a CRLF whole
                        line = line[:-1]
                yield line

    return tf.data.Dataset.from_generator(lines, output_signature=tf.TensorSpec((), tf.string))


def register_causal_lm_task(
    name: str, text_files: Union[TextFiles, Mapping[str, TextFiles]], vocabulary: seqio.Vocabulary, *, length: int = 256
) -> seqio.Task:
    """Registers a causal language-modelling task over text files (one document per line):
    chunks of `length` tokens, label_inputs the first token and label_targets the rest
    (TASK_FEATURE_LENGTHS: label_inputs 1, label_targets length - 1)."""
    if length < 2:
        raise ValueError(f"a causal LM chunk needs at least 2 tokens, got length={length}")
    splits = dict(text_files) if isinstance(text_files, Mapping) else {"train": text_files}

    def preprocess(dataset: tf.data.Dataset, sequence_length=None, output_features=None) -> tf.data.Dataset:
        del sequence_length, output_features
        empty = tf.zeros([0], tf.int32)

        def example(tokens):
            return {
                "label_inputs": tokens[:1],
                "label_targets": tokens[1:],
                "rationale_inputs": empty,
                "rationale_targets": empty,
            }

        return _chunks(dataset, vocabulary, length).map(example, num_parallel_calls=tf.data.AUTOTUNE)

    output_features = {
        k: seqio.Feature(vocabulary, add_eos=False, required=False) for k in dss_paired.PAIRED_TEXT_FEATURES
    }
    return _register_text_task(name, splits, output_features, [preprocess])


def _gin_vocabulary(extra_ids: int) -> seqio.Vocabulary:
    path = dss_tasks.explicit_vocabulary()
    if path is None:
        raise ValueError("a span-corruption task needs a vocabulary: bind task_vocabulary.spm_path, or pass one")
    return dss_vocab.sentencepiece_vocabulary(path, extra_ids=extra_ids)


# --------------------------------------------------------------------------------------
# The built-in domain's corpus
# --------------------------------------------------------------------------------------

CORPUS_VERSION = 1


@gin.configurable
def synthetic_corpus_config(problems: int = 60000, seed: int = 7919) -> dict:
    """How much generated text the corpus holds (gin: synthetic_corpus_config.problems)."""
    return {"problems": problems, "seed": seed}


@gin.configurable
def pretrain_vocabulary(vocab_size: int = 900, extra_ids: int = 100) -> tuple[int, int]:
    """The built-in pretraining task's vocabulary: SentencePiece pieces trained on the
    corpus, plus sentinels (the model's vocab_size must hold both)."""
    return vocab_size, extra_ids


def corpus_documents(problems: int, seed: int, exclude: Sequence[str] = ()) -> list[str]:
    """The corpus's documents, one per line: word problems of the synthetic generator
    with every setting varied (1-3 operations, numbers up to 100, distractors) and no
    answer or reasoning, drawn from their own seed, minus every text in `exclude` (the
    evaluated problems, so the student never reads a test question before its test);
    and the prose of the project's own documentation (README.md, docs/*.md), which is
    English about this task."""
    from dss_jax.data import synthetic
    from dss_jax.data.synthetic.problems import NumberRange
    from dss_jax.data.synthetic.templates import generate_problem

    excluded = set(exclude)
    docs, seen = [], set()
    rng_config = synthetic.SyntheticConfig(seed=seed)
    for i in range(problems):
        for attempt in range(100):
            rng = synthetic.rng_for(rng_config, "corpus", i, attempt)
            problem = generate_problem(rng, NumberRange(2, 100), 1, 3, 0.3)
            text = problem.text.replace("\n", " ")
            if problem.text not in excluded and text not in seen:
                break
        else:
            continue
        seen.add(text)
        docs.append(text)
    docs += _documentation_paragraphs()
    return docs


def _documentation_paragraphs() -> list[str]:
    root = pathlib.Path(__file__).resolve().parents[2]
    files = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    out = []
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        text = re.sub(r"```.*?```", " ", text, flags=re.S)  # code blocks are not prose
        for para in re.split(r"\n\s*\n", text):
            para = " ".join(line.strip() for line in para.splitlines() if not line.lstrip().startswith(("|", "    ")))
            para = re.sub(r"[#*`>\[\]]", "", para).strip()
            if len(para.split()) >= 8:
                out.append(para)
    return out


def write_synthetic_corpus(
    cache_dir: Optional[Union[str, os.PathLike]] = None, exclude_config: Optional["object"] = None
) -> tuple[pathlib.Path, dict]:
    """Writes (once) the built-in corpus under CACHE_DIR/pretrain/ and returns (path,
    description): its documents, words and bytes. `exclude_config` (a SyntheticConfig,
    default: gin's synthetic_config) names the dataset whose validation and test problems
    are left out."""
    from dss_jax.data import synthetic

    settings = dict(synthetic_corpus_config(), version=CORPUS_VERSION)
    config = exclude_config or synthetic.synthetic_config()
    settings["exclude"] = config.fingerprint()
    directory = files.path(os.fspath(cache_dir or dss_options.data_locations()[1])) / "pretrain"
    name = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = directory / f"synthetic_corpus.{name}.txt"
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        evaluated = synthetic.generate_problems(config)
        exclude = [p.text for split in ("validation", "test") for p in evaluated[split]]
        docs = corpus_documents(settings["problems"], settings["seed"], exclude)
        text = "".join(d + "\n" for d in docs)
        description = {"documents": len(docs), "words": len(text.split()), "bytes": len(text.encode()), **settings}
        files.makedirs(directory)
        files.atomic_write(path, text)
        files.atomic_write(meta_path, json.dumps(description, indent=1) + "\n")
        logging.info("pretraining corpus: %d documents, %d words -> %s", len(docs), description["words"], path)
    return path, json.loads(meta_path.read_text())


def corpus_vocabulary(corpus: Union[str, os.PathLike]) -> seqio.Vocabulary:
    """A SentencePiece vocabulary trained on the corpus (cached next to it), with the
    sentinels of `pretrain_vocabulary` as extra ids."""
    vocab_size, extra_ids = pretrain_vocabulary()
    corpus = files.path(os.fspath(corpus))
    with corpus.open(encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    spm = dss_vocab.cached_vocabulary(
        lines, corpus.parent, dss_vocab.VocabSettings(vocab_size=vocab_size), name="pretrain"
    )
    return dss_vocab.sentencepiece_vocabulary(dss_vocab.vocabulary_file(spm), extra_ids=extra_ids)
