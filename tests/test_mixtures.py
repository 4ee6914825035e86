"""SeqIO mixtures of DSS tasks as MIXTURE_OR_TASK_NAME: training draws whole examples at
SeqIO's rates, validation and the eval binary score each task and their mean, and a
mixture that cannot be trained is refused in one line."""

import collections
import json
import pathlib
import textwrap

import pytest

from conftest import run_binary
from dss_jax.data.cache import CacheRecord, CacheWriter, TeacherSample

LENGTHS = {"label_inputs": 32, "label_targets": 8, "rationale_inputs": 32, "rationale_targets": 24}

MODULE = """
import seqio
import tensorflow as tf

from dss_jax.data import tasks, vocab
from dss_jax.data.paired import PAIRED_TEXT_FEATURES

V = vocab.from_checkpoint({spm!r})
for name in ("mix_even", "mix_odd"):
    tasks.register_cache_task(
        name, train_cache={root!r} + f"/{{name}}_train.jsonl", test_cache={root!r} + f"/{{name}}_test.jsonl",
        vocabulary=V, family="cqa",
    )
for name in ("mix_3to1", "mix_with_plain"):
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
seqio.MixtureRegistry.add("mix_3to1", [("mix_even", 3.0), ("mix_odd", 1.0)])
if "mix_plain" in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove("mix_plain")
seqio.TaskRegistry.add(
    "mix_plain",
    source=seqio.FunctionDataSource(
        lambda split, shuffle_files: tf.data.Dataset.from_tensors({{k: "x" for k in PAIRED_TEXT_FEATURES}}),
        splits=["train"],
    ),
    output_features={{k: seqio.Feature(V) for k in PAIRED_TEXT_FEATURES}},
)
seqio.MixtureRegistry.add("mix_with_plain", [("mix_even", 1.0), ("mix_plain", 1.0)])
"""


def _write_task(path: pathlib.Path, prefix: str, question: str, answer, numbers) -> None:
    with CacheWriter(path) as w:
        for i in numbers:
            label = answer(i)
            w.write(
                CacheRecord(
                    id=f"{prefix}{i}",
                    input=question.format(i),
                    label=label,
                    samples=(TeacherSample(f"{i} mod 2 is {i % 2}, so {label}.", label),),
                )
            )


@pytest.fixture(scope="module")
def mixture_module(tmp_path_factory):
    """A module registering two DSS tasks, a 3:1 mixture of them, and a mixture with a
    task that is no DSS task: what a user's gin file imports."""
    from dss_jax.data import vocab

    root = tmp_path_factory.mktemp("mixture")
    even = ("Is {} even?", lambda i: ["yes", "no"][i % 2])
    odd = ("Is {} odd?", lambda i: ["no", "yes"][i % 2])
    for name, prefix, (question, answer) in (("mix_even", "e", even), ("mix_odd", "o", odd)):
        _write_task(root / f"{name}_train.jsonl", prefix, question, answer, range(200))
        _write_task(root / f"{name}_test.jsonl", prefix, question, answer, range(1000, 1012))
    spm = vocab.train_vocabulary(
        [f"predict: explain: Is {i} even? Is {i} odd? yes no mod is so" for i in range(60)],
        root / "v.model",
        vocab.VocabSettings(vocab_size=300),
    )
    (root / "mix_tasks.py").write_text(MODULE.format(spm=str(spm), root=str(root)))
    (root / "mix.gin").write_text(
        textwrap.dedent(
            f"""\
            import mix_tasks
            MIXTURE_OR_TASK_NAME = 'mix_3to1'
            TASK_FEATURE_LENGTHS = {LENGTHS!r}
            """
        )
    )
    return root


def test_training_draws_whole_examples_at_the_mixtures_rates(mixture_module, monkeypatch):
    import sys

    from dss_jax import input_pipeline
    from dss_jax.data import tasks as dss_tasks

    monkeypatch.syspath_prepend(str(mixture_module))
    sys.modules.pop("mix_tasks", None)
    __import__("mix_tasks")
    assert dss_tasks.mixture_rates("mix_3to1") == {"mix_even": 3.0, "mix_odd": 1.0}
    assert dss_tasks.task_names("mix_even") == ["mix_even"]
    ds = input_pipeline._dataset(
        "mix_3to1", LENGTHS, "train", shuffle=True, seed=7, num_epochs=None, shard_index=0, num_shards=1
    )
    drawn, order = collections.Counter(), []
    for ex in ds.take(800).as_numpy_iterator():
        example_id = ex["id"].decode()
        order.append(example_id)
        drawn[example_id[0]] += 1
        # The label and the rationale of one example stay together.
        question = ex["label_inputs_pretokenized"].decode().removeprefix("predict: ")
        assert ex["rationale_inputs_pretokenized"].decode() == "explain: " + question
        assert question.split()[1] == example_id[1:]  # "Is <i> even?" of record <prefix><i>
    # 3:1 over 800 draws: 600 expected, binomial sd 12; 5 sd either way.
    assert 540 <= drawn["e"] <= 660, drawn
    again = input_pipeline._dataset(
        "mix_3to1", LENGTHS, "train", shuffle=True, seed=7, num_epochs=None, shard_index=0, num_shards=1
    )
    # A rebuilt pipeline (a resume) draws the same examples in the same order.
    assert order[:50] == [ex["id"].decode() for ex in again.take(50).as_numpy_iterator()]


def test_a_mixture_trains_validates_per_task_and_evaluates_per_task(mixture_module, tmp_path):
    from conftest import REPO_ROOT

    model_dir = tmp_path / "run"
    pythonpath = f"{REPO_ROOT}:{mixture_module}"
    train = run_binary(
        "dss_jax.train",
        "--gin_file=runs/train.gin",
        "--gin_file=models/tiny.gin",
        f"--gin_file={mixture_module / 'mix.gin'}",
        f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.TRAIN_STEPS=4",
        "--gin.BATCH_SIZE=8",
        "--gin.DssFeatureConverter.pack_encoder_length=64",
        "--gin.DssFeatureConverter.pack_decoder_length=48",
        "--gin.T5Config.vocab_size=320",
        "--gin.EVAL_PERIOD=4",
        "--gin.train.eval_batches_limit=1",
        "--gin.make_train_eval_hook.max_examples=4",
        "--gin.make_train_eval_hook.batch_size=4",
        f"--gin.make_train_eval_hook.output_dir='{model_dir}/decode'",
        PYTHONPATH=pythonpath,
        timeout=900,
    )
    assert train.returncode == 0, train.stderr[-4000:]
    (record,) = [json.loads(line) for line in (model_dir / "validation" / "metrics.jsonl").read_text().splitlines()]
    per_task = [record[f"decode/mix_{t}/accuracy"] for t in ("even", "odd")]
    assert record["decode/accuracy"] == pytest.approx(sum(per_task) / 2)
    assert record["decode/num_examples"] == 8
    for task in ("mix_even", "mix_odd"):
        rows = (model_dir / "decode" / "step_4" / task / "predictions.jsonl").read_text().splitlines()
        assert len(rows) == 4 and all(json.loads(r)["id"][0] == task[4] for r in rows)

    out = tmp_path / "eval"
    evaluated = run_binary(
        "dss_jax.eval",
        "--gin_file=runs/eval.gin",
        f"--gin_file={mixture_module / 'mix.gin'}",
        f"--gin.CHECKPOINT_PATH='{model_dir}'",
        f"--gin.EVAL_OUTPUT_DIR='{out}'",
        "--gin.SPLIT='test'",
        PYTHONPATH=pythonpath,
        timeout=900,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-4000:]
    summary = json.loads((out / "step_4" / "metrics.json").read_text())
    assert summary["task"] == "mix_3to1" and summary["num_examples"] == 24
    assert summary["accuracy"] == pytest.approx((summary["mix_even/accuracy"] + summary["mix_odd/accuracy"]) / 2)
    for task in ("mix_even", "mix_odd"):
        metrics = json.loads((out / "step_4" / task / "metrics.json").read_text())
        assert metrics["task"] == task and metrics["num_examples"] == 12
        assert metrics["accuracy"] == summary[f"{task}/accuracy"]


def test_a_mixture_with_a_task_that_is_not_a_dss_task_is_refused_in_one_line(mixture_module, tmp_path):
    from conftest import REPO_ROOT

    r = run_binary(
        "dss_jax.train",
        "--gin_file=runs/train.gin",
        "--gin_file=models/tiny.gin",
        f"--gin_file={mixture_module / 'mix.gin'}",
        "--gin.MIXTURE_OR_TASK_NAME='mix_with_plain'",
        f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
        PYTHONPATH=f"{REPO_ROOT}:{mixture_module}",
        timeout=900,
    )
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines[-1].endswith(
        "MIXTURE_OR_TASK_NAME 'mix_with_plain': its task 'mix_plain' is not a DSS task (registered through "
        "dss_jax.data.tasks, e.g. register_cache_task), so its examples have no label and rationale to train: "
        "leave it out of the mixture"
    ), r.stderr[-2000:]
    assert not (tmp_path / "run").exists()
