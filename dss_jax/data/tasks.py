"""SeqIO tasks of paired examples, built from teacher caches.

Every example carries both halves of Distilling Step-by-Step (paired.py: `predict: x ->
label` and `explain: x -> rationale`, plus `id` and `teacher_label`), tokenized here, each
ending in EOS (in NLI inputs the "</s>" between premise and hypothesis becomes the EOS
id, as the reference's tokenizer does), with the `*_pretokenized` strings.
`DssFeatureConverter` turns the tokenized features into model features.
`task_family(name)` says how a task's labels are judged. The options (label source,
train fraction, the single-task ablation ...) are gin's `task_options` (options.py),
scoped by task name.

Registering your own dataset from cache files takes one call:

    from dss_jax.data.tasks import register_cache_task
    register_cache_task("my_task", train_cache="train.jsonl", test_cache="test.jsonl",
                        family="cqa")          # family picks the label scoring
    # seqio.get_mixture_or_task("my_task").get_dataset(...)

A SeqIO mixture of such tasks (`seqio.MixtureRegistry.add("my_mix", [("a", 3), ("b", 1)])`)
trains and evaluates as MIXTURE_OR_TASK_NAME: training draws whole examples (label and
rationale together) from its tasks at SeqIO's rates, and evaluation scores each task and
their mean (`mixture_rates`, `task_names`; docs in gin/README.md).

Without `validation_cache`, the validation split is carved out of train (10% by default,
the reference's rule). `train_cache` may list several caches (e.g. labeled data plus a
student's annotations of unlabeled inputs, see docs/bootstrap.md), concatenated; with
`task_options.label_source = "gt_else_teacher"` a record's gold label is used when it
has one and its teacher's label otherwise. `split_records(name, split)` reads a split's
records as they are (what `python -m dss_jax.annotate --task=NAME --split=SPLIT` reads).
Without `vocabulary`, the task uses `task_vocabulary()`: the
`spm_path` bound in gin (e.g. a checkpoint's spiece.model), or a SentencePiece model
trained on the train cache and cached beside it.

Split roles: "train" uses the options (label source, teacher samples, fraction); every
other split is for evaluation: one example per record, gold label, the teacher's
rationale (or "" when it has none), nothing dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

import gin
from dss_jax import files
from dss_jax.cli import UserError
from dss_jax.data import dss_paper, parsers, sources, vocab
from dss_jax.data.cache import CacheRecord, load_records
from dss_jax.data.lazy_vocab import LazyVocabulary
from dss_jax.data.options import TaskOptions, current_options, data_locations, task_options
from dss_jax.data.paired import (
    LABEL_PREFIX,
    PAIRED_TEXT_FEATURES,
    RATIONALE_PREFIX,
    TEACHER_LABEL,
    evaluation_examples,
    training_examples,
)

TRAIN = "train"
VALIDATION = "validation"

# --------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------


@gin.configurable
def task_vocabulary(
    spm_path: Optional[str] = None,
    vocab_size: int = 8000,
    corpus_caches: Union[Sequence[str], Callable[[], Sequence[str]]] = (),
    cache_dir: Optional[str] = None,
) -> seqio.Vocabulary:
    """The vocabulary of tasks registered without one.

    `spm_path`: a SentencePiece model, a Hugging Face tokenizer.json (decoder-only
    students), or a checkpoint dir holding either (a finetuned or converted student).
    Otherwise a model trained on the text of `corpus_caches` (the task's train cache when
    resolved for a task; a callable is called only when needed),
    cached in `cache_dir` (default: `vocabularies/` under the project's cache directory,
    `data_locations`, so nothing is written beside a user's data), for a student trained
    from scratch.
    """
    if spm_path:
        return vocab.from_checkpoint(spm_path)
    if callable(corpus_caches):
        corpus_caches = corpus_caches()
    if not corpus_caches:
        raise ValueError("task_vocabulary needs spm_path (bind task_vocabulary.spm_path in gin) or corpus_caches")
    directory = cache_dir or data_locations()[1] / "vocabularies"
    texts = vocab.cache_texts(corpus_caches) + [LABEL_PREFIX, RATIONALE_PREFIX]
    return vocab.cached_vocabulary(texts, directory, vocab.VocabSettings(vocab_size=vocab_size))


def use_checkpoint_vocabulary(
    task_name: str, vocab_path: Optional[str], setting: str, checkpoint: Optional[str] = None
) -> None:
    """Makes the task tokenize with a checkpoint's spiece.model unless gin chose a vocabulary.

    A student's or a converted T5's vocabulary travels with its checkpoint (`setting`
    names where it came from, e.g. INITIAL_CHECKPOINT_PATH): finetuning or decoding it with
    another vocabulary feeds the embeddings other token ids, so a different one is used
    only when `task_vocabulary.spm_path` is bound explicitly, and a `checkpoint` without a
    spiece.model (`vocab_path` None) is refused rather than read with a vocabulary trained
    for the task. Tasks registered with their own vocabulary are left alone.
    """
    if explicit_vocabulary():
        return
    lazy = [
        vocabulary
        for name in task_names(task_name)  # each task of a mixture
        if isinstance(vocabulary := get_task(name).output_features["label_targets"].vocabulary, LazyVocabulary)
    ]
    if not lazy:
        return
    if vocab_path is None:
        if checkpoint is None:
            return
        from dss_jax.checkpoints import where_described

        raise UserError(
            f"{setting}: {where_described(checkpoint)} has no spiece.model or tokenizer.json, so the vocabulary the "
            "checkpoint was trained with is unknown: copy its run's vocabulary there, or bind "
            "--gin.task_vocabulary.spm_path=\"'PATH'\" to it"
        )
    with gin.unlock_config():
        gin.bind_parameter("task_vocabulary.spm_path", vocab_path)
    for vocabulary in lazy:
        vocabulary.reset()
    logging.info("%s uses the vocabulary of %s: %s", task_name, setting, vocab_path)


def explicit_vocabulary() -> Optional[str]:
    """`task_vocabulary.spm_path` when gin binds it, else None."""
    try:
        return gin.query_parameter("task_vocabulary.spm_path") or None
    except ValueError:  # not bound
        return None


# --------------------------------------------------------------------------------------
# Cache files -> split records
# --------------------------------------------------------------------------------------

PathProvider = Callable[[], pathlib.Path]
REGISTERED: set[str] = set()  # names of the tasks registered through this module
_FAMILIES: dict[str, str] = {}  # task name -> label family (how its labels are judged)
_SPLITS: dict[str, "CacheSplits"] = {}  # task name -> where its splits' records come from


@dataclasses.dataclass(frozen=True)
class CacheSplits:
    """Where each split's records come from: cache files (or providers that make them).

    `train` is one provider or several, whose records are concatenated in order (e.g. a
    labeled set plus a student's annotations of unlabeled inputs); an id found in two of
    them is an error naming both files.
    """

    train: Union[PathProvider, Sequence[PathProvider]]
    validation: Optional[PathProvider] = None  # None: carved out of train
    others: Mapping[str, PathProvider] = dataclasses.field(default_factory=dict)  # e.g. test
    name: str = ""  # the task's name, for messages

    @property
    def names(self) -> tuple[str, ...]:
        return (TRAIN, VALIDATION) + tuple(self.others)

    @property
    def train_providers(self) -> tuple[PathProvider, ...]:
        return tuple(self.train) if isinstance(self.train, (list, tuple)) else (self.train,)

    def train_paths(self) -> list[pathlib.Path]:
        return [provide() for provide in self.train_providers]

    def train_records(self) -> tuple[CacheRecord, ...]:
        paths = self.train_paths()
        if len(paths) == 1:
            return load_records(paths[0])
        records: list[CacheRecord] = []
        source: dict[str, pathlib.Path] = {}
        for path in paths:
            for record in load_records(path):
                if record.id in source:
                    raise ValueError(
                        f"{self.name or 'task'} train caches: id {record.id!r} is in both {source[record.id]} and "
                        f"{path}; ids must be unique across a task's train caches (rename or drop one)"
                    )
                source[record.id] = path
                records.append(record)
        return tuple(records)

    def records(self, split: str, options: TaskOptions) -> list[CacheRecord]:
        if split in self.others:
            return list(load_records(self.others[split]()))
        if split == VALIDATION and self.validation is not None:
            return list(load_records(self.validation()))
        if split not in (TRAIN, VALIDATION):
            raise ValueError(f"unknown split {split!r}; this task has {', '.join(self.names)}")
        train = self.train_records()
        kept = sources.subsample(len(train), options.train_fraction, options.seed)
        if self.validation is None:
            # As the reference: subsample first, then carve validation out of what is kept.
            rest, held = sources.split_off(len(kept), options.validation_fraction, options.validation_seed)
            kept = kept[held] if split == VALIDATION else kept[rest]
        return [train[i] for i in kept]


def is_cache_task(task_name: str) -> bool:
    """Whether `task_name` was registered here from teacher caches (its records can be read)."""
    return task_name in _SPLITS


def split_records(task_name: str, split: str, options: Optional[TaskOptions] = None) -> list[CacheRecord]:
    """The cache records of one split of a task registered here, in order.

    These are the records the split's examples are made from: train and a carved-out
    validation follow `options` (default: gin's `task_options` for the task), so
    `train_fraction` and the validation carve-out apply as in training.
    """
    if task_name not in _SPLITS:
        get_task(task_name)  # an unknown name: the error lists the registered tasks
        raise ValueError(
            f"task {task_name!r} was not registered from teacher caches through dss_jax.data.tasks, "
            "so it has no cache records to read"
        )
    splits = _SPLITS[task_name]
    if split not in splits.names:
        raise ValueError(f"task {task_name!r} has no split {split!r}; its splits: {', '.join(splits.names)}")
    return splits.records(split, options if options is not None else current_options(task_name))


# --------------------------------------------------------------------------------------
# Tokenization and task registration
# --------------------------------------------------------------------------------------


def _encode_with_separator(vocabulary: seqio.Vocabulary, texts: tf.Tensor) -> tf.RaggedTensor:
    """Token ids of a batch of texts where each literal "</s>" becomes the EOS id."""
    parts = tf.strings.split(texts, sep=sources.EOS_SEPARATOR)  # ragged [batch, n_parts]
    ids = vocabulary.encode_tf(parts.flat_values)  # ragged [all_parts, None]
    eos = tf.fill([tf.shape(parts.flat_values)[0], 1], tf.constant(vocabulary.eos_id, ids.dtype))
    joined = tf.concat([ids, eos], axis=1)  # every part followed by EOS ...
    per_text = tf.RaggedTensor.from_row_splits(joined, parts.row_splits).merge_dims(1, 2)  # [batch, None]
    return per_text[:, :-1]  # ... but the last


_TOKENIZE_BATCH = 256  # texts per SentencePiece call: per-example calls cost more than the work


def tokenize_paired(
    dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature], separator_features: Sequence[str] = ()
) -> tf.data.Dataset:
    """Tokenizes the paired text features (keeping `*_pretokenized` copies), in batches.
    Inputs start with the vocabulary's `input_prefix` (a Hugging Face tokenizer's BOS)."""

    def fn(batch):
        out = dict(batch)
        for name in PAIRED_TEXT_FEATURES:
            vocabulary = output_features[name].vocabulary
            out[f"{name}_pretokenized"] = batch[name]
            if name in separator_features:
                out[name] = _encode_with_separator(vocabulary, batch[name])
            else:
                out[name] = vocabulary.encode_tf(batch[name])
            prefix = vocab.input_prefix(vocabulary) if name.endswith("_inputs") else []
            if prefix:
                rows = tf.shape(out[name].row_lengths())[0]
                start = tf.tile(tf.constant([prefix], out[name].dtype), [rows, 1])
                out[name] = tf.concat([tf.RaggedTensor.from_tensor(start), out[name]], axis=1)
        return out

    return dataset.batch(_TOKENIZE_BATCH).map(fn, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def _dataset_fn(task_name: str, splits: CacheSplits, options: Optional[TaskOptions]):
    def dataset_fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None) -> tf.data.Dataset:
        del shuffle_files, seed  # one in-memory "file"; seqio shuffles the examples
        opts = options
        if opts is None:
            with gin.config_scope(task_name):
                opts = task_options()
        records = splits.records(split, opts)
        make = training_examples if split == TRAIN else evaluation_examples
        examples, dropped = make(records, opts)
        if dropped:
            logging.info(
                "%s/%s: %d of %d records have no usable label or sample", task_name, split, dropped, len(records)
            )
        if not examples:
            raise ValueError(f"{task_name}/{split}: no examples (of {len(records)} records) with options {opts}")
        columns = {
            k: np.array([ex[k] for ex in examples], dtype=object) for k in ("id", TEACHER_LABEL) + PAIRED_TEXT_FEATURES
        }
        return tf.data.Dataset.from_tensor_slices(columns)

    return dataset_fn


def _register(
    name: str,
    splits: CacheSplits,
    family: str,
    vocabulary: Optional[seqio.Vocabulary],
    options: Optional[TaskOptions],
    separator_in_inputs: bool,
) -> seqio.Task:
    family = parsers.canonical_family(family)
    if vocabulary is None:

        def resolve() -> seqio.Vocabulary:
            with gin.config_scope(name):
                return task_vocabulary(corpus_caches=lambda: [str(p) for p in splits.train_paths()])

        vocabulary = LazyVocabulary(resolve, name=f"{name} vocabulary")
    output_features = {k: seqio.Feature(vocabulary, add_eos=True, required=True) for k in PAIRED_TEXT_FEATURES}
    separator_features = ("label_inputs", "rationale_inputs") if separator_in_inputs else ()
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    REGISTERED.add(name)
    _FAMILIES[name] = family
    _SPLITS[name] = splits
    return seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(_dataset_fn(name, splits, options), splits=splits.names),
        output_features=output_features,
        preprocessors=[
            functools.partial(tokenize_paired, separator_features=separator_features),
            seqio.preprocessors.append_eos_after_trim,
        ],
        metric_fns=[],
    )


CachePath = Union[str, os.PathLike, Callable[[], Union[str, os.PathLike]]]


def _fixed(path: CachePath, what: str) -> PathProvider:
    def provide() -> pathlib.Path:
        # A callable is asked each time a split is read (e.g. it generates the file on demand).
        # A gs:// URL is read where it is (files.path: an etils.epath path).
        resolved = files.path(os.fspath(path() if callable(path) else path))
        if not resolved.is_file():
            raise FileNotFoundError(f"{what} not found: {resolved} (a teacher cache JSONL, see dss_jax/data/cache.py)")
        return resolved

    return provide


def register_cache_task(
    name: str,
    train_cache: Union[CachePath, Sequence[CachePath]],
    validation_cache: Optional[CachePath] = None,
    test_cache: Optional[CachePath] = None,
    vocabulary: Optional[seqio.Vocabulary] = None,
    family: str = "cqa",
    options: Optional[TaskOptions] = None,
    extra_splits: Optional[Mapping[str, CachePath]] = None,
) -> seqio.Task:
    """Registers a paired DSS task (see the module docstring) from teacher cache files.

    Args:
      name: the SeqIO task name (re-registering a name replaces the task).
      train_cache / validation_cache / test_cache: cache JSONL files, or callables
        returning one (called whenever the split is read, e.g. to write the file on
        demand); without a validation cache, validation is carved out of train.
        `train_cache` may be a list of them: their records are concatenated in order
        (an id in two of them is an error naming both files).
      vocabulary: a seqio vocabulary; None: `task_vocabulary()` (gin), resolved lazily.
      family: the label style: "svamp" (equations, judged by value), "cqa" (free text),
        "anli1"/"esnli"/"nli" (NLI classes; "</s>" in inputs becomes EOS).
      options: fixed options; None reads `task_options` from gin (scope: `name`).
      extra_splits: more evaluation splits, name -> cache file.
    """
    family = parsers.canonical_family(family)
    others = {"test": _fixed(test_cache, f"{name} test cache")} if test_cache is not None else {}
    for split, path in (extra_splits or {}).items():
        others[split] = _fixed(path, f"{name} {split} cache")
    if isinstance(train_cache, (list, tuple)):
        if not train_cache:
            raise ValueError(f"register_cache_task({name!r}): train_cache is an empty list")
        train = tuple(_fixed(path, f"{name} train cache #{i}") for i, path in enumerate(train_cache))
    else:
        train = _fixed(train_cache, f"{name} train cache")
    splits = CacheSplits(
        train=train,
        validation=_fixed(validation_cache, f"{name} validation cache") if validation_cache is not None else None,
        others=others,
        name=name,
    )
    return _register(name, splits, family, vocabulary, options, separator_in_inputs=family in ("anli1", "esnli"))


# --------------------------------------------------------------------------------------
# The paper's datasets, imported on first use
# --------------------------------------------------------------------------------------


def paper_cache_path(dataset: str, split: str) -> pathlib.Path:
    """The imported cache of one split of the paper's files, importing it if needed."""
    data_dir, cache_dir = data_locations()
    path = cache_dir / f"{dataset}_{split}.{dss_paper.TEACHER}.jsonl"
    source = dss_paper.split_path(data_dir, dataset, split)
    if path.is_file() and source.is_file() and files.size_and_mtime_ns(path)[1] >= files.size_and_mtime_ns(source)[1]:
        return path
    files.makedirs(cache_dir)
    records = dss_paper.import_split(data_dir, dataset, split)
    dss_paper.write_cache(records, path, overwrite=True)
    logging.info("imported %d %s/%s records into %s", len(records), dataset, split, path)
    return path


PAPER_TASK_PREFIX = "dss_"


def register_paper_task(dataset: str, vocabulary: Optional[seqio.Vocabulary] = None) -> seqio.Task:
    """Registers `dss_<dataset>` over the paper's files (svamp, cqa, esnli, anli1).

    Splits: train, validation (carved from train for svamp/cqa, the released `valid`
    split for the NLI datasets), test, and for the NLI datasets `sample` (the 64
    examples released as a sample).
    """
    spec = sources.get_spec(dataset)

    def provider(split: str) -> PathProvider:
        return functools.partial(paper_cache_path, dataset, split)

    others = {"test": provider("test")}
    if "sample" in spec.splits:
        others["sample"] = provider("sample")
    splits = CacheSplits(
        train=provider("train"),
        validation=provider("valid") if spec.has_validation else None,
        others=others,
        name=PAPER_TASK_PREFIX + dataset,
    )
    return _register(
        PAPER_TASK_PREFIX + dataset,
        splits,
        spec.family,
        vocabulary,
        None,
        separator_in_inputs=spec.family in ("anli1", "esnli"),
    )


def task_family(name: str) -> str:
    """The label family of a task registered here ("svamp", "cqa", "anli1", "esnli"):
    what `parsers.labels_match` needs to judge its labels."""
    if name not in _FAMILIES:
        get_task(name)  # an unknown name: the error lists the registered tasks
        raise ValueError(
            f"task {name!r} was not registered through dss_jax.data.tasks, so its label family "
            "is unknown (register it with register_cache_task(..., family=...))"
        )
    return _FAMILIES[name]


def mixture_rates(name: str) -> Optional[dict[str, float]]:
    """{task: rate} of a registered SeqIO mixture, as SeqIO computes them (`Mixture.get_rate`:
    callable rates applied, sub-mixtures flattened into their tasks); None for a task or an
    unregistered name."""
    if name in seqio.TaskRegistry.names() or name not in seqio.MixtureRegistry.names():
        return None
    mixture = seqio.MixtureRegistry.get(name)
    return {task.name: float(mixture.get_rate(task)) for task in mixture.tasks}


def task_names(name: str) -> list[str]:
    """The tasks MIXTURE_OR_TASK_NAME reads: a mixture's tasks (sorted, as SeqIO lists them),
    or the task itself."""
    rates = mixture_rates(name)
    return [name] if rates is None else list(rates)


def tasks_with_split(task_name: str, split: str) -> list[str]:
    """The tasks of a mixture that have `split` (SeqIO skips the others, as here, with a
    line); none is an error naming the mixture's tasks."""
    if mixture_rates(task_name) is None:
        return [task_name]
    names = task_names(task_name)
    having = [name for name in names if split in get_task(name).splits]
    if not having:
        raise ValueError(f"no task of mixture {task_name!r} ({', '.join(names)}) has a split {split!r}")
    for name in sorted(set(names) - set(having)):
        logging.warning("mixture %s: task %s has no %r split; it is left out of it", task_name, name, split)
    return having


def vocabulary_of(name: str) -> seqio.Vocabulary:
    """The vocabulary a task, or every task of a mixture, tokenizes with; a mixture whose
    tasks tokenize differently is refused naming two of them (one student reads them all)."""
    names = task_names(name)
    vocabularies = [get_task(n).output_features["label_targets"].vocabulary for n in names]
    first = vocabularies[0]
    for other_name, other in zip(names[1:], vocabularies[1:]):
        same = other == first or (
            vocab.vocabulary_file(other) is not None and vocab.vocabulary_file(other) == vocab.vocabulary_file(first)
        )
        if not same:
            raise UserError(
                f"mixture {name!r}: its tasks {names[0]!r} ({vocab.vocabulary_file(first) or first}) and "
                f"{other_name!r} ({vocab.vocabulary_file(other) or other}) tokenize with different vocabularies; "
                "register them with one vocabulary, or bind --gin.task_vocabulary.spm_path for all"
            )
    return first


def get_task(name: str) -> seqio.Task:
    """A registered task; an unknown name lists the registered DSS tasks."""
    if name not in seqio.TaskRegistry.names():
        if name in seqio.MixtureRegistry.names():
            raise ValueError(f"{name!r} is a SeqIO mixture; this takes one task: one of {', '.join(task_names(name))}")
        known = sorted(REGISTERED)
        raise ValueError(
            f"unknown task {name!r}; registered DSS tasks: {', '.join(known) or 'none'} "
            "(import tasks.dss to register the paper's tasks, or call register_cache_task)"
        )
    return seqio.TaskRegistry.get(name)
