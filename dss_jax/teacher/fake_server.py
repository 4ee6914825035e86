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
                     header (as some proxies do; a client must not log it verbatim),
                     after `echo_padding` characters (to place it across a client's cut)
    "400_echo"       400 Bad Request echoing the request line and the Authorization header
                     in every form a server might: as received, JSON-escaped, URL-encoded

    with ScriptedOpenAIServer(lambda prompt, i: "... The answer is (1 + 2).") as server:
        server.base_url   # http://127.0.0.1:PORT/v1

As a binary it is the dry-run teacher for `python -m dss_jax.annotate` (docs/annotate.md):
it answers every prompt with a canned reply that the dataset family's parser reads, and
can serve one of the faults above on a share of the requests:

    python -m dss_jax.teacher.fake_server --dataset_family=svamp [--fault=429 --fault_rate=0.3]

It prints one line with the URL to pass as `--base_url` and runs until Ctrl-C or SIGTERM
(exit status 0). `--port=0` (the default) picks a free port, so a dry run left running is
never mistaken for a real teacher on a well-known port.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import hashlib
import http.server
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.parse
from typing import Callable, Optional

from dss_jax.cli import UserError
from dss_jax.data import parsers

Teacher = Callable[[str, int], str]  # (prompt, choice index) -> completion text
# (prompt, how many requests for this prompt came before this one) -> fault name or None
FaultPlan = Callable[[str, int], Optional[str]]

FAULTS = (
    "429",
    "500",
    "503",
    "drop",
    "drop_mid_body",
    "slow",
    "malformed_json",
    "no_choices",
    "400",
    "400_echo",
    "trickle",
    "huge",
    "huge_unannounced",
    "deep_json",
    "surrogate",
)


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
        host: str = "127.0.0.1",
        port: int = 0,
        keep_log: bool = True,
        echo_padding: int = 0,
    ):
        """`delay`: seconds every reply takes; `max_choices`: ignore larger `n` (like some servers);
        `port` 0 picks a free one; `keep_log=False` keeps only the counts (a server left running)."""
        self.teacher = teacher
        self.faults = faults or (lambda prompt, attempt: None)
        self.delay = delay
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        self.api_key = api_key
        self.max_choices = max_choices
        self.trickle_seconds = trickle_seconds
        self.huge_bytes = huge_bytes
        self.host = host
        self.requested_port = port
        self.keep_log = keep_log
        self.echo_padding = echo_padding
        self.log: list[LoggedRequest] = []
        self.requests = 0
        self.fault_counts: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        self._attempts: dict[bytes, int] = {}  # by digest: a few-shot prompt is kilobytes
        self._httpd: Optional[http.server.ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> "ScriptedOpenAIServer":
        server = self

        class Handler(_Handler):
            owner = server

        server_class = _IPv6Server if ":" in self.host else http.server.ThreadingHTTPServer
        httpd = server_class((self.host, self.requested_port), Handler)
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
        host = _reachable_host(self.host)
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/v1"

    # -- answering ------------------------------------------------------------

    def _register(self, path: str, body: dict, authorization: Optional[str]) -> LoggedRequest:
        prompt = _prompt_of(urllib.parse.urlsplit(path).path, body)
        key = _digest(prompt)
        with self._lock:
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
        fault = self.faults(prompt, attempt)
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {FAULTS}")
        entry = LoggedRequest(time.monotonic(), path, prompt, attempt, fault, authorization, body)
        with self._lock:
            self.requests += 1
            if fault is not None:
                self.fault_counts[fault] += 1
            if self.keep_log:
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


class _IPv6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _reachable_host(host: str) -> str:
    """The address a client on this machine connects to: loopback for a wildcard bind."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def _digest(text: str) -> bytes:
    # surrogatepass: a request's JSON may carry an unpaired surrogate escape.
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def fault_plan(fault: Optional[str], rate: float = 1.0, attempts: int = 0) -> FaultPlan:
    """`fault` on a share `rate` of the requests; with `attempts` K > 0 only on each prompt's
    first K attempts, so that retries then succeed. Which requests get it depends only on the
    prompt and the attempt number (counted from the server's start), so the same inputs
    against a fresh server see the same faults."""
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; known: {FAULTS}")

    def plan(prompt: str, attempt: int) -> Optional[str]:
        if fault is None or (attempts and attempt >= attempts):
            return None
        draw = int.from_bytes(_digest(f"{attempt}\0{prompt}")[:8], "big") / 2.0**64  # uniform in [0, 1)
        return fault if draw < rate else None

    return plan


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    owner: ScriptedOpenAIServer

    def setup(self):
        super().setup()
        # Headers and body go out in two writes; without TCP_NODELAY, Nagle's algorithm
        # holds the body until the client's delayed ACK (~40 ms on Linux), as real servers avoid.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):  # quiet
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
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
        for i in range(len(head) + len(payload)):
            self.wfile.write((head + payload)[i : i + 1])
            self.wfile.flush()
            time.sleep(self.owner.trickle_seconds)
        self.close_connection = True

    def do_POST(self):  # http.server naming
        owner = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._send(400, b'{"error": {"message": "request body is not JSON"}}')
            return
        path = urllib.parse.urlsplit(self.path).path  # a query (?api-version=...) is logged, not routed on
        if not path.endswith(("/v1/chat/completions", "/v1/completions")):
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
                message = "." * owner.echo_padding + f"bad request (authorization: {authorization})"
                self._send(400, json.dumps({"error": {"message": message}}).encode())
            elif fault == "400_echo":
                echoed = authorization or ""
                lines = [
                    "." * owner.echo_padding + f"bad request: {self.command} {self.path}",
                    f"authorization: {echoed}",  # as received: latin-1, like the header itself
                    f"json: {json.dumps(echoed)}",
                    f"url: {urllib.parse.quote(echoed, safe='', encoding='latin-1')}",
                    f"url-encoded request: {urllib.parse.quote(self.path, safe='')}",
                ]
                self._send(400, "\n".join(lines).encode("latin-1"))
            elif fault == "drop":
                self.close_connection = True  # no reply at all
            elif fault == "slow":
                time.sleep(owner.slow_seconds)
                self._send(200, json.dumps(owner.reply_body(path, body, entry.prompt)).encode())
            elif fault == "malformed_json":
                self._send(200, b'{"choices": [{"index": 0, "text": "unterminated')
            elif fault == "no_choices":
                self._send(200, b'{"object": "text_completion", "usage": {}}')
            elif fault == "trickle":
                self._trickle(json.dumps(owner.reply_body(path, body, entry.prompt)).encode())
            elif fault in ("huge", "huge_unannounced"):
                payload = json.dumps(owner.reply_body(path, body, entry.prompt, "x" * owner.huge_bytes)).encode()
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
                self._send(200, json.dumps(owner.reply_body(path, body, entry.prompt, text)).encode())
            else:
                payload = json.dumps(owner.reply_body(path, body, entry.prompt)).encode()
                self._send(200, payload, truncate=fault == "drop_mid_body")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. timed out)


# -- the binary -----------------------------------------------------------------

# A completion per family that the family's parser reads (rationale and label), marked as
# a dry run in the rationale so that a cache written against this server is recognisable.
# Like a few-shot prompted model it goes on to invent the next exemplar, which the
# built-in prompts' stop sequence cuts off (finish_reason "stop").
DRY_RUN_ENDINGS = {
    "svamp": " The answer is (1 + 1).\n\nQ: an invented next question",
    "cqa": " So the answer is (a) dry run.\n\nQ: an invented next question",
    "anli1": " So the answer is neutral.\n\nPremise: an invented next premise",
    "esnli": "\nAnswer: neutral\n\nPremise: an invented next premise",
}


def dry_run_teacher(family: str) -> Teacher:
    ending = DRY_RUN_ENDINGS[parsers.canonical_family(family)]

    def teacher(prompt: str, index: int) -> str:
        return (
            f" Dry run: scripted sample {index} for a prompt of {len(prompt.split())} words, "
            f"not a model's reasoning.{ending}"
        )

    return teacher


class _Stop(Exception):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt."""


def _define_flags():
    from absl import flags

    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on; the default is reachable from this machine only.")
    flags.DEFINE_integer("port", 0, "Port to listen on; 0 (default) picks a free one (printed with the URL).")
    flags.DEFINE_enum(
        "dataset_family",
        "svamp",
        list(parsers.FAMILIES + tuple(parsers.ALIASES)),
        "Whose answer phrase the canned reply ends with (as annotate's --dataset_family).",
    )
    flags.DEFINE_string("reply", None, "Every completion's text instead of the canned one (\\n and \\t unescaped).")
    flags.DEFINE_enum("fault", None, list(FAULTS), "A fault to serve instead of a normal reply (see the module doc).")
    flags.DEFINE_float("fault_rate", 1.0, "With --fault: the share of requests that get it (the same ones every run).")
    flags.DEFINE_integer(
        "fault_attempts",
        0,
        "With --fault: only each prompt's first K attempts can get it, so retries succeed; 0: any attempt.",
    )
    flags.DEFINE_float("delay", 0.0, "Seconds every reply waits (a teacher's latency).")
    flags.DEFINE_string("retry_after", "1", "The Retry-After header of the 429 fault (seconds or an HTTP date).")
    flags.DEFINE_float("slow_seconds", 2.0, "How long the slow fault waits before its reply.")
    flags.DEFINE_float("trickle_seconds", 0.1, "The trickle fault's wait between bytes.")
    flags.DEFINE_integer("huge_bytes", 1 << 20, "The length of the huge faults' completion.")
    flags.DEFINE_integer("max_choices", None, "Answer at most this many choices per request, whatever its n.")
    flags.DEFINE_string(
        "api_key_env",
        None,
        "Environment variable holding the key to require (401 otherwise); unset: any key or none is accepted.",
    )


def _check_flags(FLAGS) -> None:
    """Every setting is checked before the port is opened; UserError names the flag."""
    if not 0 <= FLAGS.port <= 65535:
        raise UserError(f"--port={FLAGS.port}: a port is 0 to 65535 (0 picks a free one)")
    if not 0.0 <= FLAGS.fault_rate <= 1.0:
        raise UserError(f"--fault_rate={FLAGS.fault_rate}: a share of the requests, 0 to 1")
    if FLAGS.fault_attempts < 0:
        raise UserError(f"--fault_attempts={FLAGS.fault_attempts}: 0 (any attempt) or a number of attempts")
    if FLAGS.fault is None:
        for name in ("fault_rate", "fault_attempts"):
            if FLAGS[name].present:
                raise UserError(f"--{name} has no effect without --fault=NAME (one of: {', '.join(FAULTS)})")
    for name in ("delay", "slow_seconds", "trickle_seconds"):
        if not FLAGS[name].value >= 0:
            raise UserError(f"--{name}={FLAGS[name].value}: seconds, 0 or more")
    if FLAGS.huge_bytes < 0 or (FLAGS.max_choices is not None and FLAGS.max_choices < 1):
        raise UserError("--huge_bytes must be 0 or more and --max_choices 1 or more")
    if FLAGS.api_key_env is not None and not os.environ.get(FLAGS.api_key_env):
        raise UserError(
            f"--api_key_env={FLAGS.api_key_env}: ${FLAGS.api_key_env} is not set; set it to the key "
            "annotate will send, or leave --api_key_env out to accept any key"
        )


def _describe(FLAGS) -> str:
    if FLAGS.fault is None:
        return "no faults"
    k, rate = FLAGS.fault_attempts, FLAGS.fault_rate
    if not k:
        where = "every request" if rate >= 1 else f"{rate:.0%} of requests"
    else:
        attempts = "the first attempt" if k == 1 else f"the first {k} attempts"
        where = f"{attempts} of every prompt" if rate >= 1 else f"{rate:.0%} of {attempts} of each prompt"
    return f"fault {FLAGS.fault} on {where}"


def _open(FLAGS) -> ScriptedOpenAIServer:
    teacher = dry_run_teacher(FLAGS.dataset_family)
    if FLAGS.reply is not None:
        reply = FLAGS.reply.replace("\\n", "\n").replace("\\t", "\t")
        teacher = lambda prompt, index: reply
    server = ScriptedOpenAIServer(
        teacher, faults=fault_plan(FLAGS.fault, FLAGS.fault_rate, FLAGS.fault_attempts), delay=FLAGS.delay,
        retry_after=FLAGS.retry_after, slow_seconds=FLAGS.slow_seconds, trickle_seconds=FLAGS.trickle_seconds,
        huge_bytes=FLAGS.huge_bytes, max_choices=FLAGS.max_choices, host=FLAGS.host, port=FLAGS.port,
        api_key=os.environ[FLAGS.api_key_env] if FLAGS.api_key_env else None, keep_log=False,
    )  # fmt: skip
    try:
        return server.start()
    except socket.gaierror as e:
        raise UserError(f"--host={FLAGS.host}: {e.strerror}; use an address of this machine, e.g. 127.0.0.1") from None
    except OSError as e:
        fix = {
            errno.EADDRINUSE: "pick another port, or --port=0 for a free one",
            errno.EACCES: "ports below 1024 need privileges: pick a higher one, or --port=0 for a free one",
        }
        raise UserError(
            f"--host={FLAGS.host} --port={FLAGS.port}: {e.strerror or e}; "
            f"{fix.get(e.errno, 'use an address of this machine, e.g. 127.0.0.1')}"
        ) from None


def main(argv) -> None:
    from absl import flags

    if len(argv) > 1:
        raise UserError(f"unexpected arguments {' '.join(argv[1:])!r}; every setting is a --flag")
    FLAGS = flags.FLAGS
    _check_flags(FLAGS)
    # Before the port opens: whoever read the URL line may send SIGTERM at once.
    signal.signal(signal.SIGTERM, _raise_stop)
    server = None
    try:
        server = _open(FLAGS)
        bound = server._httpd.server_address[0]
        if not ipaddress.ip_address(bound.split("%")[0]).is_loopback:
            print(f"fake_server: warning: listening on {bound}, reachable from other machines", file=sys.stderr)
        teacher = "fixed reply" if FLAGS.reply is not None else f"scripted {FLAGS.dataset_family} teacher"
        # One line on stdout, flushed (a pipe would hold it), for people and scripts alike.
        print(
            f"fake_server: a {teacher} ({_describe(FLAGS)}); pass --base_url={server.base_url} to annotate; "
            "Ctrl-C stops",
            flush=True,
        )
        while True:
            time.sleep(3600)  # a signal's handler raises out of the sleep
    except (KeyboardInterrupt, _Stop):
        # A second Ctrl-C while the server shuts down would only print a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    finally:
        if server is not None:
            server.stop()
    if server is None:
        return
    faults = ", ".join(f"{n} {name}" for name, n in sorted(server.fault_counts.items()))
    print(
        f"fake_server: stopped after {server.requests} requests" + (f" ({faults})" if faults else ""),
        file=sys.stderr,
        flush=True,
    )


def _raise_stop(signum, frame) -> None:
    raise _Stop()


if __name__ == "__main__":
    from dss_jax import cli

    _define_flags()  # here, not at import: tests import this module next to annotate's flags
    cli.run(main, "fake_server")
