"""Atomic writes (dss_jax.files): the old file or the new one, never a part, and no
temporary file left behind; a failed write names its file. The same calls on gs://."""

import errno
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from dss_jax import cli, files


def test_atomic_write_replaces_text_and_bytes(tmp_path):
    path = tmp_path / "a.json"
    files.atomic_write(path, "old\n")
    assert files.atomic_write(path, "new ü\n") == path
    assert path.read_text(encoding="utf-8") == "new ü\n"
    files.atomic_write(path, b"\x00\x01", fsync=True)
    assert path.read_bytes() == b"\x00\x01"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text("complete\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with files.atomic_output(path) as tmp:
            tmp.write_text("half of it")
            assert tmp.parent == tmp_path and tmp.name != path.name
            raise RuntimeError("disk full")
    assert path.read_text() == "complete\n"
    assert [p.name for p in tmp_path.iterdir()] == ["cache.jsonl"]


def test_writers_get_their_own_temporary_files(tmp_path):
    path = tmp_path / "x"
    with files.atomic_output(path) as a, files.atomic_output(path) as b:
        assert a != b
        a.write_text("same")
        b.write_text("same")
    assert path.read_text() == "same" and [p.name for p in tmp_path.iterdir()] == ["x"]


@pytest.mark.parametrize(
    "text,message",
    [
        ("{not json", r"x\.json is not valid JSON \(.*\): the settings$"),
        ("[1]", r"x\.json holds a JSON list, not an object"),
    ],
)
def test_read_json_object_names_the_file(tmp_path, text, message):
    class SettingsError(ValueError):
        pass

    (tmp_path / "x.json").write_text(text)
    with pytest.raises(SettingsError, match=message):
        files.read_json_object(tmp_path / "x.json", SettingsError, "the settings")
    (tmp_path / "x.json").write_text('{"a": 1}')
    assert files.read_json_object(tmp_path / "x.json", SettingsError) == {"a": 1}


def test_a_write_that_fails_anyway_names_its_file_in_one_line(tmp_path, monkeypatch, capsys):
    target = tmp_path / "predictions.jsonl"

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write on a full disk: no file name

    monkeypatch.setattr(pathlib.Path, "write_text", full_disk)
    with pytest.raises(SystemExit) as e:
        cli.guard(lambda: files.atomic_write(target, "rows"), "eval")()
    assert e.value.code == cli.EXIT_USAGE
    assert capsys.readouterr().err == f"eval: error: {target}: No space left on device\n"
    assert list(tmp_path.iterdir()) == []  # no temporary file left


# The same calls on gs:// (a GCS emulator on loopback, tests/conftest.py).


def test_files_on_gs_write_read_list_copy_and_remove(gcs, tmp_path):
    run = files.path(gcs) / "run"
    assert files.is_remote(run) and not files.is_remote(tmp_path) and files.absolute(f"{gcs}/run/") == str(run)
    files.atomic_write(run / "task.json", '{"task": 1}')
    assert files.read_json_object(run / "task.json", ValueError) == {"task": 1}
    with pytest.raises(RuntimeError):  # a failed atomic write leaves the old object
        with files.atomic_output(run / "task.json") as tmp:
            tmp.write_text("half of it")
            raise RuntimeError("interrupted")
    assert (run / "task.json").read_text() == '{"task": 1}'
    (tmp_path / "hf" / "sub").mkdir(parents=True)
    (tmp_path / "hf" / "config.json").write_text("{}")
    (tmp_path / "hf" / "sub" / "w.bin").write_bytes(b"\x00" * 10)
    files.upload_tree(tmp_path / "hf", run / "hf")
    assert sorted(p.name for p in (run / "hf").iterdir()) == ["config.json", "sub"] and (run / "hf").is_dir()
    files.copy(run / "hf" / "sub" / "w.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == b"\x00" * 10
    files.rmtree(run / "hf")
    assert not (run / "hf").exists() and (run / "task.json").exists()


def test_a_growing_log_on_gs_is_readable_at_each_flush_and_kept_when_reopened(gcs):
    log = f"{gcs}/train/metrics.jsonl"
    with files.open_growing(log) as f:
        f.write('{"step": 1}\n')
        f.flush()
        assert files.path(log).read_text() == '{"step": 1}\n'
        f.write('{"step": 2}\n')
    with files.open_growing(log) as f:  # a resumed run extends it
        f.write('{"step": 3}\n')
    assert files.path(log).read_text().splitlines() == ['{"step": 1}', '{"step": 2}', '{"step": 3}']
    with files.open_growing(log, keep=False) as f:
        f.write("fresh\n")
    assert files.path(log).read_text() == "fresh\n"


def test_what_one_process_writes_on_gs_another_sees(gcs):
    # gcsfs caches listings per process; a run's files written by a trainer subprocess
    # must be seen by the process that started it (sweep, eval after train).
    assert not files.path(gcs).exists()
    code = f"from dss_jax import files; files.atomic_write('{gcs}/made_elsewhere.txt', 'x')"
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert [p.name for p in files.path(gcs).iterdir()] == ["made_elsewhere.txt"]
