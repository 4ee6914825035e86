"""A checkpoint is decoded and scored the way its run was trained: eval, infer and
annotate's student backend read the run's task options (task.json) instead of trusting
that the user repeated the training bindings, and refuse a contradiction."""

import json
import os
import shutil
import subprocess
import sys

import _eval_toy as toy
import pytest

import gin
from conftest import REPO_ROOT
from dss_jax import checkpoints, cli
from dss_jax.data import options as dss_options

SINGLE = {"label_target": "rationale_then_label", "validation_fraction": 0.25, "validation_seed": 3}


@pytest.fixture(scope="module")
def env(tmp_path_factory, cpu_devices):
    return toy.toy_env(tmp_path_factory, cpu_devices)


@pytest.fixture
def single_task_run(env, tmp_path):
    """The toy student's checkpoint, in a run dir that says it trained the single-task ablation."""
    run = tmp_path / "run"
    shutil.copytree(env.params_dir, run)
    checkpoints.write_run_task(run, toy.TASK, SINGLE)
    gin.clear_config()
    yield run
    gin.clear_config()


def test_run_task_reads_task_json_then_config_gin(tmp_path):
    assert checkpoints.run_task(tmp_path) is None
    (tmp_path / "config.gin").write_text("dss_svamp/task_options.label_target = 'rationale_then_label'\n")
    step = tmp_path / "checkpoint_10"
    step.mkdir()
    assert checkpoints.run_task(step) == (str(tmp_path / "config.gin"), None, {"label_target": "rationale_then_label"})
    checkpoints.write_run_task(tmp_path, "dss_svamp", {"label_target": "label", "seed": 1})
    assert checkpoints.run_task(step) == (
        str(tmp_path / "task.json"),
        "dss_svamp",
        {"label_target": "label", "seed": 1},
    )


def test_eval_scores_a_single_task_run_without_its_binding(single_task_run, tmp_path):
    from dss_jax import eval as eval_binary

    eval_binary.evaluate_checkpoints(
        checkpoint_path=str(single_task_run),
        output_dir=str(tmp_path / "eval"),
        task_name=toy.TASK,
        feature_lengths=toy.LENGTHS,
        batch_size=4,
    )
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    # The single-task answer was split: the label is scored, the rationale kept beside it.
    assert all("rationale" in r for r in rows)
    options = dss_options.current_options(toy.TASK)
    assert (options.label_target, options.validation_fraction, options.validation_seed) == (
        "rationale_then_label",
        0.25,
        3,
    )


def test_a_contradicting_binding_is_an_error_naming_both(single_task_run, tmp_path):
    from dss_jax import eval as eval_binary

    gin.parse_config(f"{toy.TASK}/task_options.label_target = 'label'")
    with pytest.raises(
        cli.UserError,
        match=r"label_target='rationale_then_label' \(.*task.json\) but this command "
        r"binds 'label'",
    ):
        eval_binary.evaluate_checkpoints(
            checkpoint_path=str(single_task_run),
            output_dir=str(tmp_path / "eval"),
            task_name=toy.TASK,
            feature_lengths=toy.LENGTHS,
            batch_size=4,
        )
    assert not (tmp_path / "eval").exists()


def test_validation_options_apply_only_to_the_runs_own_task(single_task_run):
    dss_options.use_run_options("another_task", str(single_task_run), "CHECKPOINT_PATH")
    assert gin.query_parameter("another_task/task_options.label_target") == "rationale_then_label"
    with pytest.raises(ValueError):
        gin.query_parameter("another_task/task_options.validation_fraction")


def test_infer_without_a_task_splits_a_single_task_students_answers(single_task_run, tmp_path):
    from dss_jax import infer

    inputs = tmp_path / "in.jsonl"
    inputs.write_text(
        "".join(
            json.dumps({"id": str(i), "input": f"what about a red {n}?"}) + "\n" for i, n in enumerate(["car", "hat"])
        )
    )
    rows = infer.infer_file(
        checkpoint_path=str(single_task_run),
        input_path=str(inputs),
        output_path=str(tmp_path / "out.jsonl"),
        feature_lengths=toy.LENGTHS,
        batch_size=2,
    )
    assert all("rationale" in r for r in rows)


def test_annotate_refuses_a_student_target_the_run_contradicts(single_task_run, tmp_path):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"id": "a", "input": "what about a red car?"}) + "\n")
    cmd = [
        sys.executable,
        "-m",
        "dss_jax.annotate",
        "--backend=student",
        f"--checkpoint={single_task_run}",
        "--student_target=two_task",
        "--dataset_family=cqa",
        f"--input={inputs}",
        f"--output={tmp_path / 'c.jsonl'}",
    ]
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("annotate: error: --student_target=two_task but ")
    assert "single_task" in proc.stderr and not (tmp_path / "c.jsonl").exists()
