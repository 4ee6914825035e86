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


# ----- where eval may write: checked before any decoding (output_paths) -----------------------


def evaluate(env, checkpoint, out, **kwargs):
    from dss_jax.eval import evaluate_checkpoints

    settings = dict(task_name=toy.TASK, feature_lengths=toy.LENGTHS, batch_size=4, max_examples=5)
    return evaluate_checkpoints(checkpoint_path=str(checkpoint), output_dir=str(out), **{**settings, **kwargs})


def no_decoding(monkeypatch):
    """Makes loading a checkpoint fail the test: a refusal must come before it."""
    from dss_jax import checkpoints

    def load_checkpoint(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the output was checked")

    monkeypatch.setattr(checkpoints, "load_checkpoint", load_checkpoint)


def one_line(capsys, fn, after_decoding=False) -> str:
    """The error line of `fn` run as the binary runs its main; before decoding it is all
    that is printed, after it the progress bar comes first."""
    from dss_jax import cli

    capsys.readouterr()  # what earlier evaluations printed
    with pytest.raises(SystemExit) as e:
        cli.guard(fn, "eval")()
    assert e.value.code == cli.EXIT_USAGE
    lines = capsys.readouterr().err.strip().splitlines()
    assert after_decoding or len(lines) == 1, lines
    assert lines[-1].startswith("eval: error: ") and "Traceback" not in lines, lines
    return lines[-1]


def tensorboard_values(directory, tag):
    from tensorboard.backend.event_processing import event_accumulator

    tb = event_accumulator.EventAccumulator(str(directory), purge_orphaned_data=True)
    tb.Reload()
    return [(e.step, e.value) for e in tb.Scalars(tag)]


def test_eval_again_into_the_same_dir_is_refused_and_overwrite_replaces_each_step_whole(
    env, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "eval"
    evaluate(env, env.trained.run_dir, out, steps="all")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with monkeypatch.context() as m:
        no_decoding(m)
        line = one_line(capsys, lambda: evaluate(env, env.trained.run_dir, out, steps=[60], max_examples=3))
    assert line == (
        f"eval: error: EVAL_OUTPUT_DIR={out} already holds a result ({out / 'step_60' / 'predictions.jsonl'}): "
        "pass --gin.OVERWRITE=True to replace it, or give another path"
    )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # With overwrite: the step's outputs are replaced whole (3 rows, not 5 nor 8), the other
    # step is kept, and metrics.jsonl and TensorBoard hold one value per step.
    metrics = evaluate(env, env.trained.run_dir, out, steps=[60], max_examples=3, overwrite=True)
    rows, summary = read_outputs(out / "step_60")
    assert len(rows) == 3 and summary["num_examples"] == 3 and summary["step"] == 60
    assert read_outputs(out / "step_15")[1]["num_examples"] == 5
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [15, 60] and logged[1]["test/num_examples"] == 3
    assert logged[1]["test/accuracy"] == pytest.approx(metrics[60]["accuracy"])
    assert tensorboard_values(out, "test/num_examples") == [(15, 5.0), (60, 3.0)]
    steps, values = zip(*tensorboard_values(out, "test/accuracy"))
    assert steps == (15, 60) and values == pytest.approx([r["test/accuracy"] for r in logged])
    # A step's metrics record alone is a result too.
    (out / "step_60" / "predictions.jsonl").unlink()
    (out / "step_60" / "metrics.json").unlink()
    no_decoding(monkeypatch)
    line = one_line(capsys, lambda: evaluate(env, env.trained.run_dir, out, steps=[60]))
    assert f"already holds a result (the metrics of step 60 in {out / 'metrics.jsonl'})" in line


def test_eval_of_one_checkpoint_again_is_refused_instead_of_replacing_its_predictions(
    env, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "eval"
    evaluate(env, env.params_dir, out)
    rows, _ = read_outputs(out)
    no_decoding(monkeypatch)
    line = one_line(capsys, lambda: evaluate(env, env.params_dir, out, max_examples=2))
    assert "already holds a result" in line and "--gin.OVERWRITE=True" in line
    assert read_outputs(out)[0] == rows and len((out / "metrics.jsonl").read_text().splitlines()) == 1


OVER = "--gin.OVERWRITE=True"


def test_eval_into_a_run_or_a_checkpoint_is_refused_before_decoding(env, tmp_path, monkeypatch, capsys):
    import shutil

    run = shutil.copytree(env.trained.run_dir, tmp_path / "run")
    (run / "train").mkdir()
    (run / "train" / "metrics.jsonl").write_text('{"step": 60, "loss": 0.5}\n')
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with monkeypatch.context() as m:
        no_decoding(m)
        for out, expect in [
            (run / "train", f"lies in {run / 'train'}, part of the training run {run}"),
            (run, f"is the training run {run}"),
            (run / "checkpoint_60" / "eval", f"lies in the orbax checkpoint {run / 'checkpoint_60'}"),
            (env.params_dir, f"is the checkpoint {env.params_dir}"),
        ]:
            line = one_line(capsys, lambda out=out: evaluate(env, run, out))
            assert line == f"eval: error: EVAL_OUTPUT_DIR={out} {expect}: give a path outside it (not even with {OVER})"
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    evaluate(env, run, run / "eval", max_examples=2)  # a new directory beside the run's own
    assert read_outputs(run / "eval" / "step_60")[1]["num_examples"] == 2


def test_an_output_eval_cannot_write_is_one_line_before_decoding_or_naming_the_file(env, tmp_path, monkeypatch, capsys):
    import pathlib

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    (tmp_path / "eval" / "predictions.jsonl").mkdir(parents=True)
    with monkeypatch.context() as m:
        no_decoding(m)
        assert one_line(capsys, lambda: evaluate(env, env.params_dir, a_file)) == (
            f"eval: error: EVAL_OUTPUT_DIR={a_file} is a file; give a directory"
        )
        assert one_line(capsys, lambda: evaluate(env, env.params_dir, tmp_path / "eval")).endswith(
            f"{tmp_path / 'eval' / 'predictions.jsonl'} is a directory where a file goes"
        )
    # A disk that fills up during the evaluation: the write fails naming its file.
    real_write_text = pathlib.Path.write_text

    def full_disk(self, data, *args, **kwargs):
        if self.name.startswith(".predictions.jsonl"):
            raise OSError(28, "No space left on device")
        return real_write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full_disk)
    out = tmp_path / "full"
    line = one_line(capsys, lambda: evaluate(env, env.params_dir, out, max_examples=2), after_decoding=True)
    assert line == f"eval: error: {out / 'predictions.jsonl'}: No space left on device"


@pytest.fixture
def parsed_eval():
    """Parses the eval binary's gin files with extra bindings, as the binary does."""
    import dss_jax.eval  # noqa: F401  (defines evaluate_checkpoints)
    from dss_jax import configurables

    configurables.register_for_decoding()

    def parse(*bindings):
        gin.clear_config()
        gin_utils.parse_gin(
            ["runs/eval.gin", "tasks/synthetic.gin"],
            ["CHECKPOINT_PATH = '/tmp/unused'", "EVAL_OUTPUT_DIR = '/tmp/unused'", *bindings],
        )

    yield parse
    gin.clear_config()


@pytest.mark.parametrize(
    "binding, named",
    [
        # Used to evaluate every example, silently.
        ("MAX_EXAMPLES = -1", "MAX_EXAMPLES (evaluate_checkpoints.max_examples) must be a positive integer (or None)"),
        ("BATCH_SIZE = 0", "BATCH_SIZE (evaluate_checkpoints.batch_size) must be a positive integer, got 0"),
        ("SPLIT = ''", "SPLIT (evaluate_checkpoints.split)"),
        ("OUTPUT_RATIONALE = 1", "OUTPUT_RATIONALE (evaluate_checkpoints.output_rationale) must be True or False"),
        ("DecodeSettings.num_beams = 0", "DecodeSettings.num_beams must be a positive integer"),
        ("DecodeSettings.method = 'beams'", "DecodeSettings.method must be one of 'greedy', 'sample', 'beam'"),
        ("DecodeSettings.top_p = 0", "DecodeSettings.top_p must be > 0"),
        ("DecodeSettings.temperature = -1.0", "DecodeSettings.temperature must be >= 0"),
        # T5X's keys: the evaluation used to write config.gin before it failed on them.
        (
            "TASK_FEATURE_LENGTHS = {'inputs': 128, 'targets': 32}",
            "TASK_FEATURE_LENGTHS (evaluate_checkpoints.feature_lengths) must give the DSS features' lengths "
            "(lacks 'label_inputs', 'label_targets', 'rationale_inputs', 'rationale_targets'; has 'inputs', "
            "'targets', which no DSS feature is called)",
        ),
    ],
)
def test_every_eval_setting_is_checked_before_anything_is_read(parsed_eval, binding, named):
    from dss_jax import eval as eval_binary
    from dss_jax import settings
    from dss_jax.prediction import DECODE_SETTINGS

    parsed_eval(binding)
    with pytest.raises(settings.SettingError) as e:
        settings.check_gin({**eval_binary.SETTINGS, **DECODE_SETTINGS})
    assert named in str(e.value) and "\n" not in str(e.value)


def test_the_shipped_eval_defaults_pass_the_checks(parsed_eval):
    from dss_jax import eval as eval_binary
    from dss_jax import settings
    from dss_jax.prediction import DECODE_SETTINGS

    parsed_eval()
    settings.check_gin({**eval_binary.SETTINGS, **DECODE_SETTINGS})


def test_a_bad_eval_setting_stops_the_binary_before_anything_is_written(tmp_path):
    out = tmp_path / "eval"
    r = run_binary(
        "dss_jax.eval",
        "--gin_file=runs/eval.gin",
        "--gin_file=tasks/synthetic.gin",
        f"--gin.CHECKPOINT_PATH='{tmp_path / 'run'}'",
        f"--gin.EVAL_OUTPUT_DIR='{out}'",
        "--gin.MAX_EXAMPLES=-1",
        DSS_CACHE_DIR=str(tmp_path / "cache"),
    )
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("eval: error: MAX_EXAMPLES (evaluate_checkpoints.max_examples)"), last
    assert "--gin.MAX_EXAMPLES=" in last and "Traceback" not in r.stderr
    assert not out.exists() and not (tmp_path / "cache").exists()
