"""`python -m dss_jax.teacher.fake_server`: the dry-run teacher for annotate, as a binary.

The server runs as a subprocess, as a user starts it: the URL is read from the one line
it prints, annotate is pointed at it, and SIGTERM / Ctrl-C must stop it with status 0.
"""

import json
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import teacher_script as ts

from conftest import REPO_ROOT
from dss_jax.data import parsers
from dss_jax.data.cache import read_cache
from dss_jax.teacher import fake_server
from dss_jax.teacher.prompts import resolve_template

SERVER = [sys.executable, "-m", "dss_jax.teacher.fake_server"]


def run_cli(cmd, timeout=60):
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def start_server():
    """start_server(*flags) -> (process, base_url); every process is ended after the test."""
    started = []

    def start(*flags):
        # Ctrl-C's default disposition, as in a terminal (a suite run in the background has SIGINT ignored).
        proc = subprocess.Popen(
            SERVER + list(flags),
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        started.append(proc)
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the server printed no URL within 30 s"
        line = proc.stdout.readline()
        match = re.search(r"--base_url=(http://127\.0\.0\.1:\d+/v1) ", line)
        assert match and line.startswith("fake_server: "), line
        return proc, match.group(1)

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def stop(proc, signum):
    """Sends `signum`; (exit status, seconds it took to exit, stderr)."""
    start = time.monotonic()
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=10)
    return proc.returncode, time.monotonic() - start, stderr


def post(base_url, prompt):
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}]}).encode()
    request = urllib.request.Request(
        base_url + "/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, dict(reply.headers), json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def test_dry_run_annotate_against_the_binary_then_sigterm(tmp_path, start_server):
    proc, base_url = start_server()  # --port=0 by default: a free port, printed
    inputs, cache = tmp_path / "in.jsonl", tmp_path / "cache.jsonl"
    ts.write_inputs(inputs, 3)
    out = run_cli(
        [
            sys.executable,
            "-m",
            "dss_jax.annotate",
            f"--input={inputs}",
            f"--output={cache}",
            "--dataset_family=svamp",
            "--model=dry-run",
            f"--base_url={base_url}",
            "--noprogress",
        ]
    )
    assert out.returncode == 0, out.stderr
    assert "done: every input example is in the cache" in out.stderr
    records = read_cache(cache)
    assert sorted(r.id for r in records) == ["ex000", "ex001", "ex002"]  # in the order they finished
    for r in records:
        (sample,) = r.samples  # parsed by the svamp parser, cut at the built-in prompt's stop
        assert sample.label == "(1 + 1)" and sample.rationale.startswith("Dry run: scripted sample 0")
        assert sample.meta["finish_reason"] == "stop"
    rc, seconds, stderr = stop(proc, signal.SIGTERM)
    assert rc == 0 and seconds < 3, (rc, seconds, stderr)
    assert stderr.strip().splitlines()[-1] == "fake_server: stopped after 3 requests"
    assert "Traceback" not in stderr


def test_a_selected_fault_is_served_then_ctrl_c_stops_it(start_server):
    proc, base_url = start_server("--fault=429", "--fault_attempts=1", "--retry_after=0")
    status, headers, body = post(base_url, "Item 1: add 4 and 12.")
    assert status == 429 and headers["Retry-After"] == "0" and body["error"]["message"] == "rate limited"
    status, _, body = post(base_url, "Item 1: add 4 and 12.")  # the retry: past --fault_attempts
    assert status == 200 and "The answer is (1 + 1)." in body["choices"][0]["message"]["content"]
    status, _, _ = post(base_url, "Item 2: add 5 and 14.")  # a new prompt's first attempt
    assert status == 429
    rc, seconds, stderr = stop(proc, signal.SIGINT)
    assert rc == 0 and seconds < 3, (rc, seconds, stderr)
    assert stderr.strip().splitlines()[-1] == "fake_server: stopped after 3 requests (2 429)"
    assert "Traceback" not in stderr


def test_fault_rate_picks_the_same_requests_every_time():
    prompts = [f"prompt {i}" for i in range(2000)]
    plan = fake_server.fault_plan("503", rate=0.3)
    hit = [p for p in prompts if plan(p, 0) == "503"]
    assert 0.25 < len(hit) / len(prompts) < 0.35
    assert hit == [p for p in prompts if fake_server.fault_plan("503", rate=0.3)(p, 0)]  # a rerun: the same
    # A retry is drawn anew (else a prompt hit once would fail every retry), unless past `attempts`.
    assert sum(plan(p, 1) == "503" for p in hit) < len(hit) / 2
    first_only = fake_server.fault_plan("500", rate=1.0, attempts=1)
    assert [first_only("p", a) for a in range(3)] == ["500", None, None]
    assert fake_server.fault_plan(None)("p", 0) is None
    with pytest.raises(ValueError, match="unknown fault 'teapot'"):
        fake_server.fault_plan("teapot")


@pytest.mark.parametrize("family", parsers.FAMILIES)
def test_the_dry_run_reply_parses_with_each_familys_builtin_prompt(family):
    template = resolve_template(None, family)
    text = fake_server.dry_run_teacher(family)(template.render({"input": "a question"}), 0)
    cut = min(text.find(s) for s in template.stop if s in text)  # what the server sends back
    parsed = parsers.parse_completion(family, text[:cut])
    assert parsed.ok and parsed.rationale.startswith("Dry run"), parsed


def test_usage_errors_are_one_line_before_the_port_opens():
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        cases = [
            (["--port=70000"], "fake_server: error: --port=70000: a port is 0 to 65535"),
            (["--fault_rate=0.5"], "fake_server: error: --fault_rate has no effect without --fault=NAME"),
            ([f"--port={busy.getsockname()[1]}"], "pick another port, or --port=0 for a free one"),
        ]
        for flags, message in cases:
            out = run_cli(SERVER + flags, timeout=30)
            last = out.stderr.strip().splitlines()[-1]
            assert out.returncode == 2 and last.startswith("fake_server: error: ") and message in last, out.stderr
            assert "Traceback" not in out.stderr and out.stdout == ""
    finally:
        busy.close()
