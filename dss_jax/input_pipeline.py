"""Host-local numpy batches from a SeqIO task, for the train loop.

Each process reads only its shard of the data (`seqio.ShardInfo(process_index,
process_count)`) and yields `global_batch_size / process_count` rows per step; the
trainer assembles them into one global array.

Resuming is exact because the pipeline is deterministic under its seed (seqio shuffles
with it; the packer is deterministic): a restarted run rebuilds the same stream and
skips the batches it had already consumed (`start_position`, saved with every
checkpoint). The packer runs in Python, so the stream cannot be checkpointed as a
tf.data iterator; skipping costs one pass over the consumed batches (seconds for the
paper's datasets).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
from typing import Iterator, Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

import gin
from dss_jax.cli import UserError
from dss_jax.data import lengths as dss_lengths
from dss_jax.data import options as dss_options
from dss_jax.data import packing
from dss_jax.data import paired as dss_paired
from dss_jax.data import tasks as dss_tasks
from dss_jax.data.feature_converter import DssFeatureConverter


@contextlib.contextmanager
def _without_autograph():
    """tf.data runs every mapped function through AutoGraph (a Python-to-graph source
    transpiler) unless told otherwise: about 4.5 s of a run's start-up on this CPU, for
    SeqIO's and our map functions, none of which branches on tensor values (a function
    that did would fail loudly when traced, not compute something else). Pipelines are
    built inside this context; their batches are unchanged (tests/test_input_pipeline.py)."""
    from tensorflow.python.autograph.core import ag_ctx

    with ag_ctx.ControlStatusCtx(status=ag_ctx.Status.DISABLED):
        yield


def _dataset(task_name, feature_lengths, split, *, shuffle, seed, num_epochs, shard_index, num_shards):
    """A task's split, or a SeqIO mixture's: an endless stream (num_epochs None) draws each
    example whole (its label and rationale features together) from one of the mixture's
    tasks at SeqIO's rates, with the mixture's sample_fn; one pass (num_epochs 1) is each
    task's split in turn."""
    args = dict(shuffle=shuffle, seed=seed, num_epochs=num_epochs, shard_index=shard_index, num_shards=num_shards)
    rates = dss_tasks.mixture_rates(task_name)
    if rates is None:
        return _task_dataset(task_name, feature_lengths, split, **args)
    names = dss_tasks.tasks_with_split(task_name, split)
    datasets = [_task_dataset(name, feature_lengths, split, **args) for name in names]
    # Tasks registered from caches and by hand may carry different extra features: the
    # ones all of them have (the paired texts, tokenized and pretokenized, id, ...) stay.
    common = set.intersection(*(set(ds.element_spec) for ds in datasets))
    datasets = [ds.map(lambda ex: {k: ex[k] for k in common}) for ds in datasets]
    if num_epochs is not None:
        out = datasets[0]
        for ds in datasets[1:]:
            out = out.concatenate(ds)
        return out
    mixture = seqio.MixtureRegistry.get(task_name)
    # SeqIO's own default when the mixture was registered without a sample_fn.
    sample_fn = getattr(mixture, "_sample_fn", None) or functools.partial(
        tf.data.Dataset.sample_from_datasets, stop_on_empty_dataset=True
    )
    return sample_fn(datasets, [rates[name] for name in names], seed)


def _task_dataset(task_name, feature_lengths, split, *, shuffle, seed, num_epochs, shard_index, num_shards):
    task = dss_tasks.get_task(task_name)
    feature_lengths = dss_options.effective_feature_lengths(task_name, feature_lengths)
    if split not in task.splits:
        raise ValueError(f"task {task_name!r} has no split {split!r}; its splits: {sorted(task.splits)}")
    missing = [k for k in dss_paired.PAIRED_TEXT_FEATURES if k not in feature_lengths]
    if missing:
        raise ValueError(
            f"TASK_FEATURE_LENGTHS lacks {missing}; a DSS task needs lengths for "
            f"{list(dss_paired.PAIRED_TEXT_FEATURES)}"
        )
    return task.get_dataset(
        sequence_length=dict(feature_lengths),
        split=split,
        shuffle=shuffle,
        seed=seed,
        num_epochs=num_epochs,
        shard_info=seqio.ShardInfo(index=shard_index, num_shards=num_shards) if num_shards > 1 else None,
        use_cached=False,
    )


@gin.configurable(
    denylist=[
        "task_name",
        "feature_lengths",
        "batch_size",
        "seed",
        "shard_index",
        "num_shards",
        "start_position",
        "rationale_weight",
        "layout",
    ]
)
def train_batches(
    *,
    task_name: str,
    feature_lengths: Mapping[str, int],
    batch_size: int,
    seed: int,
    shard_index: int,
    num_shards: int,
    start_position: int,
    rationale_weight: float,
    split: str = "train",
    pack: bool = True,
    num_input_shards: Optional[int] = None,
    batch_unit: str = "rows",
    row_multiple: int = 1,
    max_rows: Optional[int] = None,
    layout: str = "encoder_decoder",
) -> Iterator[dict[str, np.ndarray]]:
    """An endless, deterministic stream of this process's packed training rows,
    starting `start_position` batches into the stream, in the student's batch `layout`
    (`StudentModel.batch_layout`).

    batch_unit "rows" (T5X's): `batch_size` packed rows per step, however many examples
    they hold. "examples" (the paper's): `batch_size` examples per step, all their
    segments packed together into a fixed number of rows (a multiple of `row_multiple`),
    the rest of the rows empty; see `_example_batches`. `max_rows` (this process's rows
    per step) fixes that number; by default it is estimated from the stream.

    The data is read as `num_input_shards` streams (default: one per process); process
    i takes an equal run of them and concatenates their rows. With a fixed
    `num_input_shards`, the global batch is the same whatever the number of processes,
    so a run can move between host counts (and be checked against a single process).
    """
    if batch_unit not in BATCH_UNITS:
        raise ValueError(f"train.batch_unit must be one of {BATCH_UNITS}, got {batch_unit!r}")
    if batch_unit == "examples":
        if not pack:
            raise ValueError("train.batch_unit='examples' packs each step's examples; it needs train_batches.pack=True")
        return _example_batches(
            task_name,
            feature_lengths,
            split,
            batch_size,
            seed,
            shard_index,
            num_shards,
            start_position,
            rationale_weight,
            row_multiple,
            max_rows,
            layout,
        )
    streams = num_input_shards or num_shards
    if streams % num_shards:
        raise ValueError(
            f"train_batches.num_input_shards={streams} must be a multiple of the number of processes ({num_shards})"
        )
    per_process = streams // num_shards
    if batch_size % per_process:
        raise ValueError(f"the per-process batch ({batch_size} rows) must divide over {per_process} input shards")
    iterators = []
    for shard in range(shard_index * per_process, (shard_index + 1) * per_process):
        with _without_autograph():
            ds = _dataset(
                task_name,
                feature_lengths,
                split,
                shuffle=True,
                seed=seed,
                num_epochs=None,
                shard_index=shard,
                num_shards=streams,
            )
            converter = DssFeatureConverter(pack=pack, rationale_weight=rationale_weight, layout=layout)
            ds = converter(ds, dss_options.effective_feature_lengths(task_name, feature_lengths))
            ds = ds.batch(batch_size // per_process, drop_remainder=True)
        if start_position:
            ds = ds.skip(start_position)
        iterators.append(ds.prefetch(2).as_numpy_iterator())
    _report_truncation(task_name, split, feature_lengths, shard_index, rationale_weight)
    if start_position:
        logging.info("skipping %d batches already consumed", start_position)
    if len(iterators) == 1:
        return iterators[0]
    return _concat_rows(iterators)


def _report_truncation(task_name, split, feature_lengths, shard_index: int, rationale_weight: float) -> None:
    """How many training examples the lengths cut (what the run learns cut), counted over
    the whole split by the first process; the rationale features only when they train."""
    if shard_index != 0:
        return
    trained = dss_paired.PAIRED_TEXT_FEATURES if rationale_weight > 0 else ("label_inputs", "label_targets")
    with _without_autograph():
        for name in dss_tasks.tasks_with_split(task_name, split):  # each task of a mixture
            dss_lengths.report_truncation(name, split, feature_lengths, trained)


BATCH_UNITS = ("rows", "examples")
ESTIMATE_STEPS = 64  # steps packed to estimate the rows per step of a batch in examples
ESTIMATE_HEADROOM = 1.25


def _example_batches(
    task_name,
    feature_lengths,
    split,
    examples,
    seed,
    shard_index,
    num_shards,
    start_position,
    rationale_weight,
    row_multiple,
    max_rows,
    layout,
) -> Iterator[dict[str, np.ndarray]]:
    """Steps of exactly `examples` examples each (this process's share), packed.

    Each step's examples (label and, when λ > 0, rationale segments) are packed first fit
    into as many rows as they need; the batch has a fixed number of rows R, the unused
    ones empty (zero loss weight: the loss is normalised over the real tokens of the
    whole batch, so they change nothing). R is `max_rows`, or the most rows any of the
    first 64 steps needs plus 25%, rounded up to `row_multiple` (the same on every
    process, and on a resume: it is computed from the start of the stream). A later step
    that needs more rows stops the run with a message naming the setting; nothing is
    dropped or moved to another step.
    """
    lengths = dss_options.effective_feature_lengths(task_name, feature_lengths)
    with _without_autograph():
        ds = _dataset(
            task_name,
            feature_lengths,
            split,
            shuffle=True,
            seed=seed,
            num_epochs=None,
            shard_index=shard_index,
            num_shards=num_shards,
        )
        converter = DssFeatureConverter(pack=True, rationale_weight=rationale_weight, layout=layout)
        fmt = converter.row_format(lengths)
        stream = converter.numpy_examples(ds, lengths)
    _report_truncation(task_name, split, feature_lengths, shard_index, rationale_weight)

    def groups():
        while True:
            group = [next(stream) for _ in range(examples)]
            yield packing.pack_group(group, fmt, converter.include_rationale)

    steps = groups()
    first = [next(steps) for _ in range(ESTIMATE_STEPS)]
    needed = max(len(rows) for rows in first)
    if max_rows is None:
        rows = -(-int(np.ceil(needed * ESTIMATE_HEADROOM)) // row_multiple) * row_multiple
        if num_shards > 1:
            from jax.experimental import multihost_utils

            rows = int(np.max(multihost_utils.process_allgather(np.int32(rows))))
        source = f"estimated: the first {ESTIMATE_STEPS} steps needed at most {needed}, plus 25%"
    else:
        if max_rows % row_multiple:
            raise ValueError(
                f"train_batches.max_rows={max_rows} must be a multiple of {row_multiple} "
                "(data-parallel devices x microbatches per process)"
            )
        rows, source = max_rows, "train_batches.max_rows"
    logging.info(
        "batch in examples: %d examples per step (this process) packed into %d rows of %s tokens (%s)",
        examples,
        rows,
        "+".join(map(str, fmt.lengths)),
        source,
    )

    def batches():
        for step, packed in enumerate(itertools.chain(first, steps)):
            if len(packed) > rows:
                raise RowBoundError(
                    f"step {step + 1}: its {examples} examples need {len(packed)} packed rows, more than the {rows} "
                    f"rows per step; set --gin.train_batches.max_rows to at least "
                    f"{-(-len(packed) // row_multiple) * row_multiple} (per process) and resume"
                )
            if step >= start_position:
                yield packing.pad_rows(packed, rows, fmt)

    if start_position:
        logging.info("skipping %d batches already consumed", start_position)
    return batches()


class RowBoundError(UserError, ValueError):
    """A step of a batch in examples needs more rows than the batch has."""


def _concat_rows(iterators):
    while True:
        parts = [next(it) for it in iterators]
        yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@gin.configurable(
    denylist=["task_name", "feature_lengths", "batch_size", "split", "shard_index", "num_shards", "layout"]
)
def eval_batches(
    *,
    task_name: str,
    feature_lengths: Mapping[str, int],
    batch_size: int,
    split: str,
    shard_index: int,
    num_shards: int,
    layout: str = "encoder_decoder",
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over a split, one example per row (in the student's batch `layout`), the
    last batch padded with empty rows (which carry no loss weight); every process yields
    the same number of batches."""
    with _without_autograph():
        ds = _dataset(
            task_name,
            feature_lengths,
            split,
            shuffle=False,
            seed=None,
            num_epochs=1,
            shard_index=shard_index,
            num_shards=num_shards,
        )
        if shard_index == 0:  # the whole split, counted once per process and lengths
            for name in dss_tasks.tasks_with_split(task_name, split):  # each task of a mixture
                dss_lengths.report_truncation(name, split, feature_lengths)
        feature_lengths = dss_options.effective_feature_lengths(task_name, feature_lengths)
        ds = DssFeatureConverter(pack=False, layout=layout)(ds, feature_lengths)
    batches = [_pad_rows(b, batch_size) for b in ds.batch(batch_size).as_numpy_iterator()]
    count = len(batches)
    if num_shards > 1:
        from jax.experimental import multihost_utils

        count = int(np.max(multihost_utils.process_allgather(np.int32(len(batches)))))
    if count > len(batches):
        lengths = DssFeatureConverter(pack=False, layout=layout).get_model_feature_lengths(feature_lengths)
        empty = {k: np.zeros((batch_size, n), np.int32) for k, n in lengths.items()}
        batches += [empty] * (count - len(batches))
    return iter(batches)


def _pad_rows(batch: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    n = next(iter(batch.values())).shape[0]
    if n == rows:
        return dict(batch)
    return {k: np.concatenate([v, np.zeros((rows - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
