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
import logging
from typing import Iterator, Mapping, Optional

import gin
import numpy as np
import seqio

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
    task = dss_tasks.get_task(task_name)
    feature_lengths = dss_tasks.effective_feature_lengths(task_name, feature_lengths)
    if split not in task.splits:
        raise ValueError(f"task {task_name!r} has no split {split!r}; its splits: {sorted(task.splits)}")
    missing = [k for k in dss_tasks.PAIRED_TEXT_FEATURES if k not in feature_lengths]
    if missing:
        raise ValueError(
            f"TASK_FEATURE_LENGTHS lacks {missing}; a DSS task needs lengths for "
            f"{list(dss_tasks.PAIRED_TEXT_FEATURES)}"
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


@gin.configurable(denylist=["task_name", "feature_lengths", "batch_size", "seed", "shard_index", "num_shards",
                            "start_position", "rationale_weight"])
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
) -> Iterator[dict[str, np.ndarray]]:
    """An endless, deterministic stream of this process's packed training rows,
    starting `start_position` batches into the stream.

    The data is read as `num_input_shards` streams (default: one per process); process
    i takes an equal run of them and concatenates their rows. With a fixed
    `num_input_shards`, the global batch is the same whatever the number of processes,
    so a run can move between host counts (and be checked against a single process).
    """
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
            ds = _dataset(task_name, feature_lengths, split, shuffle=True, seed=seed, num_epochs=None,
                          shard_index=shard, num_shards=streams)
            converter = DssFeatureConverter(pack=pack, rationale_weight=rationale_weight)
            ds = converter(ds, dss_tasks.effective_feature_lengths(task_name, feature_lengths))
            ds = ds.batch(batch_size // per_process, drop_remainder=True)
        if start_position:
            ds = ds.skip(start_position)
        iterators.append(ds.prefetch(2).as_numpy_iterator())
    if start_position:
        logging.info("skipping %d batches already consumed", start_position)
    if len(iterators) == 1:
        return iterators[0]
    return _concat_rows(iterators)


def _concat_rows(iterators):
    while True:
        parts = [next(it) for it in iterators]
        yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@gin.configurable(denylist=["task_name", "feature_lengths", "batch_size", "split", "shard_index", "num_shards"])
def eval_batches(
    *,
    task_name: str,
    feature_lengths: Mapping[str, int],
    batch_size: int,
    split: str,
    shard_index: int,
    num_shards: int,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over a split, one example per row, the last batch padded with empty rows
    (which carry no loss weight); every process yields the same number of batches."""
    with _without_autograph():
        ds = _dataset(task_name, feature_lengths, split, shuffle=False, seed=None, num_epochs=1,
                      shard_index=shard_index, num_shards=num_shards)
        feature_lengths = dss_tasks.effective_feature_lengths(task_name, feature_lengths)
        ds = DssFeatureConverter(pack=False)(ds, feature_lengths)
    batches = [_pad_rows(b, batch_size) for b in ds.batch(batch_size).as_numpy_iterator()]
    count = len(batches)
    if num_shards > 1:
        from jax.experimental import multihost_utils

        count = int(np.max(multihost_utils.process_allgather(np.int32(len(batches)))))
    if count > len(batches):
        lengths = DssFeatureConverter(pack=False).get_model_feature_lengths(feature_lengths)
        empty = {k: np.zeros((batch_size, n), np.int32) for k, n in lengths.items()}
        batches += [empty] * (count - len(batches))
    return iter(batches)


def _pad_rows(batch: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    n = next(iter(batch.values())).shape[0]
    if n == rows:
        return dict(batch)
    return {k: np.concatenate([v, np.zeros((rows - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
