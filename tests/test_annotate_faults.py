"""`annotate` under faults that used to lose work or hang: bad bytes in the input or the
cache are refused before any request, a trickling or flooding server is cut off per
request, and a reply that is not quite text is stored, not fatal."""

import functools
import json
import pathlib
import subprocess
import sys
import time

import pytest
import teacher_script as ts

from conftest import REPO_ROOT
from dss_jax.data import parsers
from dss_jax.data.cache import CacheWriter, read_cache
from dss_jax.teacher.examples import read_examples
from dss_jax.teacher.fake_server import ScriptedOpenAIServer
from dss_jax.teacher.http_backend import HttpBackendConfig, OpenAIHttpBackend
from dss_jax.teacher.pipeline import AnnotateConfig, run_annotation
from dss_jax.teacher.prompts import parse_template

FLAGS = ["--max_retries=1", "--initial_backoff=0.01", "--max_backoff=0.05", "--noprogress"]


def annotate(server_url, inputs, output, prompt, *extra):
    cmd = [
        sys.executable,
        "-m",
        "dss_jax.annotate",
        f"--input={inputs}",
        f"--output={output}",
        f"--prompt={prompt}",
        "--dataset_family=svamp",
        "--model=scripted",
        f"--base_url={server_url}",
        *FLAGS,
        *extra,
    ]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("annotate: error: "), last
    assert all(f in last for f in fragments), last
    assert "Traceback" not in proc.stderr


GOOD = json.dumps(ts.example(0)).encode()


@pytest.mark.parametrize(
    "case",
    [
        "input_not_utf8",
        "input_surrogate",
        "input_too_deep",
        "input_empty",
        "label_nan",
        "label_too_large",
        "output_is_directory",
        "cache_too_deep",
        "cache_meta_list",
    ],
)
def test_bad_bytes_are_refused_with_file_and_line_before_any_request_or_write(tmp_path, case):
    inputs, output = tmp_path / "in.jsonl", tmp_path / "cache.jsonl"
    inputs.write_bytes(GOOD + b"\n" + json.dumps(ts.example(1)).encode() + b"\n")
    prompt = ts.write_prompt(tmp_path / "prompt.txt")
    where = f"{inputs}:2: "
    if case == "input_not_utf8":
        inputs.write_bytes(GOOD + b'\n{"id": "b", "input": "Item 1: caf\xe9"}\n')
        expected = (where, "not valid UTF-8")
    elif case == "input_surrogate":  # passes json.loads; used to crash the cache writer
        inputs.write_bytes(GOOD + b'\n{"id": "b", "input": "Item 1: \\udc80"}\n')
        expected = (where, '["input"]', "unpaired UTF-16 surrogate")
    elif case == "input_too_deep":
        inputs.write_bytes(GOOD + b'\n{"id": "b", "input": "x", "meta": ' + b"[" * 50_000 + b"]" * 50_000 + b"}\n")
        expected = (where, "nested too deeply")
    elif case == "input_empty":  # used to be sent, paid for and cached
        inputs.write_bytes(GOOD + b'\n{"id": "b", "input": "  "}\n')
        expected = (where, "field 'input' is empty")
    elif case in ("label_nan", "label_too_large"):  # used to be stored as the label "nan" / "inf"
        number = b"NaN" if case == "label_nan" else b"1e999"
        inputs.write_bytes(GOOD + b'\n{"id": "b", "input": "Item 1: 3", "label": ' + number + b"}\n")
        expected = (where, f"{number.decode()} is not a finite number")
    elif case == "output_is_directory":
        output.mkdir()
        expected = (f"--output={output} is a directory",)
    else:
        bad = b"[" * 50_000 + b"]" * 50_000 if case == "cache_too_deep" else b'{"id": "z", "input": "z", "meta": []}'
        output.write_bytes(GOOD + b"\n" + bad + b"\n")
        expected = (
            f"{output}:2: ",
            "nested too deeply" if case == "cache_too_deep" else "'meta' must be a JSON object",
        )
    before = output.read_bytes() if output.is_file() else None
    with ScriptedOpenAIServer(ts.teacher) as server:
        proc = annotate(server.base_url, inputs, output, prompt)
        assert not server.log  # nothing was paid for
    assert_one_line_error(proc, *expected)
    assert (output.read_bytes() if output.is_file() else None) == before
    assert not list(tmp_path.glob("*.torn-*"))


def by_item(plan):
    return lambda prompt, attempt: plan.get(ts.item_of(prompt))


def test_trickling_and_flooding_servers_fail_only_their_examples_within_the_deadline(tmp_path):
    inputs, output = tmp_path / "in.jsonl", tmp_path / "cache.jsonl"
    ts.write_inputs(inputs, 3)
    prompt = ts.write_prompt(tmp_path / "prompt.txt")
    plan = by_item({0: "trickle", 1: "huge"})
    with ScriptedOpenAIServer(ts.teacher, faults=plan, trickle_seconds=0.05, huge_bytes=2 << 20) as server:
        start = time.monotonic()
        proc = annotate(
            server.base_url, inputs, output, prompt, "--timeout=1", "--max_reply_bytes=1000000", "--concurrency=3"
        )
        elapsed_in_requests = max(r.time for r in server.log) - min(r.time for r in server.log)
    assert proc.returncode == 1, proc.stderr[-3000:]  # some examples failed: rerun to retry them
    assert "ex000: gave up after 2 attempts; last error: no complete reply within --timeout=1s" in proc.stderr
    assert "ex001: reply from" in proc.stderr and "larger than --max_reply_bytes=1000000" in proc.stderr
    assert [r.id for r in read_cache(output)] == ["ex002"]
    # Two trickled attempts of 1 s each (plus a short backoff), not the ~20 s a reply takes.
    assert elapsed_in_requests < 3.0 and time.monotonic() - start < 60
    assert sum(r.fault == "huge" for r in server.log) == 1  # a flood is not asked for again


def test_a_reply_with_an_unpaired_surrogate_is_stored_replaced_and_counted(tmp_path):
    inputs, cache = tmp_path / "in.jsonl", tmp_path / "cache.jsonl"
    ts.write_inputs(inputs, 3)
    examples = read_examples(inputs)
    config = AnnotateConfig(
        template=parse_template(ts.PROMPT), teacher="scripted", num_samples=2, concurrency=2, progress=False
    )
    with ScriptedOpenAIServer(ts.teacher, faults=by_item({1: "surrogate"})) as server:
        backend = OpenAIHttpBackend(HttpBackendConfig(base_url=server.base_url, model="scripted", timeout=5))
        with CacheWriter(cache) as writer:
            summary = run_annotation(
                examples,
                backend,
                writer,
                config,
                parse=functools.partial(parsers.parse_completion, "svamp"),
                labels_match=functools.partial(parsers.labels_match, "svamp"),
            )
    assert summary.complete and summary.written == 3 and summary.replaced_code_points == 2
    assert "replies held 2 unpaired surrogate code points" in summary.format()
    records = {r.id: r for r in read_cache(cache)}  # the whole file reads back
    samples = records["ex001"].samples
    assert [s.completion[0] for s in samples] == ["\ufffd", "\ufffd"]
    assert all(s.label == "(4 + 12)" for s in samples)  # parsed after the replacement
    assert summary.to_json()["replaced_code_points"] == 2


def test_an_output_that_is_an_input_the_other_output_or_a_runs_file_is_refused_before_any_request(tmp_path):
    inputs, cache = tmp_path / "in.jsonl", tmp_path / "cache.jsonl"
    ts.write_inputs(inputs, 3)
    prompt = pathlib.Path(ts.write_prompt(tmp_path / "prompt.txt"))
    with ScriptedOpenAIServer(ts.teacher) as server:
        assert annotate(server.base_url, inputs, cache, prompt).returncode == 0
        run = tmp_path / "run"
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"d_model": 8}))
        kept = {p: p.read_bytes() for p in (inputs, cache, prompt, run / "config.json")}
        for output, extra, expected in [
            (inputs, (), f"--output={inputs} is --input ({inputs}), which this command reads"),
            (prompt, (), f"--output={prompt} is --prompt ({prompt}), which this command reads"),
            (cache, (f"--summary_json={cache}", "--overwrite"), f"--summary_json={cache} is also --output"),
            (run / "config.json", (), f"--output={run / 'config.json'} would be a file of the checkpoint {run}"),
            (tmp_path / "c2.jsonl", (f"--summary_json={inputs}", "--overwrite"), f"--summary_json={inputs} is --input"),
        ]:
            log = len(server.log)
            proc = annotate(server.base_url, inputs, output, prompt, *extra)
            assert len(server.log) == log  # nothing was paid for
            assert_one_line_error(proc, expected)
    assert {p: p.read_bytes() for p in kept} == kept and not (tmp_path / "c2.jsonl").exists()


def test_an_earlier_summary_is_replaced_only_with_overwrite(tmp_path):
    inputs, cache, summary = tmp_path / "in.jsonl", tmp_path / "cache.jsonl", tmp_path / "summary.json"
    ts.write_inputs(inputs, 3)
    prompt = ts.write_prompt(tmp_path / "prompt.txt")
    with ScriptedOpenAIServer(ts.teacher) as server:
        assert annotate(server.base_url, inputs, cache, prompt, f"--summary_json={summary}").returncode == 0
        first = summary.read_text()
        assert json.loads(first)["written"] == 3
        ts.write_inputs(inputs, 5)  # two more examples: a rerun would write them
        proc = annotate(server.base_url, inputs, cache, prompt, f"--summary_json={summary}")
        assert_one_line_error(proc, f"--summary_json={summary} already holds a result", "pass --overwrite")
        assert summary.read_text() == first and len(read_cache(cache)) == 3 and len(server.log) == 3
        proc = annotate(server.base_url, inputs, cache, prompt, f"--summary_json={summary}", "--overwrite")
        assert proc.returncode == 0, proc.stderr[-3000:]
    second = json.loads(summary.read_text())
    assert second["written"] == 2 and second["skipped"] == 3 and len(read_cache(cache)) == 5


@pytest.mark.parametrize(
    "flag, said",
    [
        ("--temperature=nan", "--temperature must be a finite number, got nan"),
        ("--temperature=-0.5", "--temperature must be >= 0, got -0.5"),
        ("--max_tokens=0", "--max_tokens must be a positive integer, got 0"),
        ("--timeout=nan", "--timeout must be a finite number, got nan"),
        ("--timeout=inf", "--timeout must be a finite number, got inf"),
        ("--timeout=0", "--timeout must be > 0, got 0.0"),
        ("--max_backoff=nan", "--max_backoff must be a finite number"),
        ("--rate_limit=-1", "--rate_limit must be >= 0"),
        ("--min_vote_share=nan", "--min_vote_share must be a finite number"),
        ("--num_samples=0", "--num_samples must be a positive integer"),
        ("--concurrency=-2", "--concurrency must be a positive integer"),
        ("--max_retries=-1", "--max_retries must be an integer >= 0"),
        ("--student_batch_wait=nan", "--student_batch_wait must be a finite number"),
    ],
)
def test_every_numeric_flag_is_checked_before_any_request_or_write(tmp_path, flag, said):
    inputs, output = tmp_path / "in.jsonl", tmp_path / "cache.jsonl"
    inputs.write_bytes(GOOD + b"\n")
    prompt = ts.write_prompt(tmp_path / "prompt.txt")
    with ScriptedOpenAIServer(ts.teacher) as server:
        proc = annotate(server.base_url, inputs, output, prompt, flag)
        assert not server.log  # nothing was paid for
    assert_one_line_error(proc, said)
    assert not output.exists()


def test_the_library_configs_refuse_numbers_that_are_not_finite():
    nan = float("nan")
    with pytest.raises(ValueError, match="timeout must be a finite number > 0, got nan"):
        HttpBackendConfig(base_url="http://localhost:1/v1", model="m", timeout=nan)
    with pytest.raises(ValueError, match="rate_limit must be > 0"):
        HttpBackendConfig(base_url="http://localhost:1/v1", model="m", rate_limit=float("inf"))
    template = parse_template("{{input}}")
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0, got nan"):
        AnnotateConfig(template=template, teacher="t", temperature=nan)
    with pytest.raises(ValueError, match="max_tokens must be >= 1, got 0"):
        AnnotateConfig(template=template, teacher="t", max_tokens=0)


def test_every_numeric_flag_of_annotate_has_a_rule():
    """A numeric flag added later is checked too (listed in its own process: annotate's flags)."""
    script = (
        "import json; from absl import flags; import dss_jax.annotate as a; "
        "numeric = [n for n, f in flags.FLAGS._flags().items() if f.name == n "
        "and flags.FLAGS.find_module_defining_flag(n) == a.__name__ "
        "and isinstance(f.parser, (flags.IntegerParser, flags.FloatParser))]; "
        "print(json.dumps([sorted(numeric), sorted(a.NUMERIC_FLAGS)]))"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    numeric, ruled = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(numeric) >= 15 and numeric == ruled


def test_https_to_a_plain_http_server_stops_at_once_instead_of_retrying(tmp_path):
    """TLS to a server that does not speak it failed every attempt of every example
    (420 retries for 60 examples), each one a connection error worth retrying."""
    inputs, output = tmp_path / "in.jsonl", tmp_path / "cache.jsonl"
    inputs.write_text("".join(json.dumps(ts.example(i)) + "\n" for i in range(6)))
    prompt = ts.write_prompt(tmp_path / "prompt.txt")
    with ScriptedOpenAIServer(ts.teacher) as server:
        https = server.base_url.replace("http://", "https://")
        start = time.monotonic()
        proc = annotate(https, inputs, output, prompt, "--max_retries=6", "--concurrency=1")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "STOPPED by a fatal error: TLS with https://127.0.0.1:" in proc.stderr
    assert "does not speak TLS" in proc.stderr and "use http://" in proc.stderr
    assert time.monotonic() - start < 60
    assert not output.exists() or output.read_text() == ""
