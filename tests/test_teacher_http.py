"""The OpenAI-compatible HTTP backend against a real HTTP server on loopback."""

import base64
import email.utils
import json
import time
import urllib.parse

import pytest

from dss_jax.teacher.backend import FatalBackendError, RequestFailed, TeacherBackend
from dss_jax.teacher.fake_server import ScriptedOpenAIServer
from dss_jax.teacher.http_backend import HttpBackendConfig, OpenAIHttpBackend, parse_retry_after


def echo_teacher(prompt, index):
    return f"answer {index} to [{prompt[-12:]}]\n\nQ: more"


def backend_for(server, **overrides):
    config = dict(
        base_url=server.base_url, model="m", timeout=0.5, max_retries=3, initial_backoff=0.01, max_backoff=0.05
    )
    config.update(overrides)
    return OpenAIHttpBackend(HttpBackendConfig(**config))


def only_first(fault):
    return lambda prompt, attempt: fault if attempt == 0 else None


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_n_samples_stop_sequences_and_usage(api):
    with ScriptedOpenAIServer(echo_teacher) as server:
        backend = backend_for(server, api=api)
        assert isinstance(backend, TeacherBackend)
        out = backend.complete("the prompt", 3, 0.7, max_tokens=50, stop=["\n\nQ:"], system="sys")
        assert len(out) == 3 and all(c.finish_reason == "stop" for c in out)
        assert [c.text.split(" to ")[0] for c in out] == ["answer 0", "answer 1", "answer 2"]
        (req,) = server.log
        assert req.path == ("/v1/chat/completions" if api == "chat" else "/v1/completions")
        assert req.body["n"] == 3 and req.body["temperature"] == 0.7 and req.body["max_tokens"] == 50
        assert req.body["stop"] == ["\n\nQ:"] and req.body["model"] == "m"
        if api == "chat":
            assert req.body["messages"] == [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "the prompt"},
            ]
        else:
            assert req.body["prompt"] == "sys\n\nthe prompt"
        usage = backend.usage
        assert usage.requests == 1 and usage.retries == 0
        assert usage.prompt_tokens == len(req.prompt.split())
        assert usage.completion_tokens == sum(len(c.text.split()) for c in out)


def test_server_that_ignores_n_is_asked_again_until_n_samples():
    with ScriptedOpenAIServer(echo_teacher, max_choices=1) as server:
        out = backend_for(server).complete("p", 3, 1.0, max_tokens=8)
        assert len(out) == 3 and len(server.log) == 3
        assert [r.body["n"] for r in server.log] == [3, 2, 1]
    with ScriptedOpenAIServer(echo_teacher) as server:
        backend_for(server, samples_per_request=2).complete("p", 5, 1.0, max_tokens=8)
        assert [r.body["n"] for r in server.log] == [2, 2, 1]


@pytest.mark.parametrize("fault", ["500", "503", "drop", "drop_mid_body", "slow", "malformed_json", "no_choices"])
def test_transient_faults_are_retried(fault):
    with ScriptedOpenAIServer(echo_teacher, faults=only_first(fault), slow_seconds=1.5) as server:
        backend = backend_for(server)
        out = backend.complete("p", 2, 1.0, max_tokens=8)
        assert len(out) == 2
        assert [r.fault for r in server.log] == [fault, None]
        assert backend.usage.requests == 2 and backend.usage.retries == 1


def test_429_honours_retry_after():
    with ScriptedOpenAIServer(echo_teacher, faults=only_first("429"), retry_after="0.4") as server:
        backend_for(server).complete("p", 1, 0.0, max_tokens=8)
        first, second = server.log
        # The jittered backoff alone is at most 0.01 s here; the gap comes from Retry-After.
        assert second.time - first.time >= 0.4


def test_retries_are_bounded_and_reported():
    with ScriptedOpenAIServer(echo_teacher, faults=lambda p, a: "500") as server:
        backend = backend_for(server, max_retries=2)
        with pytest.raises(RequestFailed, match="gave up after 3 attempts; last error: HTTP 500"):
            backend.complete("p", 1, 0.0, max_tokens=8)
        assert len(server.log) == 3 and backend.usage.retries == 2


def test_backoff_grows_exponentially_with_jitter():
    with ScriptedOpenAIServer(echo_teacher) as server:
        backend = backend_for(server, initial_backoff=0.1, max_backoff=0.5)
        for retry, cap in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.5), (9, 0.5)]:
            delays = [backend._backoff(retry, None) for _ in range(200)]
            assert 0 <= min(delays) and max(delays) <= cap and max(delays) > cap / 2
        assert backend._backoff(0, 3.0) == 3.0  # Retry-After wins over the (smaller) backoff


def test_fatal_and_per_request_client_errors():
    with ScriptedOpenAIServer(echo_teacher, api_key="right") as server:
        with pytest.raises(FatalBackendError, match="HTTP 401"):
            backend_for(server, api_key="wrong").complete("p", 1, 0.0, max_tokens=8)
        assert len(server.log) == 1  # not retried
    with ScriptedOpenAIServer(echo_teacher) as server:
        with pytest.raises(FatalBackendError, match=r"HTTP 404.*base_url usually ends in /v1"):
            backend_for(server, base_url=server.base_url[: -len("/v1")]).complete("p", 1, 0.0, max_tokens=8)


def test_400_fails_only_the_request_and_never_shows_the_key():
    secret = "sk-test-0123456789abcdef"
    with ScriptedOpenAIServer(echo_teacher, faults=lambda p, a: "400" if p == "bad" else None) as server:
        backend = backend_for(server, api_key=secret)
        with pytest.raises(RequestFailed, match="HTTP 400") as info:
            backend.complete("bad", 1, 0.0, max_tokens=8)
        assert secret not in str(info.value) and "***" in str(info.value)
        assert server.log[0].authorization == f"Bearer {secret}"
        assert len(backend.complete("good", 1, 0.0, max_tokens=8)) == 1
        assert secret not in repr(backend.config)


def test_rate_limit_spaces_requests_across_threads():
    import concurrent.futures

    with ScriptedOpenAIServer(echo_teacher) as server:
        backend = backend_for(server, rate_limit=20.0)
        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: backend.complete(f"p{i}", 1, 0.0, max_tokens=8), range(12)))
        assert time.monotonic() - start >= 11 / 20 - 0.02
        times = sorted(r.time for r in server.log)
        # Sent 0.05 s apart, so any 5 in a row arrive over 0.2 s less the scheduling delay of
        # one of them (up to 0.1 s on a loaded machine); unlimited, 8 threads send at once.
        assert min(b - a for a, b in zip(times, times[4:])) >= 0.1


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("-2") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = time.time()
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"api": "edits"}, "api must be one of"),
        ({"base_url": "localhost:8000/v1"}, "base_url must look like"),
        ({"timeout": 0}, "timeout must be a finite number > 0"),
        ({"rate_limit": -1.0}, "rate_limit must be > 0"),
        ({"max_retries": -1}, "max_retries must be >= 0"),
        ({"max_reply_bytes": 0}, "max_reply_bytes must be >= 1"),
    ],
)
def test_config_validation(overrides, message):
    config = dict(base_url="http://127.0.0.1:1/v1", model="m")
    config.update(overrides)
    with pytest.raises(ValueError, match=message):
        HttpBackendConfig(**config)


def always(fault):
    return lambda prompt, attempt: fault


def test_a_trickling_server_is_cut_at_a_deadline_for_the_whole_request():
    # One byte every 50 ms: each read makes progress, so a per-read timeout never fires
    # (the reply would take ~20 s); the deadline ends each attempt after 1 s.
    with ScriptedOpenAIServer(echo_teacher, faults=always("trickle"), trickle_seconds=0.05) as server:
        backend = backend_for(server, timeout=1.0, max_retries=1)
        start = time.monotonic()
        with pytest.raises(RequestFailed, match=r"gave up after 2 attempts.*within --timeout=1s"):
            backend.complete("p", 1, 0.0, max_tokens=5)
        assert time.monotonic() - start < 3.0
        assert len(server.log) == 2


def test_after_a_trickled_attempt_the_retry_succeeds():
    with ScriptedOpenAIServer(echo_teacher, faults=only_first("trickle"), trickle_seconds=0.05) as server:
        backend = backend_for(server, timeout=1.0, max_retries=1)
        start = time.monotonic()
        (out,) = backend.complete("the prompt", 1, 0.0, max_tokens=5)
        assert out.text.startswith("answer 0") and time.monotonic() - start < 2.5
        assert backend.usage.retries == 1


@pytest.mark.parametrize("fault", ["huge", "huge_unannounced"])
def test_a_reply_over_the_size_cap_fails_its_request_without_retries(fault):
    with ScriptedOpenAIServer(echo_teacher, faults=always(fault), huge_bytes=3 << 20) as server:
        backend = backend_for(server, max_reply_bytes=1 << 20, timeout=5.0)
        with pytest.raises(RequestFailed, match=r"larger than --max_reply_bytes=1048576.*raise the cap"):
            backend.complete("p", 1, 0.0, max_tokens=5)
        assert len(server.log) == 1  # the same request would get the same flood: not repeated


def test_a_large_reply_under_the_cap_is_read_whole():
    with ScriptedOpenAIServer(echo_teacher, faults=always("huge_unannounced"), huge_bytes=200_000) as server:
        (out,) = backend_for(server, max_reply_bytes=1 << 20).complete("p", 1, 0.0, max_tokens=5)
        assert out.text == "x" * 200_000


def test_a_reply_nested_too_deeply_is_malformed_and_retried():
    with ScriptedOpenAIServer(echo_teacher, faults=only_first("deep_json")) as server:
        (out,) = backend_for(server).complete("the prompt", 1, 0.0, max_tokens=5)
        assert out.text.startswith("answer 0")
        assert [r.fault for r in server.log] == ["deep_json", None]


# -- credentials: sent where they belong, never shown --------------------------------


def forms_of(secret):
    """Ways a server may echo `secret`: as sent, JSON-escaped, URL-encoded (UTF-8 or latin-1), base64."""
    forms = {
        secret,
        json.dumps(secret)[1:-1],
        urllib.parse.quote(secret, safe=""),
        base64.b64encode(secret.encode()).decode(),
    }
    if secret == secret.encode("latin-1", "ignore").decode("latin-1"):
        forms.add(urllib.parse.quote(secret.encode("latin-1"), safe=""))
    return forms


def assert_never_shown(text, *secrets):
    for secret in secrets:
        for form in forms_of(secret):
            assert form not in text, (form, text)
        for i in range(len(secret) - 5):  # nor any part of it that would give most of it away
            assert secret[i : i + 6] not in text, (secret[i : i + 6], text)


def test_a_key_echoed_across_the_snippets_cut_is_redacted():
    # The 400 body is cut to 300 bytes for the message; a key the server echoes across
    # byte 300 must not survive the cut in part (it was redacted only after the cut).
    secret = "sk-live-" + "0123456789abcdefghij" * 2
    head = len('{"error": {"message": "') + len("bad request (authorization: Bearer ")
    for inside in (1, 8, 20, len(secret) - 1):  # where the cut falls in the key
        with ScriptedOpenAIServer(echo_teacher, faults=always("400"), echo_padding=300 - head - inside) as server:
            with pytest.raises(RequestFailed, match="HTTP 400") as info:
                backend_for(server, api_key=secret).complete("p", 1, 0.0, max_tokens=8)
            assert server.log[0].authorization == f"Bearer {secret}"
            assert_never_shown(str(info.value), secret)


@pytest.mark.parametrize("api_key", ["sk-plain-0123456789", "sk-é/ü+ß=-0123456789", "sk-a/b+c==d%41-0123"])
def test_a_key_is_never_shown_in_any_form_the_server_echoes(api_key):
    with ScriptedOpenAIServer(echo_teacher, faults=always("400_echo")) as server:
        backend = backend_for(server, api_key=api_key)
        with pytest.raises(RequestFailed, match="HTTP 400") as info:
            backend.complete("p", 1, 0.0, max_tokens=8)
        assert server.log[0].authorization == f"Bearer {api_key}"
    assert_never_shown(str(info.value), api_key)
    assert "***" in str(info.value)


def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_shown():
    with ScriptedOpenAIServer(echo_teacher, faults=lambda p, a: "400_echo" if p == "bad" else None) as server:
        url = server.base_url.replace("http://", "http://alice:PASS%2Fword99@")
        shown_url = f"http://***@127.0.0.1:{server.port}/v1/chat/completions"
        backend = backend_for(server, base_url=url)
        assert len(backend.complete("good", 1, 0.0, max_tokens=8)) == 1
        with pytest.raises(RequestFailed, match="HTTP 400") as info:
            backend.complete("bad", 1, 0.0, max_tokens=8)
        basic = base64.b64encode(b"alice:PASS/word99").decode()
        assert {r.authorization for r in server.log} == {f"Basic {basic}"}
    shown = str(info.value) + repr(backend.config) + backend._url
    assert_never_shown(shown, "PASS/word99", "PASS%2Fword99", basic)
    assert shown_url in str(info.value)


def test_a_key_in_the_urls_query_is_sent_and_never_shown():
    secret = "q-secret-0123456789"
    with ScriptedOpenAIServer(echo_teacher, faults=lambda p, a: "400_echo" if p == "bad" else None) as server:
        backend = backend_for(server, base_url=f"{server.base_url}?api-version=2024-02-01&api_key={secret}")
        backend.complete("good", 1, 0.0, max_tokens=8)
        with pytest.raises(RequestFailed, match="HTTP 400") as info:
            backend.complete("bad", 1, 0.0, max_tokens=8)
        assert [r.path for r in server.log] == [f"/v1/chat/completions?api-version=2024-02-01&api_key={secret}"] * 2
    assert_never_shown(str(info.value) + repr(backend.config), secret)
    assert "?api-version=2024-02-01&api_key=***" in str(info.value)


@pytest.mark.parametrize(
    "api_key, problem",
    [
        ("sk-secret-0123\r\n", "a carriage return at its end"),
        ("sk-secret-0123\n", "a line break at its end"),
        ("sk-secret\r\n-0123", "a carriage return at character 10"),
        ("sk-secret-0123\x00", "a control character (U+0000)"),
        ("sk-secret-€-0123", "a character outside latin-1 (U+20AC)"),
    ],
)
def test_a_key_that_cannot_go_in_a_header_is_refused_without_showing_it(api_key, problem):
    # http.client would refuse it in the first request, quoting it in a traceback.
    with pytest.raises(ValueError) as info:
        HttpBackendConfig(base_url="http://127.0.0.1:1/v1", model="m", api_key=api_key, api_key_source="$MY_KEY")
    message = str(info.value)
    assert message.startswith(f"$MY_KEY holds {problem}") and "which cannot go in an HTTP header" in message
    assert "secret" not in message and "\n" not in message


@pytest.mark.parametrize(
    "base_url",
    ["http://alice:pass word@127.0.0.1:1/v1", "http://alice:pass\nword@127.0.0.1:1/v1", "http://alice:pässword@h/v1",
     "http://alice:pass#word@127.0.0.1:1/v1", "http://alice:password@127.0.0.1:port/v1", "ftp://alice:password@h/v1"],
)  # fmt: skip
def test_a_base_url_no_request_could_go_to_is_refused_without_showing_its_password(base_url):
    with pytest.raises(ValueError, match="base_url") as info:
        HttpBackendConfig(base_url=base_url, model="m")
    assert "pass" not in str(info.value).replace("password or key", "")
    assert "word" not in str(info.value).replace("password or key", "")


@pytest.mark.parametrize(
    "credential",
    [{"api_key": "sk-0123456789"}, {"base_url": "http://alice:pw@10.1.2.3:8000/v1"},
     {"base_url": "http://10.1.2.3:8000/v1?key=0123456789"}],
)  # fmt: skip
def test_a_key_over_plain_http_to_another_machine_is_refused_unless_allowed(credential):
    config = {"base_url": "http://10.1.2.3:8000/v1", "model": "m", "api_key_source": "$OPENAI_API_KEY", **credential}
    with pytest.raises(ValueError, match=r"would go in clear text over http:// to 10\.1\.2\.3: use https://, "
                       r"pass --allow_key_over_http") as info:  # fmt: skip
        HttpBackendConfig(**config)
    assert "0123456789" not in str(info.value) and ":pw@" not in str(info.value)
    HttpBackendConfig(**config, allow_key_over_http=True)
    HttpBackendConfig(**{**config, "base_url": config["base_url"].replace("http://", "https://")})
    for loopback in ("127.0.0.1:8000", "127.8.9.1", "localhost:8000", "LOCALHOST", "[::1]:8000"):
        HttpBackendConfig(**{**config, "base_url": config["base_url"].replace("10.1.2.3:8000", loopback)})
    HttpBackendConfig(base_url="http://10.1.2.3:8000/v1", model="m")  # no key: nothing to protect


def test_a_key_and_url_credentials_together_are_refused():
    with pytest.raises(ValueError, match="both would be the Authorization header; keep one"):
        HttpBackendConfig(base_url="http://alice:pw@127.0.0.1:1/v1", model="m", api_key="sk-0123456789")
