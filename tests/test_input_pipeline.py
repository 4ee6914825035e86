"""The train and eval input pipelines (dss_jax.input_pipeline) on a small cache task."""

import contextlib

import numpy as np
import pytest

from conftest import write_parity_task_files
from dss_jax import input_pipeline
from dss_jax.data import options as dss_options
from dss_jax.data import tasks as dss_tasks
from dss_jax.data import vocab

LENGTHS = {"label_inputs": 48, "label_targets": 8, "rationale_inputs": 48, "rationale_targets": 32}


@pytest.fixture(scope="module")
def task_name(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    train, spm = write_parity_task_files(tmp, 40)
    dss_tasks.register_cache_task(
        "pipeline_parity",
        train_cache=train,
        vocabulary=vocab.from_checkpoint(spm),
        family="cqa",
        options=dss_options.TaskOptions(),
    )
    yield "pipeline_parity"
    import seqio

    seqio.TaskRegistry.remove("pipeline_parity")


def _train(task_name, n=4, **kw):
    it = input_pipeline.train_batches(
        task_name=task_name,
        feature_lengths=LENGTHS,
        batch_size=4,
        seed=3,
        shard_index=0,
        num_shards=1,
        start_position=0,
        rationale_weight=1.0,
        **kw,
    )
    return [next(it) for _ in range(n)]


def _eval(task_name):
    return list(
        input_pipeline.eval_batches(
            task_name=task_name, feature_lengths=LENGTHS, batch_size=4, split="validation", shard_index=0, num_shards=1
        )
    )


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


def _examples_batches(task_name, n=6, start_position=0, rationale_weight=1.0, **kw):
    return input_pipeline.train_batches(
        task_name=task_name,
        feature_lengths=LENGTHS,
        batch_size=n,
        seed=3,
        shard_index=0,
        num_shards=1,
        start_position=start_position,
        rationale_weight=rationale_weight,
        batch_unit="examples",
        **kw,
    )


def _segment_starts(batch, task_id):
    return int(
        (
            (batch["decoder_positions"] == 0)
            & (batch["decoder_task_ids"] == task_id)
            & (batch["decoder_loss_weights"] > 0)
        ).sum()
    )


def _label_inputs(batch):
    """The encoder tokens of every label segment (one per example), in row order."""
    out = []
    for row in range(batch["decoder_target_tokens"].shape[0]):
        seg, task = batch["decoder_segment_ids"][row], batch["decoder_task_ids"][row]
        for s in np.unique(seg[(seg > 0) & (task == 1)]):
            enc = batch["encoder_input_tokens"][row][batch["encoder_segment_ids"][row] == s]
            out.append(tuple(enc))
    return out


@pytest.mark.parametrize("rationale_weight, segments", [(1.0, 2), (0.0, 1)])
def test_a_batch_in_examples_packs_exactly_n_examples_per_step_into_fixed_rows(task_name, rationale_weight, segments):
    it = _examples_batches(task_name, rationale_weight=rationale_weight, row_multiple=2)
    steps = [next(it) for _ in range(12)]
    rows = {b["decoder_target_tokens"].shape[0] for b in steps}
    assert len(rows) == 1 and rows.pop() % 2 == 0  # one shape for every step, a multiple of row_multiple
    for b in steps:
        assert _segment_starts(b, 1) == 6
        assert _segment_starts(b, 2) == (6 if segments == 2 else 0)
        empty = ~(b["decoder_loss_weights"] > 0).any(axis=1)
        assert not b["encoder_input_tokens"][empty].any() and not b["decoder_segment_ids"][empty].any()
    # Packed: rows are shared, so the steps use fewer rows than they have segments.
    used = [int((b["decoder_loss_weights"] > 0).any(axis=1).sum()) for b in steps]
    assert sum(used) < len(steps) * 6 * segments


def test_a_batch_in_examples_resumes_at_its_position_and_loses_nothing(task_name):
    it = _examples_batches(task_name)
    whole = [next(it) for _ in range(9)]
    resumed = _examples_batches(task_name, start_position=5)
    _same(whole[5:], [next(resumed) for _ in range(4)])
    # Step k holds exactly the stream's examples 6k..6k+5: none dropped, repeated or moved.
    from collections import Counter

    from dss_jax.data.feature_converter import DssFeatureConverter

    ds = input_pipeline._dataset(
        task_name, LENGTHS, "train", shuffle=True, seed=3, num_epochs=None, shard_index=0, num_shards=1
    )
    stream = DssFeatureConverter(pack=True).numpy_examples(ds, LENGTHS)
    for batch in whole:
        expected = [tuple(next(stream)["label_inputs"]) for _ in range(6)]
        assert Counter(_label_inputs(batch)) == Counter(expected)


def test_a_step_that_needs_more_rows_than_the_bound_names_the_setting(task_name):
    with pytest.raises(input_pipeline.RowBoundError, match=r"step 1: .*need \d+ packed rows.*train_batches.max_rows"):
        next(_examples_batches(task_name, max_rows=1))
    with pytest.raises(ValueError, match="max_rows=3 must be a multiple of 2"):
        next(_examples_batches(task_name, max_rows=3, row_multiple=2))


def test_training_with_a_batch_in_examples_reports_examples_rows_and_tokens_per_step(task_name, tmp_path):
    import json

    from dss_jax.model.config import T5Config
    from dss_jax.model.encoder_decoder import EncoderDecoderModel
    from dss_jax.training import loop

    model = EncoderDecoderModel(
        T5Config.preset(
            "tiny",
            "t5.1.1",
            vocab_size=400,
            dropout_rate=0.0,
            d_model=32,
            d_ff=64,
            num_heads=2,
            d_kv=16,
            num_encoder_layers=1,
            num_decoder_layers=1,
        )
    )
    loop.train(
        model,
        model_dir=str(tmp_path / "run"),
        task_name=task_name,
        task_feature_lengths=LENGTHS,
        train_steps=2,
        batch_size=6,
        batch_unit="examples",
        log_period=1,
        checkpoint_period=2,
    )
    with open(tmp_path / "run" / "train" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["examples_per_step"] for r in records] == [6, 6]
    assert all(0 < r["rows_per_step"] < 12 and r["real_tokens_per_step"] > 0 for r in records)
