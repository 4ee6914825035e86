"""The train and eval input pipelines (dss_jax.input_pipeline) on a small cache task."""

import contextlib

import numpy as np
import pytest

from dss_jax import input_pipeline
from dss_jax.data import tasks as dss_tasks
from dss_jax.data import vocab
from dss_jax.data.cache import CacheRecord, CacheWriter, TeacherSample

LENGTHS = {"label_inputs": 32, "label_targets": 8, "rationale_inputs": 32, "rationale_targets": 16}


@pytest.fixture(scope="module")
def task_name(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    train = tmp / "train.jsonl"
    with CacheWriter(train) as w:
        for i in range(40):
            w.write(CacheRecord(id=f"t{i}", input=f"Is {i} even?", label=["yes", "no"][i % 2],
                                samples=(TeacherSample(f"{i} mod 2 is {i % 2}.", ["yes", "no"][i % 2]),)))
    spm = vocab.train_vocabulary([f"predict: explain: Is {i} even? yes no mod is" for i in range(50)],
                                 tmp / "v.model", vocab.VocabSettings(vocab_size=400))
    dss_tasks.register_cache_task("pipeline_parity", train_cache=train, vocabulary=vocab.from_checkpoint(spm),
                                  family="cqa", options=dss_tasks.TaskOptions())
    yield "pipeline_parity"
    import seqio

    seqio.TaskRegistry.remove("pipeline_parity")


def _train(task_name, n=4, **kw):
    it = input_pipeline.train_batches(task_name=task_name, feature_lengths=LENGTHS, batch_size=4, seed=3,
                                      shard_index=0, num_shards=1, start_position=0, rationale_weight=1.0, **kw)
    return [next(it) for _ in range(n)]


def _eval(task_name):
    return list(input_pipeline.eval_batches(task_name=task_name, feature_lengths=LENGTHS, batch_size=4,
                                            split="validation", shard_index=0, num_shards=1))


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_pipelines_built_without_autograph_give_the_same_batches(task_name, monkeypatch):
    """Start-up skips AutoGraph's transpiling of the mapped functions; the batches must
    not change (the same functions traced as plain graph code)."""
    fast_train, fast_eval = _train(task_name), _eval(task_name)
    monkeypatch.setattr(input_pipeline, "_without_autograph", contextlib.nullcontext)
    _same(fast_train, _train(task_name))
    _same(fast_eval, _eval(task_name))
    assert sum(int((b["decoder_task_ids"] == 2).sum()) for b in fast_train) > 0  # rationale segments are there
