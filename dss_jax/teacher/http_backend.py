"""A teacher behind any OpenAI-compatible HTTP server (vLLM, TGI, llama.cpp, hosted APIs).

Speaks `POST {base_url}/chat/completions` or `POST {base_url}/completions` with the
standard request and response bodies, using only the standard library (`http.client`,
one keep-alive connection per worker thread).

Robustness, because a long annotation run meets every kind of failure:
  - 429 (honouring `Retry-After`, seconds or an HTTP date), 408, 5xx, dropped or
    refused connections, timeouts, and 200 replies whose body is not the expected JSON
    are retried with exponential backoff and full jitter, up to `max_retries` times;
  - `timeout` is a deadline for a whole attempt (connect, send, every byte of the
    reply): a server that trickles bytes cannot hold a worker longer than that;
  - a reply larger than `max_reply_bytes` fails its prompt (RequestFailed) without
    being read further, so a runaway server cannot fill memory or the cache;
  - 401/403/404 are fatal (`FatalBackendError`): no other prompt would fare better; so
    is a TLS failure (https to a plain-HTTP server, an untrusted certificate);
  - other 4xx (e.g. a prompt over the context length) fail only that prompt;
  - a process-wide rate limit spaces attempts (retries included) evenly;
  - token usage from each reply's `usage` object is summed.
The API key is sent as `Authorization: Bearer ...`, a user and password in base_url as
`Authorization: Basic ...`; a base_url query is kept. No credential is ever shown, and
none goes over plain http to another machine unless `allow_key_over_http` (credentials.py).
"""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import http.client
import json
import logging
import math
import random
import socket
import ssl
import threading
import time
from typing import Any, Optional, Sequence

from dss_jax.teacher.backend import (
    Completion,
    FatalBackendError,
    RequestFailed,
    Usage,
    UsageCounter,
)
from dss_jax.teacher.credentials import Endpoint, Redactor, header_problem, parse_base_url

APIS = ("chat", "completions")
_RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
_FATAL_STATUS = frozenset({401, 403, 404})


@dataclasses.dataclass(frozen=True)
class HttpBackendConfig:
    base_url: str  # up to and including the API version, e.g. http://localhost:8000/v1 (never shown whole)
    model: str
    api: str = "chat"  # "chat" (/chat/completions) or "completions" (/completions)
    api_key: Optional[str] = dataclasses.field(default=None, repr=False)
    timeout: float = 120.0  # seconds one attempt may take in all: connect, send, the whole reply
    max_reply_bytes: int = 8 << 20  # a larger reply body fails the request
    max_retries: int = 6  # retries after the first attempt
    initial_backoff: float = 1.0  # seconds; the cap of the jittered wait doubles per retry
    max_backoff: float = 60.0
    max_retry_after: float = 600.0  # a larger Retry-After is clipped to this
    rate_limit: Optional[float] = None  # attempts per second over all threads; None: no limit
    samples_per_request: Optional[int] = None  # max `n` per request; None: all at once
    seed: Optional[int] = None  # passed to servers that support seeded sampling
    top_p: Optional[float] = None
    api_key_source: str = "the API key"  # where the key came from, for messages (e.g. $OPENAI_API_KEY)
    allow_key_over_http: bool = False  # send credentials over plain http to another machine

    def __post_init__(self):
        if self.api not in APIS:
            raise ValueError(f"api must be one of {APIS}, got {self.api!r}")
        endpoint = parse_base_url(self.base_url)
        self._check_credentials(endpoint)
        for name in ("timeout", "initial_backoff", "max_backoff", "max_retry_after"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        if self.max_reply_bytes < 1:
            raise ValueError(f"max_reply_bytes must be >= 1, got {self.max_reply_bytes}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.rate_limit is not None and not (math.isfinite(self.rate_limit) and self.rate_limit > 0):
            raise ValueError(f"rate_limit must be > 0 requests/s, got {self.rate_limit}")
        if self.samples_per_request is not None and self.samples_per_request < 1:
            raise ValueError(f"samples_per_request must be >= 1, got {self.samples_per_request}")

    def _check_credentials(self, endpoint: Endpoint) -> None:
        """Before any request: a key that http.client would refuse (quoting it in its error),
        two Authorization headers at once, or a credential in clear text to another machine."""
        if self.api_key:
            problem = header_problem(self.api_key)
            if problem:
                raise ValueError(
                    f"{self.api_key_source} holds {problem}, which cannot go in an HTTP header: set it to the key alone"
                )
            if endpoint.basic_auth is not None:
                raise ValueError(
                    f"--base_url carries a user name and {self.api_key_source} is set: both would be the "
                    "Authorization header; keep one (--api_key_env= sends no key)"
                )
        sent = [self.api_key_source] if self.api_key else []
        if endpoint.basic_auth is not None:
            sent.append("the user name and password in --base_url")
        if endpoint.query_credentials:
            sent.append("the key in --base_url's query")
        if sent and not endpoint.https and not endpoint.loopback and not self.allow_key_over_http:
            none = "send no key (--api_key_env=)" if self.api_key else "take them out of --base_url"
            raise ValueError(
                f"{' and '.join(sent)} would go in clear text over http:// to {endpoint.host}: use https://, "
                f"pass --allow_key_over_http to send it anyway (on a network you trust), or {none}"
            )

    def __repr__(self) -> str:
        # Written out because base_url may hold credentials; api_key is never shown.
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}
        shown["base_url"] = parse_base_url(self.base_url).display
        return f"HttpBackendConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


class RateLimiter:
    """Spaces calls to `acquire` at least 1/rate seconds apart, across threads."""

    def __init__(self, rate: Optional[float]):
        self._interval = 0.0 if rate is None else 1.0 / rate
        self._lock = threading.Lock()
        self._next = 0.0

    def acquire(self) -> None:
        if self._interval == 0.0:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self._interval
        if slot > now:
            time.sleep(slot - now)


class _MalformedResponse(ValueError):
    pass


class _ReplyTooLarge(Exception):
    pass


class _RetryableError(Exception):
    def __init__(self, message: str, retry_after: Optional[float] = None):
        super().__init__(message)
        self.retry_after = retry_after


class _DeadlineExceeded(Exception):
    pass


def _shut(sock: socket.socket, expired: threading.Event) -> None:
    """The request's deadline: ends the socket, so the read in progress returns at once."""
    expired.set()
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed: the request ended as the timer fired
        pass


_TRANSIENT_TLS_ERRORS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def _tls_reason(e: ssl.SSLError) -> str:
    return getattr(e, "verify_message", None) or getattr(e, "reason", None) or str(e)


def _tls_fix(e: ssl.SSLError) -> str:
    reason = str(getattr(e, "reason", "") or e).upper()
    if isinstance(e, ssl.SSLCertVerificationError):
        return (
            "the server's certificate is not trusted: give its CA with SSL_CERT_FILE=PATH, or check the host in "
            "--base_url"
        )
    if any(k in reason for k in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER")):
        return "the server does not speak TLS (a plain-HTTP server?): use http:// in --base_url"
    return "check that --base_url's port serves https, or use http:// for a plain-HTTP server"


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date); None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def _choice_text(api: str, choice: Any) -> Completion:
    if not isinstance(choice, dict):
        raise _MalformedResponse("a choice is not a JSON object")
    if api == "chat":
        message = choice.get("message")
        if not isinstance(message, dict):
            raise _MalformedResponse("a chat choice has no 'message' object")
        text = message.get("content")
        # A null content (a refusal, a tool call) is an answer without an answer phrase.
        text = "" if text is None else text
    else:
        text = choice.get("text")
    if not isinstance(text, str):
        raise _MalformedResponse("a choice's text is not a string")
    finish = choice.get("finish_reason")
    return Completion(text=text, finish_reason=finish if isinstance(finish, str) else None)


def parse_response(api: str, raw: bytes) -> tuple[list[Completion], Optional[dict]]:
    """Completions (in `index` order) and the usage object of a 200 reply body."""
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _MalformedResponse(f"reply is not JSON ({e})") from None
    except RecursionError:  # a worker thread must not die of a hostile reply
        raise _MalformedResponse("reply is JSON nested too deeply to read") from None
    if not isinstance(payload, dict):
        raise _MalformedResponse("reply is not a JSON object")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _MalformedResponse("reply has no 'choices'")
    if all(isinstance(c, dict) and isinstance(c.get("index"), int) for c in choices):
        choices = sorted(choices, key=lambda c: c["index"])
    completions = [_choice_text(api, c) for c in choices]
    usage = payload.get("usage")
    return completions, usage if isinstance(usage, dict) else None


class OpenAIHttpBackend:
    """`TeacherBackend` over an OpenAI-compatible server. Thread-safe."""

    def __init__(self, config: HttpBackendConfig, rng: Optional[random.Random] = None):
        self.config = config
        endpoint = parse_base_url(config.base_url)
        self._https = endpoint.https
        self._host = endpoint.host
        self._port = endpoint.port
        self._path = endpoint.path + ("/chat/completions" if config.api == "chat" else "/completions")
        self._target = self._path + (f"?{endpoint.query}" if endpoint.query else "")  # what is sent
        self._url = endpoint.shown(self._path)  # the only form of the URL in messages
        self._authorization = None
        if config.api_key:
            self._authorization = f"Bearer {config.api_key}"
        elif endpoint.basic_auth is not None:
            self._authorization = "Basic " + base64.b64encode(endpoint.basic_auth.encode("utf-8")).decode("ascii")
        self._redactor = Redactor([*endpoint.secrets, config.api_key or ""])
        self._local = threading.local()
        self._limiter = RateLimiter(config.rate_limit)
        self._counter = UsageCounter()
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()

    # -- TeacherBackend -------------------------------------------------------

    @property
    def usage(self) -> Usage:
        return self._counter.snapshot()

    def complete(
        self,
        prompt: str,
        n: int,
        temperature: float,
        *,
        max_tokens: int,
        stop: Sequence[str] = (),
        system: Optional[str] = None,
    ) -> list[Completion]:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        out: list[Completion] = []
        # Servers that ignore `n` (some llama.cpp builds) return fewer choices: ask again
        # for the rest. Each round yields >= 1 choice, so this ends within n rounds.
        while len(out) < n:
            want = n - len(out)
            if self.config.samples_per_request is not None:
                want = min(want, self.config.samples_per_request)
            body = self._body(prompt, want, temperature, max_tokens, stop, system)
            out.extend(self._request(body)[: n - len(out)])
        return out

    # -- internals ------------------------------------------------------------

    def _body(self, prompt, n, temperature, max_tokens, stop, system) -> dict:
        body: dict[str, Any] = {
            "model": self.config.model,
            "n": n,
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        if self.config.api == "chat":
            messages = [{"role": "system", "content": system}] if system else []
            messages.append({"role": "user", "content": prompt})
            body["messages"] = messages
        else:
            body["prompt"] = f"{system}\n\n{prompt}" if system else prompt
        if stop:
            body["stop"] = list(stop)
        if self.config.seed is not None:
            body["seed"] = self.config.seed
        if self.config.top_p is not None:
            body["top_p"] = self.config.top_p
        return body

    def _redact(self, text: str) -> str:
        return self._redactor.text(text)

    def _snippet(self, raw: bytes, limit: int = 300) -> str:
        """The start of an error body, redacted before it is cut: a cut through an echoed
        key would leave its first part unrecognisable."""
        return self._redact(self._redactor.bytes(raw)[:limit].decode("utf-8", "replace").strip())

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port)
            self._local.conn = conn
        conn.timeout = timeout  # bounds connect; the deadline below bounds the rest
        if conn.sock is None:
            conn.connect()
        else:
            conn.sock.settimeout(timeout)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _read_body(self, response: http.client.HTTPResponse) -> bytes:
        """The reply body, refused (`_ReplyTooLarge`) as soon as it passes the cap."""
        cap = self.config.max_reply_bytes
        declared = response.getheader("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > cap:
            raise _ReplyTooLarge(f"the reply declares {int(declared)} bytes")
        chunks, size = [], 0
        while True:
            chunk = response.read(min(1 << 16, cap + 1 - size))
            if not chunk:
                if response.length:  # read(amt) ends quietly where the server hung up early
                    raise http.client.IncompleteRead(b"".join(chunks), response.length)
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                raise _ReplyTooLarge("the reply went on past that")

    def _post(self, body: dict) -> tuple[int, http.client.HTTPMessage, bytes]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._authorization:
            headers["Authorization"] = self._authorization
        timeout = self.config.timeout
        start = time.monotonic()
        expired = threading.Event()
        timer = None
        try:
            conn = self._connection(timeout)
            # A socket timeout bounds each read, not the reply: a server sending a byte
            # a second never trips it. At the deadline the socket is shut down, which
            # ends any read in progress at once.
            sock = conn.sock
            timer = threading.Timer(max(0.0, timeout - (time.monotonic() - start)), _shut, (sock, expired))
            timer.daemon = True
            timer.start()
            conn.request("POST", self._target, body=json.dumps(body).encode("utf-8"), headers=headers)
            response = conn.getresponse()
            raw = self._read_body(response)
            if expired.is_set():  # the shut socket ended the body early, as if complete
                raise OSError("deadline")
        except BaseException as e:
            # The connection is in an unknown state (half a reply may be pending): discard it.
            self._drop_connection()
            if expired.is_set() and not isinstance(e, _ReplyTooLarge):
                raise _DeadlineExceeded(
                    f"no complete reply within --timeout={timeout:g}s (a deadline for the whole request)"
                ) from None
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if response.will_close or expired.is_set():  # the deadline fired just as the reply ended
            self._drop_connection()
        return response.status, response.headers, raw

    def _attempt(self, body: dict) -> list[Completion]:
        """One HTTP attempt; raises _RetryableError, RequestFailed or FatalBackendError."""
        self._limiter.acquire()
        self._counter.add(requests=1)
        try:
            status, headers, raw = self._post(body)
        except _DeadlineExceeded as e:
            raise _RetryableError(str(e)) from None
        except _ReplyTooLarge as e:
            # Not retried: a server that sends this much would send it again, each time.
            raise RequestFailed(
                f"reply from {self._url} larger than --max_reply_bytes={self.config.max_reply_bytes} ({e}); "
                "raise the cap if replies this large are expected"
            ) from None
        except ssl.SSLError as e:
            if isinstance(e, _TRANSIENT_TLS_ERRORS):  # a connection cut mid-handshake: like any other
                raise _RetryableError(self._redact(f"connection error ({type(e).__name__}: {e})")) from None
            # The same on every attempt of every prompt: no retry can help.
            raise FatalBackendError(
                self._redact(f"TLS with {self._url} failed ({_tls_reason(e)}); {_tls_fix(e)}")
            ) from None
        except (OSError, http.client.HTTPException) as e:  # timeouts are OSErrors too
            raise _RetryableError(self._redact(f"connection error ({type(e).__name__}: {e})")) from None
        if status == 200:
            try:
                completions, usage = parse_response(self.config.api, raw)
            except _MalformedResponse as e:
                raise _RetryableError(f"malformed reply: {e}") from None
            self._count_usage(usage)
            return completions
        snippet = self._snippet(raw)
        message = f"HTTP {status} from {self._url}: {snippet}"
        if status in _RETRYABLE_STATUS or status >= 500:
            raise _RetryableError(message, parse_retry_after(headers.get("Retry-After")))
        if status in _FATAL_STATUS:
            hint = ""
            if status == 404 and "/v1" not in self._path:
                hint = " (base_url usually ends in /v1, e.g. http://localhost:8000/v1)"
            raise FatalBackendError(f"{message}{hint}; check --base_url, --model and the API key variable")
        # Other 4xx: this request is wrong (e.g. too long); repeating it cannot help.
        raise RequestFailed(message)

    def _count_usage(self, usage: Optional[dict]) -> None:
        if usage is None:
            self._counter.add(responses_without_usage=1)
            return
        tokens = {}
        for key in ("prompt_tokens", "completion_tokens"):
            value = usage.get(key)
            tokens[key] = value if isinstance(value, int) and value >= 0 else 0
        self._counter.add(**tokens)

    def _backoff(self, retry: int, retry_after: Optional[float]) -> float:
        cap = min(self.config.max_backoff, self.config.initial_backoff * (2**retry))
        with self._rng_lock:
            delay = self._rng.uniform(0.0, cap)  # full jitter: spreads out synchronized retries
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.config.max_retry_after))
        return delay

    def _request(self, body: dict) -> list[Completion]:
        last_error = ""
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self._counter.add(retries=1)
            try:
                return self._attempt(body)
            except _RetryableError as e:
                last_error = str(e)
                if attempt == self.config.max_retries:
                    break
                delay = self._backoff(attempt, e.retry_after)
                logging.debug("attempt %d failed (%s); retrying in %.2fs", attempt + 1, e, delay)
                time.sleep(delay)
        raise RequestFailed(f"gave up after {self.config.max_retries + 1} attempts; last error: {last_error}")
