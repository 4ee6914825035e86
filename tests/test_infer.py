"""`python -m dss_jax.infer`: the student on raw JSONL inputs; long inputs are cut with a
warning per input, malformed lines are reported as FILE:LINE."""

import functools
import json
import logging
import os
import subprocess
import sys

import _eval_toy as toy
import numpy as np
import pytest

from conftest import REPO_ROOT
from dss_jax import infer, prediction
from dss_jax.scoring import decode_and_score, load_examples

LONG = "what about a red apple? " + "and a very very long story about many other things " * 8


@pytest.fixture(scope="module")
def env(tmp_path_factory, cpu_devices):
    return toy.toy_env(tmp_path_factory, cpu_devices)


def write_jsonl(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_labels_are_those_of_the_eval_and_long_inputs_warn(env, tmp_path, caplog):
    examples = load_examples(toy.TASK, "test", toy.LENGTHS)
    records = [{"id": i, "input": x} for i, x in zip(examples.ids, examples.inputs)]
    records.insert(2, {"id": "long", "input": LONG})
    records.append({"input": "what about a blue hat?"})  # no id: the line number is used
    source = write_jsonl(tmp_path / "in.jsonl", records)
    with caplog.at_level(logging.WARNING):
        rows = infer.infer_file(
            checkpoint_path=str(env.trained.run_dir),
            input_path=str(source),
            output_path=str(tmp_path / "out" / "labels.jsonl"),
            feature_lengths=toy.LENGTHS,
            batch_size=4,
            output_rationale=True,
        )
    written = [json.loads(line) for line in (tmp_path / "out" / "labels.jsonl").read_text().splitlines()]
    assert written == rows and len(rows) == 13
    assert [r["id"] for r in rows] == [r["id"] for r in records[:-1]] + ["13"]
    # The same tokenization as the task's: the latest checkpoint gives the eval's predictions.
    direct = decode_and_score(env.trained.model, env.trained.params_by_step[60], examples, batch_size=4)
    by_id = {r["id"]: r for r in rows}
    assert [by_id[i]["label"] for i in examples.ids] == [r["prediction"] for r in direct.records]
    assert all(isinstance(r["rationale"], str) for r in rows)
    # One warning, naming the file and line, for the one long input; it is cut, not fatal.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "too long" in r.getMessage()]
    assert len(warnings) == 1 and f"{source}:3 (id 'long')" in warnings[0]
    assert by_id["long"]["truncated"] is True and by_id["long"]["label"] == by_id["test/0"]["label"]
    assert sum("truncated" in r for r in rows) == 1


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"id": "a", "input": "x"', "not valid JSON"),
        ('["x"]', "expected a JSON object"),
        ('{"id": "b"}', "missing or non-string field 'input'"),
        ('{"id": "b", "input": 3}', "missing or non-string field 'input'"),
        ('{"id": ["b"], "input": "x"}', "field 'id' must be"),
        ('{"id": "ok", "input": "y"}', r"duplicate id 'ok' \(first at line 1\)"),
        ('{"id": true, "input": "x"}', "field 'id' must be"),
        ('{"id": "s", "input": "x \\udc80 y"}', r'\["input"\] \(code point U\+DC80.*unpaired UTF-16 surrogate'),
        ("[" * 50_000 + "]" * 50_000, "JSON nested too deeply"),
        ('{"id": "e", "input": " "}', "field 'input' is empty"),
        ('{"id": "n", "input": "x", "score": NaN}', "NaN is not a finite number"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "in.jsonl", ['{"id": "ok", "input": "x"}', "", line])
    with pytest.raises(infer.InputFormatError, match=rf"{path}:3: {message}"):
        infer.read_inputs(str(path))


def test_non_utf8_line_and_directory_are_named(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": "ok", "input": "x"}\n{"id": "b", "input": "caf\xe9"}\n')
    with pytest.raises(infer.InputFormatError, match=rf"{path}:2: not valid UTF-8 \(byte 0xe9"):
        infer.read_inputs(str(path))
    with pytest.raises(infer.InputFormatError, match="is not a regular file"):
        infer.read_inputs(str(tmp_path))


def test_infer_binary_reports_an_unpaired_surrogate_as_file_and_line(tmp_path):
    # Before: the input passed the reader and sentencepiece failed on it (a pybind RuntimeError).
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "q1", "input": "fine"}\n{"id": "q2", "input": "bad \\ud800 text"}\n')
    out = tmp_path / "out.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "dss_jax.infer",
        "--gin_file=runs/infer.gin",
        "--gin.MIXTURE_OR_TASK_NAME=None",
        f"--gin.CHECKPOINT_PATH='{tmp_path / 'no_checkpoint'}'",
        f"--gin.INFER_INPUT='{source}'",
        f"--gin.INFER_OUTPUT='{out}'",
        "--gin.TASK_FEATURE_LENGTHS={'label_inputs': 8, 'label_targets': 8}",
    ]
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr[-4000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"infer: error: {source}:2: ") and "unpaired UTF-16 surrogate" in last, last
    assert "Traceback" not in proc.stderr and not out.exists()


def test_nli_inputs_split_at_the_separator_like_the_tasks():
    class Chars:  # one id per character, enough to see where EOS goes
        eos_id = 1

        def encode(self, s):
            return [3 + ord(c) % 50 for c in s]

    a, b, c = (3 + ord(ch) % 50 for ch in "abc")
    row, full = prediction.encode_input(Chars(), "ab</s>c", 8, separator=True)
    assert row.tolist() == [a, b, 1, c, 1, 0, 0, 0] and full == 5
    row, full = prediction.encode_input(Chars(), "ab</s>c", 8, separator=False)
    assert row.tolist()[:3] == [a, b, 3 + ord("<") % 50]
    row, full = prediction.encode_input(Chars(), "abcdefghij", 4, separator=False)
    assert row.tolist() == [a, b, c, 1] and full == 11  # cut to length - 1 tokens, then EOS


def test_infer_binary_end_to_end(env, tmp_path):
    source = write_jsonl(
        tmp_path / "in.jsonl", [{"id": "q1", "input": "what about a red cup?"}, {"id": "q2", "input": LONG}]
    )
    task_dir = env.root / "subprocess_task"
    task_dir.mkdir(exist_ok=True)
    toy.write_task_module(env.caches, task_dir)
    task_gin = toy.write_task_gin(task_dir)
    out = tmp_path / "out.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "dss_jax.infer",
        "--gin_file=runs/infer.gin",
        f"--gin_file={task_gin}",
        f"--gin.CHECKPOINT_PATH='{env.params_dir}'",
        f"--gin.INFER_INPUT='{source}'",
        f"--gin.INFER_OUTPUT='{out}'",
    ]
    proc_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(task_dir), str(REPO_ROOT)]))
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=proc_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q1", "q2"] and rows[1]["truncated"] is True
    assert f"{source}:2 (id 'q2')" in proc.stderr and "2 predictions written" in proc.stdout
    # Again: the earlier output is refused in one line, and replaced with OVERWRITE.
    out.write_text('{"id": "earlier"}\n')
    again = subprocess.run(cmd, cwd=REPO_ROOT, env=proc_env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        f"infer: error: INFER_OUTPUT={out} already holds a result (18 bytes): pass --gin.OVERWRITE=True to "
        "replace it, or give another path"
    ]
    assert out.read_text() == '{"id": "earlier"}\n'
    cmd.append("--gin.OVERWRITE=True")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=proc_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows


def test_infer_refuses_its_input_a_runs_file_and_an_earlier_output_before_loading(env, tmp_path, monkeypatch):
    from dss_jax.output_paths import OutputPathError

    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "q1", "input": "what about a red cup?"}])
    config = env.trained.run_dir / "config.json"
    kept = {source: source.read_bytes(), config: config.read_bytes()}
    run = functools.partial(
        infer.infer_file, checkpoint_path=str(env.trained.run_dir), input_path=str(source), feature_lengths=toy.LENGTHS
    )
    with monkeypatch.context() as m:
        m.setattr(infer.checkpoints, "load_checkpoint", lambda *a, **k: pytest.fail("loaded before the check"))
        for output, overwrite, expect in [
            (source, True, f"INFER_OUTPUT={source} is INFER_INPUT ({source}), which this command reads"),
            (config, True, f"INFER_OUTPUT={config} would be a file of the training run {env.trained.run_dir}"),
            (tmp_path, False, f"INFER_OUTPUT={tmp_path} is a directory; give a file path"),
        ]:
            with pytest.raises(OutputPathError) as e:
                run(output_path=str(output), overwrite=overwrite)
            assert str(e.value).startswith(expect), str(e.value)
    assert {p: p.read_bytes() for p in kept} == kept
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "earlier"}\n')
    with pytest.raises(OutputPathError, match=r"already holds a result \(18 bytes\): pass --gin.OVERWRITE=True"):
        run(output_path=str(out))
    assert out.read_text() == '{"id": "earlier"}\n'
    rows = run(output_path=str(out), overwrite=True)
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows and rows[0]["id"] == "q1"


@pytest.mark.parametrize(
    "binding, named",
    [
        ("BATCH_SIZE = 0", "BATCH_SIZE (infer_file.batch_size) must be a positive integer, got 0"),
        ("DecodeSettings.top_k = -1", "DecodeSettings.top_k must be an integer >= 0"),
    ],
)
def test_every_infer_setting_is_checked_before_anything_is_read(binding, named):
    import gin
    from dss_jax import configurables, gin_utils, settings

    configurables.register_for_decoding()
    gin.clear_config()
    try:
        gin_utils.parse_gin(
            ["runs/infer.gin", "tasks/synthetic.gin"],
            ["CHECKPOINT_PATH = '/x'", "INFER_INPUT = '/x'", "INFER_OUTPUT = '/x'", binding],
        )
        with pytest.raises(settings.SettingError) as e:
            settings.check_gin({**infer.SETTINGS, **prediction.DECODE_SETTINGS})
    finally:
        gin.clear_config()
    assert named in str(e.value)


def test_decode_batches_are_no_larger_than_the_rows(monkeypatch):
    """BATCH_SIZE=100000 for 3 inputs used to pad them to 100000 rows (46-98 GB of decoder state)."""
    import jax.numpy as jnp

    from dss_jax.model.decoding import DecodeConfig

    shapes = []

    def generate(model, params, rows, config, rng=None):
        shapes.append(rows.shape)
        return type("Out", (), {"tokens": jnp.full((rows.shape[0], config.max_decode_length), 5, jnp.int32)})()

    monkeypatch.setattr(prediction, "generate", generate)
    out = prediction.decode_batches(None, None, np.ones((3, 7), np.int32), DecodeConfig(max_decode_length=4), 100_000)
    assert shapes == [(3, 7)] and out.shape == (3, 4)
    prediction.decode_batches(None, None, np.ones((5, 7), np.int32), DecodeConfig(max_decode_length=4), 2)
    assert shapes[1:] == [(2, 7)] * 3  # the last batch padded to 2 rows, as before


def test_decoding_refuses_numbers_that_are_not_finite():
    from dss_jax.model.decoding import DecodeConfig

    with pytest.raises(ValueError, match="temperature must be a finite number >= 0, got nan"):
        DecodeConfig(max_decode_length=4, method="sample", temperature=float("nan"))
    with pytest.raises(ValueError, match="length_penalty must be a finite number, got inf"):
        DecodeConfig(max_decode_length=4, method="beam", length_penalty=float("inf"))


def test_lengths_shorter_than_the_run_trained_with_are_refused_unless_told(env, tmp_path):
    import shutil

    from dss_jax import cli

    run = tmp_path / "run"
    shutil.copytree(env.trained.run_dir, run)
    (run / "config.gin").write_text(f"TASK_FEATURE_LENGTHS = {toy.LENGTHS!r}\n")  # as the train binary records it
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "input": "what about a red car?"}])
    args = dict(checkpoint_path=str(run), input_path=str(inputs), task_name=toy.TASK, batch_size=2)
    short = {**toy.LENGTHS, "label_targets": 2}
    with pytest.raises(cli.UserError, match=r"label_targets 2 < 6\).*--gin.infer_file.allow_shorter_lengths=True"):
        infer.infer_file(output_path=str(tmp_path / "out.jsonl"), feature_lengths=short, **args)
    assert not (tmp_path / "out.jsonl").exists()
    rows = infer.infer_file(
        output_path=str(tmp_path / "out.jsonl"), feature_lengths=short, allow_shorter_lengths=True, **args
    )
    assert len(rows) == 1
