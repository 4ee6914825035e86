"""`python -m dss_jax.eval` end to end, as a subprocess, on a training run's model dir
(RunCheckpointer layout) and on a `save_params` checkpoint."""

import json
import os

import _eval_toy as toy
import pytest

import gin
from conftest import REPO_ROOT, run_binary
from dss_jax import gin_utils
from dss_jax.scoring import decode_and_score, load_examples


@pytest.fixture(scope="module")
def env(tmp_path_factory, cpu_devices):
    return toy.toy_env(tmp_path_factory, cpu_devices)


@pytest.fixture(scope="module")
def task_gin(env):
    """A gin file and module that register the toy task in a fresh process, with the
    default vocabulary choice (the checkpoint's spiece.model, bound by the binary)."""
    directory = env.root / "subprocess_task"
    directory.mkdir(exist_ok=True)
    toy.write_task_module(env.caches, directory)
    return toy.write_task_gin(directory)


def run_eval(task_gin, *args):
    pythonpath = os.pathsep.join([str(task_gin.parent), str(REPO_ROOT)])  # the toy task's module too
    return run_binary(
        "dss_jax.eval",
        "--gin_file=runs/eval.gin",
        f"--gin_file={task_gin}",
        "--gin.BATCH_SIZE=4",
        *args,
        timeout=300,
        check=True,
        PYTHONPATH=pythonpath,
    )


def read_outputs(directory):
    rows = [json.loads(line) for line in (directory / "predictions.jsonl").read_text().splitlines()]
    return rows, json.loads((directory / "metrics.json").read_text())


def test_eval_binary_on_a_run_dir_every_step(env, task_gin, tmp_path):
    out = tmp_path / "eval"
    proc = run_eval(
        task_gin,
        f"--gin.CHECKPOINT_PATH='{env.trained.run_dir}'",
        f"--gin.EVAL_OUTPUT_DIR='{out}'",
        "--gin.STEPS='all'",
    )
    examples = load_examples(toy.TASK, "test", toy.LENGTHS)
    for step in (15, 60):
        rows, metrics = read_outputs(out / f"step_{step}")
        assert metrics["step"] == step and metrics["split"] == "test" and metrics["num_examples"] == 11
        assert metrics["accuracy"] == pytest.approx(sum(r["prediction"] == r["target"] for r in rows) / len(rows))
        # The binary's predictions are those of the in-process evaluation of the same params.
        direct = decode_and_score(env.trained.model, env.trained.params_by_step[step], examples, batch_size=4)
        assert [r["prediction"] for r in rows] == [r["prediction"] for r in direct.records]
        assert str(step) in proc.stdout
    assert "accuracy" in proc.stdout and "teacher_agreement" in proc.stdout  # the printed table
    assert list(out.glob("events.out.tfevents.*"))  # TensorBoard scalars
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [15, 60] and "test/accuracy" in logged[0]


def test_eval_binary_on_a_params_checkpoint_with_rationales(env, task_gin, tmp_path):
    out = tmp_path / "eval"
    run_eval(
        task_gin,
        f"--gin.CHECKPOINT_PATH='{env.params_dir}'",
        f"--gin.EVAL_OUTPUT_DIR='{out}'",
        "--gin.OUTPUT_RATIONALE=True",
    )
    rows, metrics = read_outputs(out)  # one checkpoint: outputs directly in EVAL_OUTPUT_DIR
    examples = load_examples(toy.TASK, "test", toy.LENGTHS)
    direct = decode_and_score(env.trained.model, env.trained.params_by_step[60], examples, batch_size=4)
    assert [r["prediction"] for r in rows] == [r["prediction"] for r in direct.records]
    assert metrics["accuracy"] == direct.metrics["accuracy"] and metrics["step"] is None
    assert all(isinstance(r["rationale"], str) for r in rows)


def test_missing_macros_are_named_before_any_work():
    import dss_jax.eval  # noqa: F401  (the binary defines evaluate_checkpoints, as t5x's eval.py)

    gin.clear_config()
    try:
        with pytest.raises(gin_utils.GinConfigError, match="CHECKPOINT_PATH, EVAL_OUTPUT_DIR not set"):
            gin_utils.parse_gin(
                ["runs/eval.gin"],
                ["MIXTURE_OR_TASK_NAME = 'toy'", "TASK_FEATURE_LENGTHS = {}"],
                [],
                ("CHECKPOINT_PATH", "EVAL_OUTPUT_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS"),
            )
    finally:
        gin.clear_config()
