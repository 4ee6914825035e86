"""A scripted OpenAI-compatible server on loopback, for tests, benchmarks and dry runs.

It speaks `POST /v1/chat/completions` and `POST /v1/completions` (the standard request
and response bodies, `n` choices, `stop` sequences, a `usage` object) and answers from
a deterministic Python function instead of a model. Faults can be injected per request
to exercise a client's retry logic:

    "429"            429 Too Many Requests with a Retry-After header
    "500", "503"     a server error
    "drop"           the connection is closed without any reply
    "drop_mid_body"  the headers and half the body are sent, then the connection closes
    "slow"           the reply comes only after `slow_seconds` (past a client's timeout)
    "trickle"        a normal reply, status line to last byte, sent one byte every
                     `trickle_seconds` (each read makes progress; the whole never ends)
    "huge"           a 200 reply whose one completion is `huge_bytes` long
    "huge_unannounced"  the same without Content-Length (the body ends when the
                     connection closes), so only counting the bytes can catch it
    "deep_json"      a 200 reply nested 100,000 arrays deep
    "surrogate"      each completion starts with an unpaired surrogate ("\\ud800" in the JSON)
    "malformed_json" a 200 reply whose body is not JSON
    "no_choices"     a 200 reply with JSON but no `choices`
    "400"            400 Bad Request whose message echoes the request's Authorization
                     header (as some proxies do; a client must not log it verbatim)

    with ScriptedOpenAIServer(lambda prompt, i: "... The answer is (1 + 2).") as server:
        server.base_url   # http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import socket
import threading
import time
from typing import Callable, Optional

Teacher = Callable[[str, int], str]  # (prompt, choice index) -> completion text
# (prompt, how many requests for this prompt came before this one) -> fault name or None
FaultPlan = Callable[[str, int], Optional[str]]

FAULTS = ("429", "500", "503", "drop", "drop_mid_body", "slow", "malformed_json", "no_choices", "400",
          "trickle", "huge", "huge_unannounced", "deep_json", "surrogate")


@dataclasses.dataclass(frozen=True)
class LoggedRequest:
    time: float  # time.monotonic() when the request arrived
    path: str
    prompt: str
    attempt: int  # 0 for the first request with this prompt
    fault: Optional[str]
    authorization: Optional[str]
    body: dict


def _prompt_of(path: str, body: dict) -> str:
    if path.endswith("/chat/completions"):
        messages = body.get("messages") or []
        return "\n\n".join(m.get("content", "") for m in messages if isinstance(m, dict))
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


def _cut_at_stop(text: str, stop) -> tuple[str, str]:
    if isinstance(stop, str):
        stop = [stop]
    cuts = [text.find(s) for s in (stop or []) if s and s in text]
    if cuts:
        return text[: min(cuts)], "stop"
    return text, "length"


class ScriptedOpenAIServer:
    def __init__(
        self,
        teacher: Teacher,
        faults: Optional[FaultPlan] = None,
        delay: float = 0.0,
        retry_after: str = "1",
        slow_seconds: float = 2.0,
        api_key: Optional[str] = None,
        max_choices: Optional[int] = None,
        trickle_seconds: float = 0.1,
        huge_bytes: int = 1 << 20,
    ):
        """`delay`: seconds every reply takes; `max_choices`: ignore larger `n` (like some servers)."""
        self.teacher = teacher
        self.faults = faults or (lambda prompt, attempt: None)
        self.delay = delay
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        self.api_key = api_key
        self.max_choices = max_choices
        self.trickle_seconds = trickle_seconds
        self.huge_bytes = huge_bytes
        self.log: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._attempts: dict[str, int] = {}
        self._httpd: Optional[http.server.ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> "ScriptedOpenAIServer":
        server = self

        class Handler(_Handler):
            owner = server

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        httpd.handle_error = lambda request, client_address: None  # clients hanging up is expected
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "ScriptedOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- answering ------------------------------------------------------------

    def _register(self, path: str, body: dict, authorization: Optional[str]) -> LoggedRequest:
        prompt = _prompt_of(path, body)
        with self._lock:
            attempt = self._attempts.get(prompt, 0)
            self._attempts[prompt] = attempt + 1
        fault = self.faults(prompt, attempt)
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {FAULTS}")
        entry = LoggedRequest(time.monotonic(), path, prompt, attempt, fault, authorization, body)
        with self._lock:
            self.log.append(entry)
        return entry

    def reply_body(self, path: str, body: dict, prompt: str, text: Optional[str] = None) -> dict:
        """The reply's JSON; `text`, when given, is every choice's completion instead of the teacher's."""
        n = body.get("n", 1)
        n = n if isinstance(n, int) and n >= 1 else 1
        if self.max_choices is not None:
            n = min(n, self.max_choices)
        chat = path.endswith("/chat/completions")
        choices, completion_tokens = [], 0
        for i in range(n):
            answer, finish = _cut_at_stop(self.teacher(prompt, i) if text is None else text, body.get("stop"))
            completion_tokens += len(answer.split())
            choice = {"index": i, "finish_reason": finish}
            if chat:
                choice["message"] = {"role": "assistant", "content": answer}
            else:
                choice["text"] = answer
            choices.append(choice)
        prompt_tokens = len(prompt.split())
        return {
            "id": "scripted",
            "object": "chat.completion" if chat else "text_completion",
            "model": body.get("model", ""),
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    owner: ScriptedOpenAIServer

    def setup(self):
        super().setup()
        # Headers and body go out in two writes; without TCP_NODELAY, Nagle's algorithm
        # holds the body until the client's delayed ACK (~40 ms on Linux), as real servers avoid.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def _send(self, status: int, payload: bytes, headers: Optional[dict] = None, truncate: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if truncate:
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            self.wfile.write(payload)

    def _trickle(self, payload: bytes) -> None:
        """The whole response, one byte at a time: every read gets a byte, the reply never ends."""
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        for i in range(len(head) + len(payload)):
            self.wfile.write((head + payload)[i : i + 1])
            self.wfile.flush()
            time.sleep(self.owner.trickle_seconds)
        self.close_connection = True

    def do_POST(self):  # noqa: N802 - http.server naming
        owner = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._send(400, b'{"error": {"message": "request body is not JSON"}}')
            return
        if not self.path.endswith(("/v1/chat/completions", "/v1/completions")):
            self._send(404, b'{"error": {"message": "unknown endpoint"}}')
            return
        authorization = self.headers.get("Authorization")
        entry = owner._register(self.path, body, authorization)
        if owner.api_key is not None and authorization != f"Bearer {owner.api_key}":
            self._send(401, b'{"error": {"message": "invalid api key"}}')
            return
        if owner.delay:
            time.sleep(owner.delay)
        fault = entry.fault
        try:
            if fault == "429":
                self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": owner.retry_after})
            elif fault in ("500", "503"):
                self._send(int(fault), b'{"error": {"message": "server error"}}')
            elif fault == "400":
                message = f"bad request (authorization: {authorization})"
                self._send(400, json.dumps({"error": {"message": message}}).encode())
            elif fault == "drop":
                self.close_connection = True  # no reply at all
            elif fault == "slow":
                time.sleep(owner.slow_seconds)
                self._send(200, json.dumps(owner.reply_body(self.path, body, entry.prompt)).encode())
            elif fault == "malformed_json":
                self._send(200, b'{"choices": [{"index": 0, "text": "unterminated')
            elif fault == "no_choices":
                self._send(200, b'{"object": "text_completion", "usage": {}}')
            elif fault == "trickle":
                self._trickle(json.dumps(owner.reply_body(self.path, body, entry.prompt)).encode())
            elif fault in ("huge", "huge_unannounced"):
                payload = json.dumps(owner.reply_body(self.path, body, entry.prompt, "x" * owner.huge_bytes)).encode()
                if fault == "huge":
                    self._send(200, payload)
                else:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(payload)
                    self.close_connection = True
            elif fault == "deep_json":
                self._send(200, b"[" * 100_000 + b"]" * 100_000)
            elif fault == "surrogate":
                # A broken detokenizer's half of a surrogate pair; json.dumps escapes it as "\\ud800".
                text = "\ud800" + owner.teacher(entry.prompt, 0)
                self._send(200, json.dumps(owner.reply_body(self.path, body, entry.prompt, text)).encode())
            else:
                payload = json.dumps(owner.reply_body(self.path, body, entry.prompt)).encode()
                self._send(200, payload, truncate=fault == "drop_mid_body")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. timed out)
