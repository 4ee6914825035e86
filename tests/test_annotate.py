"""End to end: the annotation pipeline and `python -m dss_jax.annotate` against a scripted
OpenAI-compatible server on loopback, with injected faults, kills and restarts."""

import functools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import teacher_script as ts

from conftest import REPO_ROOT
from dss_jax.data import parsers
from dss_jax.data.cache import CacheWriter, read_cache
from dss_jax.teacher.examples import InputError, read_examples
from dss_jax.teacher.fake_server import ScriptedOpenAIServer
from dss_jax.teacher.http_backend import HttpBackendConfig, OpenAIHttpBackend
from dss_jax.teacher.pipeline import AnnotateConfig, run_annotation
from dss_jax.teacher.prompts import load_template, parse_template

FAST = dict(timeout=0.5, max_retries=4, initial_backoff=0.01, max_backoff=0.05)
FAST_FLAGS = ["--timeout=0.5", "--max_retries=4", "--initial_backoff=0.01", "--max_backoff=0.05", "--noprogress"]
# A fault on the first request(s) of most examples; example 0 fails every time.
FAULT_BY_ITEM = {1: "429", 2: "500", 4: "drop", 5: "slow", 6: "malformed_json", 7: "drop_mid_body", 8: "no_choices"}


def faults(prompt, attempt, always_failing=(0,)):
    k = ts.item_of(prompt)
    if k in always_failing:
        return "503"
    fault = FAULT_BY_ITEM.get(k % 9)
    if fault == "500" and attempt < 2:
        return fault
    return fault if attempt == 0 else None


def run_in_process(server, cache_path, examples, *, keep="all", vote=False, num_samples=1, concurrency=4):
    backend = OpenAIHttpBackend(HttpBackendConfig(base_url=server.base_url, model="scripted", **FAST))
    config = AnnotateConfig(
        template=parse_template(ts.PROMPT),
        teacher="scripted",
        num_samples=num_samples,
        temperature=0.7,
        concurrency=concurrency,
        keep=keep,
        vote=vote,
        progress=False,
    )
    with CacheWriter(cache_path) as writer:
        return run_annotation(
            examples,
            backend,
            writer,
            config,
            parse=functools.partial(parsers.parse_completion, "svamp"),
            labels_match=functools.partial(parsers.labels_match, "svamp"),
        )


def by_id(path):
    return {r.id: r.to_json() for r in read_cache(path)}  # read_cache refuses duplicate ids


def test_faults_every_example_once_failures_not_written_then_retried(tmp_path):
    inputs = tmp_path / "in.jsonl"
    ts.write_inputs(inputs, 30)
    examples = read_examples(inputs)
    cache = tmp_path / "cache.jsonl"
    with ScriptedOpenAIServer(ts.teacher, faults=faults, retry_after="0.2", slow_seconds=1.5) as server:
        summary = run_in_process(server, cache, examples)
        assert set(summary.failed) == {"ex000"} and "HTTP 503" in summary.failed["ex000"]
        assert "gave up after 5 attempts" in summary.failed["ex000"]
        assert summary.written == 29 and not summary.complete and summary.pending == 0
        assert set(by_id(cache)) == {e.id for e in examples} - {"ex000"}
        # Items 3, 13, 23 have no answer phrase: counted as unparsable, still recorded.
        assert summary.samples == 29 and summary.unparsed == 3
        records = by_id(cache)
        for k in (3, 13, 23):
            (sample,) = records[f"ex{k:03d}"]["samples"]
            assert sample["label"] is None and "I think" in sample["completion"]
        injected = {r.fault for r in server.log if r.fault}
        assert injected == {"503", "429", "500", "drop", "slow", "malformed_json", "drop_mid_body", "no_choices"}
        assert summary.usage.retries == sum(1 for r in server.log if r.attempt > 0)
        assert summary.usage.prompt_tokens == sum(len(r.prompt.split()) for r in server.log if r.fault is None)

    # A second run after the server recovered writes only the failed example.
    with ScriptedOpenAIServer(ts.teacher) as server:
        summary = run_in_process(server, cache, examples)
        assert summary.skipped == 29 and summary.written == 1 and summary.complete and not summary.failed
        assert [ts.item_of(r.prompt) for r in server.log] == [0]
    assert set(by_id(cache)) == {e.id for e in examples}


def test_vote_and_filters_end_to_end(tmp_path):
    inputs = tmp_path / "in.jsonl"
    ts.write_inputs(inputs, 10)
    examples = read_examples(inputs)
    with ScriptedOpenAIServer(ts.teacher) as server:
        summary = run_in_process(server, tmp_path / "c.jsonl", examples, keep="correct", vote=True, num_samples=3)
    records = by_id(tmp_path / "c.jsonl")
    kept = {i: len(r["samples"]) for i, r in records.items()}
    # 3: unparsable -> none; 6: one wrong sample outvoted -> 2 kept; 8: all wrong -> none.
    assert kept == {f"ex{k:03d}": {3: 0, 6: 2, 8: 0}.get(k, 3) for k in range(10)}
    assert records["ex006"]["meta"]["annotate"]["vote"]["count"] == 2
    assert (summary.samples, summary.parsed, summary.kept) == (30, 27, 23)
    assert (summary.dropped_unparsed, summary.dropped_minority, summary.dropped_wrong) == (3, 1, 3)
    assert (summary.samples_correct, summary.samples_with_gold) == (23, 30)
    assert (summary.votes_correct, summary.votes_with_gold) == (8, 10)
    assert summary.records_without_samples == 2
    text = summary.format()
    assert "teacher accuracy (majority vote): 80.00% (8/10)" in text
    assert "teacher accuracy (per sample, unparsable count as wrong): 76.67% (23/30)" in text


def annotate_cmd(server, inputs, output, prompt, *extra):
    return [
        sys.executable, "-m", "dss_jax.annotate",
        f"--input={inputs}", f"--output={output}", f"--prompt={prompt}",
        "--dataset_family=svamp", "--model=scripted", f"--base_url={server.base_url}",
        *FAST_FLAGS, *extra,
    ]  # fmt: skip


def run_cli(cmd, env=None, timeout=60):
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def test_sigkill_mid_run_then_restart_gives_the_uninterrupted_cache(tmp_path):
    inputs = tmp_path / "in.jsonl"
    ts.write_inputs(inputs, 40)
    prompt = ts.write_prompt(tmp_path / "prompt.txt")
    flags = ["--num_samples=2", "--temperature=0.8", "--concurrency=2"]
    no_503 = functools.partial(faults, always_failing=())
    with ScriptedOpenAIServer(ts.teacher, faults=no_503, retry_after="0.05", slow_seconds=1.0, delay=0.04) as server:
        reference = tmp_path / "reference.jsonl"
        done = run_cli(annotate_cmd(server, inputs, reference, prompt, *flags))
        assert done.returncode == 0, done.stderr
        expected = by_id(reference)
        assert len(expected) == 40

        killed = tmp_path / "killed.jsonl"
        cmd = annotate_cmd(server, inputs, killed, prompt, *flags)
        for kill_after_lines in (5, 20):  # kill twice, at different points
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and proc.poll() is None:
                if killed.exists() and killed.read_bytes().count(b"\n") >= kill_after_lines:
                    break
                time.sleep(0.01)
            assert proc.poll() is None, "the run finished before it could be killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            partial = by_id(killed)
            assert kill_after_lines <= len(partial) < 40
        resumed = run_cli(cmd)
        assert resumed.returncode == 0, resumed.stderr
        assert "already cached" in resumed.stderr
    assert by_id(killed) == expected  # same records by id and content, each exactly once
    assert killed.read_bytes().count(b"\n") == 40


def test_cli_summary_json_exit_codes_and_the_key_is_never_written(tmp_path):
    secret = "sk-do-not-leak-5f3a9c"
    inputs = tmp_path / "in.jsonl"
    ts.write_inputs(inputs, 12)
    prompt = ts.write_prompt(tmp_path / "prompt.txt")
    env = dict(os.environ, MY_TEACHER_KEY=secret)

    def plan(prompt_text, attempt):
        k = ts.item_of(prompt_text)
        return {0: "503", 1: "400"}.get(k) or faults(prompt_text, attempt, always_failing=())

    with ScriptedOpenAIServer(ts.teacher, faults=plan, api_key=secret, retry_after="0.1") as server:
        summary_path = tmp_path / "summary.json"
        out = run_cli(
            annotate_cmd(server, inputs, tmp_path / "c.jsonl", prompt, "--api_key_env=MY_TEACHER_KEY",
                         "--api=completions", f"--summary_json={summary_path}", "--verbosity=1"),
            env=env,
        )  # fmt: skip
        assert all(r.authorization == f"Bearer {secret}" for r in server.log)
        assert out.returncode == 1  # failures: rerun to retry them
        assert "FAILED (not written; run the same command again to retry them): 2 examples" in out.stderr
        summary = json.loads(summary_path.read_text())
        assert summary["failed_ids"] == ["ex000", "ex001"] and summary["written"] == 10
        assert summary["usage"]["requests"] == len(server.log)
        for text in (out.stdout, out.stderr, summary_path.read_text(), (tmp_path / "c.jsonl").read_text()):
            assert secret not in text

        wrong_key = run_cli(
            annotate_cmd(server, inputs, tmp_path / "d.jsonl", prompt, "--api_key_env=MY_TEACHER_KEY"),
            env=dict(os.environ, MY_TEACHER_KEY="sk-wrong"),
        )
        assert wrong_key.returncode == 3 and "STOPPED by a fatal error: HTTP 401" in wrong_key.stderr
        assert "sk-wrong" not in wrong_key.stderr


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"input": "x"}', "missing required field 'id'"),
        ('{"id": 7, "input": "x"}', "field 'id' must be a string"),
        ('{"id": "a", "input": "x", "label": [1]}', "field 'label' must be a string, a number or null"),
        ('{"id": "ex000", "input": "again"}', "duplicate id 'ex000' (first at line 1)"),
    ],
)
def test_malformed_input_lines_are_reported_as_file_line(tmp_path, line, message):
    path = tmp_path / "in.jsonl"
    ts.write_inputs(path, 2)
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n" + line + "\n")  # a blank line 3, the bad line 4
    with pytest.raises(InputError) as info:
        read_examples(path)
    assert str(info.value).startswith(f"{path}:4: ") and message in str(info.value)


def test_missing_placeholder_field_is_reported_before_any_request(tmp_path):
    path = tmp_path / "in.jsonl"
    ts.write_inputs(path, 2)
    prompt = tmp_path / "p.txt"
    prompt.write_text("Premise: {{premise}}\nAnswer:", encoding="utf-8")
    with pytest.raises(InputError, match=rf"{path}:1: the prompt {prompt} uses \{{\{{premise\}}\}}"):
        read_examples(path, load_template(prompt))


def test_cli_usage_errors_name_the_problem(tmp_path):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"id": "a", "input": "x"}\n{"id": "b"}\n', encoding="utf-8")
    base = [sys.executable, "-m", "dss_jax.annotate", f"--input={inputs}", f"--output={tmp_path / 'c.jsonl'}",
            "--model=m", "--base_url=http://127.0.0.1:9/v1"]  # fmt: skip
    bad_line = run_cli(base + ["--dataset_family=svamp"])
    assert bad_line.returncode == 2 and f"{inputs}:2: missing required field 'input'" in bad_line.stderr
    bad_family = run_cli(base + ["--dataset_family=gsm8k"])
    assert bad_family.returncode == 2 and "unknown dataset family 'gsm8k'" in bad_family.stderr
    assert not (tmp_path / "c.jsonl").exists()  # nothing sent, nothing written


def test_sixteen_workers_reach_ten_times_the_throughput_of_one(tmp_path):
    """With 200 ms per request, concurrency must overlap the waiting (>= 10x of 16x ideal)."""
    rates = {}
    with ScriptedOpenAIServer(ts.teacher, delay=0.2) as server:
        for workers, n in ((1, 8), (16, 96)):
            inputs = tmp_path / f"in{workers}.jsonl"
            ts.write_inputs(inputs, n)
            start = time.monotonic()
            summary = run_in_process(server, tmp_path / f"c{workers}.jsonl", read_examples(inputs), concurrency=workers)
            rates[workers] = n / (time.monotonic() - start)
            assert summary.written == n
    ratio = rates[16] / rates[1]
    print(f"\nthroughput: 1 worker {rates[1]:.2f}/s, 16 workers {rates[16]:.2f}/s, ratio {ratio:.1f}x")
    assert ratio >= 10


def test_ctrl_c_writes_the_summary_and_exits_130(tmp_path):
    inputs = tmp_path / "in.jsonl"
    ts.write_inputs(inputs, 30)
    prompt = ts.write_prompt(tmp_path / "prompt.txt")
    cache = tmp_path / "c.jsonl"
    with ScriptedOpenAIServer(ts.teacher, delay=0.05) as server:
        cmd = annotate_cmd(server, inputs, cache, prompt, "--concurrency=2")
        # A suite started in the background (nohup, `cmd &`) inherits SIGINT ignored, and
        # Python keeps it ignored: give the child Ctrl-C's default disposition, as a terminal would.
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (cache.exists() and cache.read_bytes().count(b"\n") >= 3):
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=20)
        assert proc.returncode == 130
        assert "INTERRUPTED: finished examples are cached" in stderr
        written = len(by_id(cache))
        assert f"{written} written now" in stderr and written < 30
        assert run_cli(cmd).returncode == 0
    assert len(by_id(cache)) == 30
