"""A user's mistake ends every binary with one line `NAME: error: ...` and exit code 2."""

import errno
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from dss_jax import cli


def test_user_error_is_one_line_and_exit_2(capsys):
    def main():
        raise cli.UserError("data.jsonl:3: 'meta' must be an object")

    with pytest.raises(SystemExit) as e:
        cli.guard(main, "annotate")()
    assert e.value.code == cli.EXIT_USAGE
    assert capsys.readouterr().err == "annotate: error: data.jsonl:3: 'meta' must be an object\n"


def test_string_exit_is_reported_the_same_way_and_bugs_keep_their_traceback(capsys):
    def old_style():
        raise SystemExit("dss_jax.convert: error: no config.json in /x")

    with pytest.raises(SystemExit) as e:
        cli.guard(old_style, "convert")()
    assert e.value.code == cli.EXIT_USAGE
    assert capsys.readouterr().err == "convert: error: no config.json in /x\n"
    assert (
        cli.error_line("eval", "no checkpoint in /r\n  In call to configurable 'evaluate_checkpoints' (<function>)")
        == "eval: error: no checkpoint in /r"
    )
    assert cli.error_line("eval", "two things:\n  one\n  two") == "eval: error: two things: one two"

    def bug():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        cli.guard(bug, "convert")()


def test_library_errors_are_user_errors():
    from dss_jax.data.cache import CacheFormatError
    from dss_jax.data.dss_paper import MissingFileError

    assert issubclass(CacheFormatError, cli.UserError) and issubclass(CacheFormatError, ValueError)
    assert issubclass(MissingFileError, cli.UserError) and issubclass(MissingFileError, FileNotFoundError)


@pytest.mark.parametrize(
    "args",
    [
        ["dss_jax.convert", "--hf_dir=/nonexistent/hf", "--output=/nonexistent/out"],
        ["dss_jax.train", "--gin.MODEL_DIR"],  # a shorthand without a value, caught before absl runs
        ["dss_jax.eval"],  # no gin file
        ["dss_jax.annotate", "--concurrency=many"],  # a flag's value absl cannot parse
        ["dss_jax.export", "--no_such_flag=1"],
    ],
)
def test_binaries_print_one_line(args):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # conftest sets it for the suite
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    name = args[0].split(".")[-1]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == cli.EXIT_USAGE, proc.stderr
    # One line: no traceback, and no TensorFlow start-up notices (eval imports it with its modules).
    assert len(lines) == 1 and lines[0].startswith(f"{name}: error: "), proc.stderr


def test_os_error_on_a_users_path_is_one_line(capsys):
    def main():
        raise PermissionError(errno.EACCES, "Permission denied", "/runs/x/config.gin")

    with pytest.raises(SystemExit) as e:
        cli.guard(main, "train")()
    assert e.value.code == cli.EXIT_USAGE
    assert capsys.readouterr().err == "train: error: /runs/x/config.gin: Permission denied\n"


def test_child_error_quotes_the_childs_own_error_line(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("I1202 loading\ntrain: error: BATCH_SIZE=-8: must be a positive integer\n")
    msg = str(cli.child_error("dss_jax.train", 2, str(log)))
    assert msg == f"dss_jax.train failed: train: error: BATCH_SIZE=-8: must be a positive integer (whole log: {log})"
    log.write_text("Traceback (most recent call last):\nKeyError: 'x'\n")
    assert str(cli.child_error("dss_jax.train", 1, str(log))).startswith("dss_jax.train failed: exit 1 (whole log:")


def test_quickstart_make_synthetic_and_import_dss_print_one_line(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for args in (
        ["dss_jax.quickstart", f"--output_dir={a_file}"],
        ["dss_jax.make_synthetic", f"--cache_dir={tmp_path}", "--max_operations=7"],
        [
            "dss_jax.import_dss",
            f"--dss_dir={tmp_path}/none",
            "--dataset=svamp",
            "--split=train",
            f"--output={tmp_path}/out.jsonl",
        ],
    ):
        proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        name = args[0].split(".")[-1]
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == cli.EXIT_USAGE, (args, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith(f"{name}: error: "), (args, proc.stderr)


def test_library_info_is_hidden_but_own_info_and_warnings_are_not():
    import logging

    chatter = cli._LibraryChatter()

    def record(path, level, msg="x"):
        return logging.LogRecord("absl", level, path, 1, msg, None, None)

    own = os.path.join(REPO_ROOT, "dss_jax", "training", "loop.py")
    orbax = "/venv/lib/python3.11/site-packages/orbax/checkpoint/_src/checkpoint_manager.py"
    assert chatter.filter(record(own, logging.INFO))
    assert not chatter.filter(record(orbax, logging.INFO))
    assert chatter.filter(record(orbax, logging.WARNING))
    assert not chatter.filter(record(orbax, logging.WARNING, "Metadata file does not exist: %s"))


def test_tensorflow_import_prints_nothing_natively():
    code = (
        "import sys; from dss_jax import cli; sys.meta_path.insert(0, cli._QuietFirstImport('tensorflow'));"
        "import os; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'; import tensorflow as tf; tf.constant(1)"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_eval_and_infer_import_no_tensorflow_until_they_run():
    """`--help` and flag errors answer at once: TensorFlow (through seqio) takes seconds to import."""
    code = "import sys, dss_jax.eval, dss_jax.infer; print('tensorflow' in sys.modules, 'seqio' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.stdout.split() == ["False", "False"], proc.stderr


def test_compiled_programs_go_to_the_project_cache_unless_jax_is_told_otherwise(tmp_path, monkeypatch):
    import jax

    before = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir", "jax_compilation_cache_max_size")}
    try:
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
        monkeypatch.setenv("DSS_CACHE_DIR", str(tmp_path))
        jax.config.update("jax_compilation_cache_max_size", -1)
        assert cli.use_compilation_cache() == str(tmp_path / "xla")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
        assert jax.config.jax_compilation_cache_max_size == cli.COMPILATION_CACHE_BYTES  # bounded, not jax's -1
        jax.config.update("jax_compilation_cache_dir", before["jax_compilation_cache_dir"])
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")  # the user's off switch
        assert cli.use_compilation_cache() is None
        assert jax.config.jax_compilation_cache_dir == before["jax_compilation_cache_dir"]
    finally:
        for k, v in before.items():
            jax.config.update(k, v)


def test_an_os_error_from_inside_a_gin_configurable_is_one_line(capsys):
    """gin re-raises it as a proxy without errno or file name (eval's and infer's work
    runs in one); a full disk there is still the user's one line."""
    import gin

    @gin.configurable
    def write_predictions():
        raise OSError(errno.ENOSPC, "No space left on device", "/out/predictions.jsonl")

    with pytest.raises(SystemExit) as e:
        cli.guard(write_predictions, "eval")()
    assert e.value.code == cli.EXIT_USAGE
    assert capsys.readouterr().err == "eval: error: /out/predictions.jsonl: No space left on device\n"


def test_a_read_only_or_full_cache_dir_is_one_line_naming_dss_cache_dir(tmp_path, monkeypatch, capsys):
    """An OSError raised inside a gin configurable (the data generated on first use, a
    vocabulary cached) lost its errno and file name to gin's proxy: a traceback."""
    import gin

    monkeypatch.setenv("DSS_CACHE_DIR", str(tmp_path / "cache"))

    @gin.configurable
    def fill_the_cache(error):
        raise error

    for error, said in (
        (
            OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "cache" / "vocabularies" / "v.model")),
            "No space",
        ),
        (
            OSError(errno.EFBIG, "File too large", str(tmp_path / "cache" / "synthetic" / "train.jsonl")),
            "File too large",
        ),
        (
            NotADirectoryError(errno.ENOTDIR, "Not a directory", str(tmp_path / "cache" / "synthetic")),
            "Not a directory",
        ),
    ):
        with pytest.raises(SystemExit) as e:
            cli.guard(lambda error=error: fill_the_cache(error), "train")()
        assert e.value.code == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert err.startswith(f"train: error: {error.filename}: {said}") and err.count("\n") == 1, err
        assert f"(in DSS_CACHE_DIR={tmp_path / 'cache'}, " in err and "set DSS_CACHE_DIR to a folder" in err


def test_a_cache_dir_that_cannot_hold_compiled_programs_is_a_warning(tmp_path, monkeypatch, caplog):
    import jax

    (tmp_path / "file").write_text("")
    before = jax.config.jax_compilation_cache_dir
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("DSS_CACHE_DIR", str(tmp_path / "file" / "cache"))  # read-only: under a file
    assert cli.use_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir == before
    assert "compiled programs are not cached: " in caplog.text and "DSS_CACHE_DIR" in caplog.text


def test_the_train_binary_on_a_cache_dir_it_cannot_write_is_one_line(tmp_path):
    from conftest import run_binary

    (tmp_path / "file").write_text("")
    model_dir = tmp_path / "run"
    r = run_binary(
        "dss_jax.train",
        "--gin_file=runs/train.gin",
        "--gin_file=models/tiny.gin",
        "--gin_file=tasks/synthetic.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.TRAIN_STEPS=2",
        "--gin.BATCH_SIZE=8",
        DSS_CACHE_DIR=str(tmp_path / "file" / "cache"),
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train: error: {tmp_path / 'file' / 'cache'}") and "Not a directory" in last, last
    assert "set DSS_CACHE_DIR to a folder you can write to" in last
    assert not model_dir.exists()


@pytest.mark.parametrize(
    "module, args, where, why",
    [
        (
            "dss_jax.train",
            ["--gin_file=runs/train.gin", "--gin_file=models/tiny.gin", "--gin_file=tasks/synthetic.gin"]
            + ["--gin.MODEL_DIR='gcs://my-bucket/run'"],
            "--gin.MODEL_DIR='gcs://my-bucket/run'",
            "gcs:// paths are not served (write gs:// for Cloud Storage); use gs://, s3://, az:// or a local path",
        ),
        (
            "dss_jax.export",
            ["--checkpoint=/nowhere", "--output=hdfs://namenode/hf"],
            "--output=hdfs://namenode/hf",
            "hdfs:// paths are not served; use gs://, s3://, az:// or a local path",
        ),
    ],
)
def test_an_unserved_object_store_path_is_refused_before_anything_is_written(tmp_path, module, args, where, why):
    # Taken for a local path, gcs://b/run would make ./gcs:/b/run/ and train there. (gs:// is
    # served: tests/test_gcs_*.py.)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    r = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"{module.split('.')[1]}: error: {where}: {why}"]
    assert list(tmp_path.iterdir()) == []


def test_an_unserved_object_store_path_bound_in_a_gin_file_is_refused_naming_the_binding(tmp_path):
    from dss_jax import gin_utils

    config = tmp_path / "t5x_finetune.gin"
    config.write_text("include 'runs/train.gin'\nINITIAL_CHECKPOINT_PATH = 'gcs://t5-data/t5_1_1_small/checkpoint_1'\n")
    with pytest.raises(cli.UserError, match="^gin binding INITIAL_CHECKPOINT_PATH = gcs://t5-data/t5_1_1_small/"):
        gin_utils.parse_gin([str(config)], ["MODEL_DIR = '/tmp/x'"])
    # gs:// is served, and a teacher's http(s) endpoint is no object store.
    cli.refuse_cloud_paths(["--base_url=https://api.example.com/v1", "--gin.X='http://127.0.0.1:8080'"])
    cli.refuse_cloud_paths(["--gin.MODEL_DIR='gs://my-bucket/run'", "INITIAL_CHECKPOINT_PATH = 'gs://t5-data/c'"])


def test_an_object_store_whose_client_is_not_installed_is_refused_naming_the_package(monkeypatch):
    from dss_jax import files

    monkeypatch.setitem(files.OBJECT_STORES, "s3", "dss_no_such_client")  # as on a machine without s3fs
    with pytest.raises(cli.UserError) as e:
        cli.refuse_cloud_paths(["--output=s3://my-bucket/hf"])
    assert str(e.value) == (
        "--output=s3://my-bucket/hf: s3:// paths need the dss_no_such_client package: pip install dss_no_such_client"
    )
