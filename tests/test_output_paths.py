"""output_paths: an output that is an input, lies in a run or a checkpoint, is another
output of the same command or holds an earlier result is refused before any work, and
so is one that cannot be written."""

import errno
import json
import os
import pathlib
import resource
import signal

import pytest

from dss_jax import files, output_paths
from dss_jax.output_paths import Output, OutputPathError, check_outputs


def make_run(root: pathlib.Path) -> pathlib.Path:
    """A training run's MODEL_DIR as the trainer lays it out (files only, no weights)."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"d_model": 8, "vocab_size": 32}))
    (root / "task.json").write_text(json.dumps({"task": "t", "options": {}}))
    (root / "spiece.model").write_bytes(b"spm")
    (root / "train").mkdir()
    (root / "train" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (root / "checkpoint_5" / "state").mkdir(parents=True)
    return root


def refusal(outputs, **kwargs) -> str:
    with pytest.raises(OutputPathError) as e:
        check_outputs(outputs, **kwargs)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_the_marker_names_are_those_the_run_and_checkpoints_use():
    from dss_jax import checkpoints
    from dss_jax.checkpoints import locate, t5x
    from dss_jax.training import selection

    assert output_paths.T5X_CHECKPOINT_FILE == t5x.CHECKPOINT_FILE
    assert output_paths.LOCK_FILE == checkpoints.LOCK_NAME
    assert output_paths.CONFIG_FILE == checkpoints.CONFIG_FILE
    assert output_paths.RUN_TASK_FILE == checkpoints.RUN_TASK_FILE
    assert output_paths.ORBAX_MARKERS == locate.ORBAX_MARKERS
    assert output_paths.RUN_STEP_DIR.pattern == locate.RUN_STEP_DIR.pattern
    assert selection.VALIDATION_DIR in output_paths.RUN_METRICS_DIRS


def test_a_t5x_export_may_be_replaced_whole_but_nothing_is_written_into_it(tmp_path):
    """export --format=t5x's output (checkpoint_<step>/checkpoint only) is no training run:
    a directory output replaced whole may be it; any output inside it is still refused."""
    export = tmp_path / "t5x"
    (export / "checkpoint_3").mkdir(parents=True)
    (export / "checkpoint_3" / "checkpoint").write_bytes(b"msgpack")
    check_outputs([Output("--output", export, directory=True, whole=True)], overwrite=True)
    (export / "checkpoint_3" / "target.encoder.layers_0.mlp.wo.kernel").mkdir()  # its zarr arrays beside
    check_outputs([Output("--output", export, directory=True, whole=True)], overwrite=True)
    (export / "checkpoint_3" / "train_ds-0-of-1").write_bytes(b"")  # a T5X run's checkpoint: a run
    assert "is the training run" in refusal([Output("--output", export, directory=True, whole=True)], overwrite=True)
    (export / "checkpoint_3" / "train_ds-0-of-1").unlink()
    message = refusal([Output("EVAL_OUTPUT_DIR", export / "checkpoint_3" / "eval", directory=True)])
    assert "part of the T5X checkpoint export" in message
    (export / "config.gin").write_text("")  # a T5X run's MODEL_DIR: a run
    assert "is the training run" in refusal([Output("--output", export, directory=True, whole=True)], overwrite=True)


def test_an_output_that_is_an_input_is_refused_also_through_links_and_with_overwrite(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "q1", "input": "x"}\n')
    (tmp_path / "link.jsonl").symlink_to(source)
    os.link(source, tmp_path / "hard.jsonl")
    for given in (source, tmp_path / "link.jsonl", tmp_path / "hard.jsonl", tmp_path / "." / "in.jsonl"):
        message = refusal(
            [Output("INFER_OUTPUT", given)],
            inputs={"INFER_INPUT": source},
            overwrite=True,
            overwrite_setting="--gin.OVERWRITE=True",
        )
        assert message.startswith(f"INFER_OUTPUT={given} is INFER_INPUT ({source}), which this command reads")
        assert "not even with --gin.OVERWRITE=True" in message
    assert source.read_text() == '{"id": "q1", "input": "x"}\n'
    # A directory's files are compared too, and an input inside a directory replaced whole.
    message = refusal([Output("EVAL_OUTPUT_DIR", tmp_path, directory=True, files=["in.jsonl"])], inputs={"X": source})
    assert f"would write {source}, which is X" in message
    out = tmp_path / "hf"
    out.mkdir()
    (out / "spiece.model").write_bytes(b"v")
    message = refusal([Output("--output", out, directory=True, whole=True)], inputs={"--vocab": out / "spiece.model"})
    assert "holds --vocab" in message and "replaced whole" in message


@pytest.mark.parametrize(
    "where, directory, expect",
    [
        ("run/config.json", False, "would be a file of the training run"),
        ("run/answers.jsonl", False, "would be a file of the training run"),
        ("run/train/answers.jsonl", False, "lies in {root}/run/train, part of the training run"),
        ("run", True, "is the training run {root}/run"),
        ("run/train", True, "lies in {root}/run/train, part of the training run"),
        ("run/validation", True, "lies in {root}/run/validation, part of the training run"),
        ("run/checkpoint_5/eval", True, "lies in {root}/run/checkpoint_5, part of the training run"),
        ("run/config.json", True, "is a file of the training run"),
        ("hf/out.jsonl", False, "would be a file of the checkpoint {root}/hf"),
        ("ckpt/params/x", True, "lies in the orbax checkpoint {root}/ckpt/params"),
    ],
)
@pytest.mark.parametrize("store", ["local", "gs"])
def test_outputs_in_a_run_or_a_checkpoint_are_refused(tmp_path, request, store, where, directory, expect):
    tree = tmp_path / "tree"
    make_run(tree / "run")
    (tree / "hf").mkdir()
    (tree / "hf" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (tree / "ckpt" / "params").mkdir(parents=True)
    (tree / "ckpt" / "params" / "_METADATA").write_text("{}")
    root = tree
    if store == "gs":  # the same tree as objects (a GCS emulator, tests/conftest.py)
        root = request.getfixturevalue("gcs")
        files.upload_tree(tree, root)
    out = f"{root}/{where}"
    message = refusal([Output("OUT", out, directory=directory)], overwrite=True, overwrite_setting="--overwrite")
    assert message.startswith(f"OUT={out} {expect.format(root=root)}"), message
    assert message.endswith("give a path outside it (not even with --overwrite)")


def test_new_directories_beside_a_runs_own_and_other_config_files_are_fine(tmp_path):
    run = make_run(tmp_path / "run")
    check_outputs([Output("EVAL_OUTPUT_DIR", run / "eval", directory=True)])
    check_outputs([Output("INFER_OUTPUT", run / "eval" / "answers.jsonl")])
    check_outputs([Output("--output", tmp_path / "run_cache.jsonl")])  # beside the run
    # A config.json that describes no model, or a vocabulary alone, makes no checkpoint.
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "config.json").write_text(json.dumps({"editor": "vim"}))
    (tmp_path / "project" / "spiece.model").write_bytes(b"v")
    check_outputs([Output("INFER_OUTPUT", tmp_path / "project" / "answers.jsonl")])
    # A directory replaced whole (export, convert) may be a checkpoint, never a run.
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    check_outputs([Output("--output", tmp_path / "hf", directory=True, whole=True)])
    assert "is the training run" in refusal([Output("--output", run, directory=True, whole=True)])


def test_two_outputs_of_one_command_are_refused(tmp_path):
    cache = tmp_path / "cache.jsonl"
    (tmp_path / "link.json").symlink_to(cache)
    for summary in (cache, tmp_path / "link.json"):
        message = refusal(
            [Output("--output", cache, appends=True), Output("--summary_json", summary)],
            overwrite=True,
            overwrite_setting="--overwrite",
        )
        assert message == (
            f"--summary_json={summary} is also --output: each output needs a path of its own "
            "(not even with --overwrite)"
        )


def test_an_existing_result_is_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("")
    check_outputs([Output("INFER_OUTPUT", out)])  # empty: no result
    out.write_text('{"id": "q1", "label": "yes"}\n')
    message = refusal([Output("INFER_OUTPUT", out)], overwrite_setting="--gin.OVERWRITE=True")
    assert message == (
        f"INFER_OUTPUT={out} already holds a result (29 bytes): pass --gin.OVERWRITE=True to replace it, "
        "or give another path"
    )
    check_outputs([Output("INFER_OUTPUT", out)], overwrite=True)
    check_outputs([Output("--output", out, appends=True)])  # a cache that a rerun continues
    (tmp_path / "step_5").mkdir()
    (tmp_path / "step_5" / "metrics.json").write_text("{}")
    eval_dir = Output("D", tmp_path, directory=True, files=["step_5/metrics.json"], results=["step_5/metrics.json"])
    assert "already holds a result" in refusal([eval_dir], overwrite_setting="--gin.OVERWRITE=True")
    check_outputs([eval_dir], overwrite=True)


def test_outputs_that_cannot_be_written_are_found_before_any_work(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert refusal([Output("INFER_OUTPUT", tmp_path)]) == f"INFER_OUTPUT={tmp_path} is a directory; give a file path"
    assert refusal([Output("EVAL_OUTPUT_DIR", a_file, directory=True)]).endswith("is a file; give a directory")
    assert refusal([Output("INFER_OUTPUT", a_file / "out.jsonl")]) == (
        f"INFER_OUTPUT={a_file / 'out.jsonl'}: {a_file} is a file, not a directory"
    )
    (tmp_path / "d" / "predictions.jsonl").mkdir(parents=True)
    message = refusal([Output("EVAL_OUTPUT_DIR", tmp_path / "d", directory=True, files=["predictions.jsonl"])])
    assert message.endswith(f"{tmp_path / 'd' / 'predictions.jsonl'} is a directory where a file goes")
    message = refusal([Output("EVAL_OUTPUT_DIR", tmp_path, directory=True, files=["a_file/metrics.json"])])
    assert message.endswith(f"{a_file} is a file where a directory goes")
    os.mkfifo(tmp_path / "pipe")
    assert "is not a regular file" in refusal([Output("INFER_OUTPUT", tmp_path / "pipe")])
    # A full disk: the file-size limit stands in for it (the suite runs as root, which a
    # read-only directory would not stop).
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, limits[1]))
    try:
        with pytest.raises(OutputPathError) as e:
            check_outputs([Output("INFER_OUTPUT", tmp_path / "new" / "out.jsonl")])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert str(e.value) == f"INFER_OUTPUT={tmp_path / 'new' / 'out.jsonl'}: cannot write in {tmp_path} (File too large)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "d", "pipe"]  # no probe left behind


class FullDisk:
    """A file object whose writes fail as on a full disk (an OSError naming no file)."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_the_metrics_writer_names_its_file_when_a_write_fails(tmp_path):
    from dss_jax.metrics_writer import MetricsWriter

    writer = MetricsWriter(str(tmp_path / "eval"), tensorboard=False)
    writer._jsonl = FullDisk(writer._jsonl)
    with pytest.raises(OSError) as e:
        writer.write(5, {"accuracy": 0.5})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "eval" / "metrics.jsonl")
