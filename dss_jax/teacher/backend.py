"""What the annotation pipeline needs from a teacher: the `TeacherBackend` protocol.

A backend turns one prompt into `n` sampled completions. The pipeline does not care
whether they come from an HTTP server (`http_backend.OpenAIHttpBackend`) or from a
model running in this process: a local backend (e.g. a trained dss_jax student
decoding with `dss_jax.model.decoding.generate`) only has to implement `complete`
and `usage` below. Backends are called from several worker threads at once, so
`complete` must be thread-safe (a local backend that is not can take a lock).

Errors a backend raises:
  - `RequestFailed`: this prompt could not be answered (retries exhausted, or the
    server refused this one request); the pipeline reports the example as failed and
    does not write it, so a rerun retries it.
  - `FatalBackendError`: no prompt can succeed (bad key, unknown model or URL); the
    pipeline stops submitting work, writes what finished, and exits with the message.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Optional, Protocol, Sequence, runtime_checkable


@dataclasses.dataclass(frozen=True)
class Completion:
    """One sampled continuation of a prompt.

    A text-only completion (an LLM's) is parsed by the dataset family's parser. A backend
    that produces the two parts itself (the student: `explain:` -> rationale, `predict:`
    -> label) sets `rationale` and/or `label`, and the pipeline takes them as they are;
    `label=None` then means no answer (the sample counts as unparsable).
    """

    text: str
    # Why generation stopped, as the server says ("stop", "length", ...); None if unknown.
    finish_reason: Optional[str] = None
    rationale: Optional[str] = None
    label: Optional[str] = None

    @property
    def structured(self) -> bool:
        """Whether the backend gave the rationale/label itself (no parsing needed)."""
        return self.rationale is not None or self.label is not None


@dataclasses.dataclass(frozen=True)
class Usage:
    """Totals since the backend was created (a snapshot; `UsageCounter` accumulates)."""

    requests: int = 0  # HTTP attempts (or local calls), successful or not
    retries: int = 0  # attempts that were repeats of a failed one
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Successful responses that carried no `usage` object, so their tokens are not counted.
    responses_without_usage: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UsageCounter:
    """Thread-safe accumulator behind `TeacherBackend.usage`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._usage = Usage()

    def add(self, **deltas: int) -> None:
        with self._lock:
            current = dataclasses.asdict(self._usage)
            for key, value in deltas.items():
                current[key] += value
            self._usage = Usage(**current)

    def snapshot(self) -> Usage:
        with self._lock:
            return self._usage


class RequestFailed(RuntimeError):
    """One prompt could not be answered; other prompts may still succeed."""


class FatalBackendError(RuntimeError):
    """No prompt can succeed with this configuration (bad key, model, URL)."""


@runtime_checkable
class TeacherBackend(Protocol):
    """A source of sampled completions. Implementations must be thread-safe."""

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
        """Returns exactly `n` completions of `prompt`, or raises RequestFailed/FatalBackendError.

        `system` is an optional system message (chat backends; others may prepend it).
        """
        ...

    @property
    def usage(self) -> Usage:
        """Requests, retries and tokens so far."""
        ...
