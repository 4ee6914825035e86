"""A user's mistake ends every binary with one line `NAME: error: ...` and exit code 2."""

import os
import subprocess
import sys

import pytest

from dss_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    ],
)
def test_binaries_print_one_line(args):
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    name = args[0].split(".")[-1]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == cli.EXIT_USAGE, proc.stderr
    assert lines[-1].startswith(f"{name}: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
