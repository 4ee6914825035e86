"""The suite's own rules: under `make test` (DSS_NO_SKIPS=1) a skipped test fails the run."""

import os
import subprocess
import sys

from conftest import REPO_ROOT

SKIPPING = """
import pytest

def test_runs():
    pass

def test_needs_something():
    pytest.skip("something is not installed")
"""


def _pytest(tmp_path, no_skips: bool):
    (tmp_path / "test_toy.py").write_text(SKIPPING)
    env = {k: v for k, v in os.environ.items() if k != "DSS_NO_SKIPS"}
    env["PYTHONPATH"] = str(REPO_ROOT / "tests")  # the suite's conftest, as a plugin
    if no_skips:
        env["DSS_NO_SKIPS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_skip_fails_make_test_and_says_which(tmp_path):
    r = _pytest(tmp_path, no_skips=True)
    assert r.returncode == 1, r.stdout
    assert "test_toy.py::test_needs_something: Skipped: something is not installed" in r.stdout


def test_a_skip_is_only_a_skip_outside_make_test(tmp_path):
    r = _pytest(tmp_path, no_skips=False)
    assert r.returncode == 0, r.stdout
