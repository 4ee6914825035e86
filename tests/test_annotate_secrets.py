"""`annotate` and its credentials: a key or password reaches the server it is meant for,
in a header it can go in, and never the terminal, the summary or the cache."""

import base64
import json
import os
import subprocess
import sys

import pytest
import teacher_script as ts

from conftest import REPO_ROOT
from dss_jax.teacher.fake_server import ScriptedOpenAIServer

FLAGS = ["--max_retries=0", "--timeout=5", "--noprogress", "--model=scripted", "--dataset_family=svamp"]


def annotate(tmp_path, base_url, *extra, env=None):
    """Runs the binary on two examples; its environment is this one's without OPENAI_API_KEY, plus `env`."""
    inputs = tmp_path / "in.jsonl"
    ts.write_inputs(inputs, 2)
    prompt = ts.write_prompt(tmp_path / "prompt.txt")
    cmd = [sys.executable, "-m", "dss_jax.annotate", f"--input={inputs}", f"--output={tmp_path / 'cache.jsonl'}",
           f"--prompt={prompt}", f"--base_url={base_url}", f"--summary_json={tmp_path / 'summary.json'}",
           *FLAGS, *extra]  # fmt: skip
    environ = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    return subprocess.run(
        cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env={**environ, **(env or {})}
    )


def everything_written(tmp_path, proc):
    written = [proc.stdout, proc.stderr]
    written += [p.read_text(errors="replace") for p in tmp_path.iterdir() if p.name in ("summary.json", "cache.jsonl")]
    return "\n".join(written)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("annotate: error: "), proc.stderr[-3000:]
    assert all(f in lines[0] for f in fragments), lines[0]


def never_shown(text, secret):
    return all(secret[i : i + 6] not in text for i in range(len(secret) - 5))


@pytest.mark.parametrize(
    "where, key, message",
    [
        ("env", "sk-secret-0123\r", "$MY_KEY (--api_key_env) holds a carriage return at its end"),
        ("env", "sk-secret-0123\r\n", "$MY_KEY (--api_key_env) holds a carriage return at its end"),
        ("env", "sk-secret\n-0123", "$MY_KEY (--api_key_env) holds a line break at character 10"),
        ("env", "sk-secret-€-0123", "$MY_KEY (--api_key_env) holds a character outside latin-1 (U+20AC)"),
        ("file", "sk-secret-0123\nsk-secret-4567\n", "holds a line break at character 15 of the key"),
        ("file", "sk-secret-\u20ac-0123\r\n", "holds a character outside latin-1 (U+20AC) at character 11 of the key"),
        ("file", "\r\n", "is empty: put the API key in it"),
    ],
)
def test_a_key_that_cannot_go_in_a_header_is_one_line_naming_where_it_came_from(tmp_path, where, key, message):
    # http.client used to refuse it in the first request, in a 46-line traceback quoting it.
    if where == "env":
        flag, env = "--api_key_env=MY_KEY", {"MY_KEY": key}
    else:
        key_file = tmp_path / "key.txt"
        key_file.write_bytes(key.encode("utf-8"))
        flag, env, message = f"--api_key_file={key_file}", {}, f"--api_key_file={key_file} {message}"
    with ScriptedOpenAIServer(ts.teacher) as server:
        proc = annotate(tmp_path, server.base_url, flag, env=env)
        assert not server.log  # refused before any request
    assert_one_line_error(proc, message, "HTTP header" if "empty" not in message else "")
    assert never_shown(proc.stderr, "sk-secret-0123") and "Traceback" not in proc.stderr
    assert not (tmp_path / "cache.jsonl").exists() and not (tmp_path / "summary.json").exists()


def test_a_key_files_final_line_end_and_bom_are_dropped(tmp_path):
    key_file = tmp_path / "key.txt"
    key_file.write_bytes("\ufeffsk-from-a-file-0123\r\n".encode("utf-8"))  # as Notepad saves it
    with ScriptedOpenAIServer(ts.teacher, api_key="sk-from-a-file-0123") as server:
        proc = annotate(tmp_path, server.base_url, f"--api_key_file={key_file}")
        assert {r.authorization for r in server.log} == {"Bearer sk-from-a-file-0123"}
    assert proc.returncode == 0, proc.stderr[-3000:]
    (tmp_path / "again").mkdir()  # not over the first run's outputs, which need --overwrite
    both = annotate(tmp_path / "again", "http://127.0.0.1:9/v1", f"--api_key_file={key_file}", "--api_key_env=MY_KEY")
    assert_one_line_error(both, "give one of --api_key_env and --api_key_file")


def test_a_key_echoed_across_the_cut_of_an_error_never_reaches_the_summary(tmp_path):
    key = "sk-live-" + "0123456789abcdefghij" * 2
    head = len('{"error": {"message": "') + len("bad request (authorization: Bearer ")
    with ScriptedOpenAIServer(ts.teacher, faults=lambda p, a: "400", echo_padding=300 - head - 20) as server:
        proc = annotate(tmp_path, server.base_url, "--api_key_env=MY_KEY", "--verbosity=1", env={"MY_KEY": key})
        assert {r.authorization for r in server.log} == {f"Bearer {key}"}
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert json.loads((tmp_path / "summary.json").read_text())["failed_ids"] == ["ex000", "ex001"]
    assert never_shown(everything_written(tmp_path, proc), key)


def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_shown(tmp_path):
    # They were printed four times and written to the summary, and never sent.
    with ScriptedOpenAIServer(ts.teacher, faults=lambda p, a: "400_echo") as server:
        url = server.base_url.replace("http://", "http://alice:PASSWORD99@") + "?api_key=q-secret-0123"
        shown = f"http://***@127.0.0.1:{server.port}/v1?api_key=***"
        proc = annotate(tmp_path, url, "--verbosity=1")
        assert {r.authorization for r in server.log} == {"Basic " + base64.b64encode(b"alice:PASSWORD99").decode()}
        assert {r.path for r in server.log} == {"/v1/chat/completions?api_key=q-secret-0123"}  # kept, not dropped
    assert proc.returncode == 1, proc.stderr[-3000:]
    written = everything_written(tmp_path, proc)
    assert shown in proc.stderr  # the run's first line
    for secret in ("PASSWORD99", "q-secret-0123", base64.b64encode(b"alice:PASSWORD99").decode()):
        assert never_shown(written, secret), secret


def test_a_key_over_plain_http_to_another_machine_is_refused_unless_allowed(tmp_path):
    # 0.0.0.0 is not a loopback address, yet Linux connects it to this machine, where the
    # server listens on 127.0.0.1: the request of an allowed run arrives without leaving it.
    key = {"OPENAI_API_KEY": "sk-default-0123"}  # set in the environment, not asked for
    with ScriptedOpenAIServer(ts.teacher) as server:
        other = f"http://0.0.0.0:{server.port}/v1"
        refused = annotate(tmp_path, other, env=key)
        assert not server.log
        assert_one_line_error(
            refused, "$OPENAI_API_KEY would go in clear text over http:// to 0.0.0.0", "--allow_key_over_http"
        )
        assert never_shown(refused.stderr, "sk-default-0123")
        assert annotate(tmp_path, other, "--allow_key_over_http", env=key).returncode == 0
        assert {r.authorization for r in server.log} == {"Bearer sk-default-0123"}
        (tmp_path / "loopback").mkdir()
        assert annotate(tmp_path / "loopback", server.base_url, env=key).returncode == 0  # no flag needed
