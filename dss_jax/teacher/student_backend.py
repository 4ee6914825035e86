"""A trained dss_jax student as a local teacher: `explain: x` -> rationale, `predict: x` -> label.

The student takes no few-shot prompt: the pipeline's prompt is the raw input (the
identity template `STUDENT_TEMPLATE`), and each completion comes back structured
(`Completion.rationale` / `.label`), so no parser is involved. A student of the
single-task ablation (`task_options.label_target = 'rationale_then_label'`) answers
`predict:` with "<rationale> So the answer is: <label>", which is split instead.

    backend = StudentBackend(StudentConfig(checkpoint="/runs/round1", family="svamp"))
    backend.complete("Tom had 5 apples ...", n=4, temperature=0.7, max_tokens=128)

Batching: the pipeline calls `complete` from `concurrency` threads with one prompt each.
Each call tokenizes its input, queues a request and waits; one decode thread collects
queued requests (up to `batch_size` rows, waiting `batch_wait` seconds after the oldest
for more), runs `generate` on a batch padded to exactly `batch_size` rows (copies of the
last real row), and hands each caller its rows. The shapes never change, so jit compiles
once per (temperature, decode length). `n` samples of a prompt are `n` rows holding the
same input; temperature 0 is greedy decoding, > 0 samples with a fresh key per batch
(folded from `seed`), so rows do not share draws. Greedy rows never interact, so at
temperature 0 the output does not depend on the batching (nor on `concurrency`) and
equals `python -m dss_jax.infer` at the same lengths.

Usage accounting: `requests` counts prompts (calls); `prompt_tokens` the real encoder
tokens of every decoded row (n samples x two tasks), `completion_tokens` the generated
tokens up to and including EOS. A decode that hit its length without EOS gives
`finish_reason="length"`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import queue
import threading
import time
from typing import Any, Optional, Sequence

import numpy as np

from dss_jax import files
from dss_jax.cli import UserError
from dss_jax.teacher.backend import Completion, RequestFailed, Usage, UsageCounter
from dss_jax.teacher.prompts import parse_template

TARGETS = ("two_task", "single_task")
# The prompt is the record's input itself: the student was trained on raw inputs.
STUDENT_TEMPLATE = parse_template("{{input}}", source="<student: the raw input>", default_id="student")
_STOP = object()


class StudentLoadError(UserError, ValueError):
    """The checkpoint or its vocabulary cannot be loaded; the message names the path."""


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    checkpoint: str  # a checkpoint dir, or a training run's MODEL_DIR (its latest checkpoint)
    family: Optional[str] = None  # the dataset family; NLI families turn "</s>" into EOS
    target: str = "two_task"  # "single_task": predict: gives "<rationale> So the answer is: <label>"
    batch_size: int = 32  # rows per decode (prompts x samples); batches are padded to it
    input_length: int = 512  # encoder tokens; longer inputs are cut (with a warning)
    label_length: int = 64  # tokens of a decoded label
    seed: int = 0
    batch_wait: float = 0.005  # seconds to wait after the oldest queued prompt for more
    dtype: Optional[str] = None  # e.g. "bfloat16"; None: the checkpoint's

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"student target must be one of {TARGETS}, got {self.target!r}")
        for name in ("batch_size", "input_length", "label_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"student {name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.batch_wait) and self.batch_wait >= 0):
            raise ValueError(f"student batch_wait must be >= 0, got {self.batch_wait}")


@dataclasses.dataclass
class _Request:
    rows: dict[str, np.ndarray]  # task ("predict"/"explain") -> encoder row [input_length]
    real_tokens: dict[str, int]  # task -> non-pad encoder tokens (usage)
    n: int
    key: tuple[float, int]  # (temperature, max_tokens): rows of one batch share it
    future: concurrent.futures.Future
    arrived: float
    handed_out: int = 0  # rows put into a batch so far
    outputs: list = dataclasses.field(default_factory=list)  # per sample: task -> generated tokens

    def __post_init__(self):
        self.outputs = [None] * self.n


class StudentBackend:
    """`TeacherBackend` over a trained student checkpoint (thread-safe; see the module doc)."""

    def __init__(self, config: StudentConfig):
        from dss_jax.data import parsers

        self.config = config
        self.model, self.params, self.vocabulary, self.checkpoint_path = _load(config)
        self.name = f"student:{self.checkpoint_path}"
        self._separator = config.family is not None and parsers.canonical_family(config.family) in ("anli1", "esnli")
        self._usage = UsageCounter()
        self._encode_lock = threading.Lock()
        self._warned: set[str] = set()
        self._queue: queue.Queue = queue.Queue()
        self.batches = 0  # decode batches run (each one generate call per task)
        self._closed = False
        self._thread = threading.Thread(target=self._decode_loop, daemon=True, name="student-decode")
        self._thread.start()

    # ----- the TeacherBackend protocol ---------------------------------------------------

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
        """`n` (rationale, label) samples for the raw input `prompt`; `stop`/`system` are unused."""
        del stop, system  # a student stops at EOS and has no system message
        if n < 1 or max_tokens < 1 or temperature < 0:
            raise ValueError(f"need n >= 1, max_tokens >= 1, temperature >= 0; got {n}, {max_tokens}, {temperature}")
        if self._closed:
            raise RequestFailed("the student backend is closed")
        self._usage.add(requests=1)
        rows, real, too_long = {}, {}, []
        for task, prefix in self._prefixes().items():
            rows[task], full = self.encode(prefix + prompt)
            real[task] = int(np.count_nonzero(rows[task]))
            if full > self.config.input_length:
                too_long.append(f"{full} tokens with {prefix.strip()!r}")
        if too_long and prompt not in self._warned:
            self._warned.add(prompt)
            logging.warning(
                "input %r... is too long (%s > student input length %d); truncated",
                prompt[:60],
                "; ".join(too_long),
                self.config.input_length,
            )
        request = _Request(
            rows, real, n, (float(temperature), int(max_tokens)), concurrent.futures.Future(), time.monotonic()
        )
        self._queue.put(request)
        return request.future.result()

    @property
    def usage(self) -> Usage:
        return self._usage.snapshot()

    # ----- helpers -----------------------------------------------------------------------

    def encode(self, text: str) -> tuple[np.ndarray, int]:
        """(encoder row [input_length], untrimmed length with EOS), as the DSS tasks tokenize."""
        from dss_jax.prediction import encode_input

        with self._encode_lock:  # the SentencePiece processor is loaded lazily on first use
            return encode_input(self.vocabulary, text, self.config.input_length, self._separator)

    def check_inputs(self, examples: Sequence[Any]) -> int:
        """Warns once per example (naming it) whose input is cut to the input length; returns
        how many. `examples` have `.id`, `.input` and `.where` (teacher.examples.Example)."""
        cut = 0
        for example in examples:
            lengths = [(prefix, self.encode(prefix + example.input)[1]) for prefix in self._prefixes().values()]
            over = [
                f"{full} tokens with {prefix.strip()!r}" for prefix, full in lengths if full > self.config.input_length
            ]
            if over:
                cut += 1
                self._warned.add(example.input)
                logging.warning(
                    "%s (id %r): input too long (%s > --student_input_length=%d); truncated",
                    example.where,
                    example.id,
                    "; ".join(over),
                    self.config.input_length,
                )
        return cut

    def close(self) -> None:
        """Stops the decode thread after its current batch; waiting requests fail with RequestFailed."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join(timeout=30)

    def __enter__(self) -> "StudentBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _prefixes(self) -> dict[str, str]:
        from dss_jax.data.paired import LABEL_PREFIX, RATIONALE_PREFIX

        if self.config.target == "single_task":
            return {"predict": LABEL_PREFIX}
        return {"predict": LABEL_PREFIX, "explain": RATIONALE_PREFIX}

    def _decode_lengths(self, max_tokens: int) -> dict[str, int]:
        if self.config.target == "single_task":  # rationale and label in one target
            return {"predict": self.config.label_length + max_tokens}
        return {"predict": self.config.label_length, "explain": max_tokens}

    # ----- the decode thread -------------------------------------------------------------

    def _decode_loop(self) -> None:
        backlog: list[_Request] = []  # oldest first; a request leaves when all its rows are done
        while True:
            if not backlog:
                item = self._queue.get()
                if item is _STOP:
                    break
                backlog.append(item)
            if self._collect(backlog):
                break
            key = backlog[0].key
            units = []  # (request, sample index), oldest requests first
            for request in backlog:
                if request.key != key:
                    continue
                while request.handed_out < request.n and len(units) < self.config.batch_size:
                    units.append((request, request.handed_out))
                    request.handed_out += 1
                if len(units) == self.config.batch_size:
                    break
            try:
                self._run_batch(units, key)
            except BaseException as e:  # the callers see it (a bug or a device error, not one prompt's fault)
                for request in {id(r): r for r, _ in units}.values():
                    if not request.future.done():
                        request.future.set_exception(e)
            for request in backlog:
                if not request.future.done() and all(o is not None for o in request.outputs):
                    try:
                        completions = [self._completion(o) for o in request.outputs]
                    except BaseException as e:  # never let the decode thread die with callers waiting
                        request.future.set_exception(e)
                    else:
                        request.future.set_result(completions)
            backlog[:] = [r for r in backlog if not r.future.done()]
        # Closed: nobody waits for the rest (an interrupted run), so fail it at once.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                backlog.append(item)
        for request in backlog:
            if not request.future.done():
                request.future.set_exception(RequestFailed("the student backend was closed"))

    def _collect(self, backlog: list[_Request]) -> bool:
        """Adds queued requests until the oldest's key fills a batch or its wait is over;
        True when a stop was queued."""
        key, deadline = backlog[0].key, backlog[0].arrived + self.config.batch_wait
        while sum(r.n - r.handed_out for r in backlog if r.key == key) < self.config.batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            backlog.append(item)
        return False

    def _run_batch(self, units: list[tuple[_Request, int]], key: tuple[float, int]) -> None:
        import jax

        from dss_jax.model.decoding import DecodeConfig, generate

        temperature, max_tokens = key
        real, size = len(units), self.config.batch_size
        batch_key = jax.random.fold_in(jax.random.key(self.config.seed), self.batches)
        self.batches += 1
        outputs: dict[str, np.ndarray] = {}
        for i, (task, length) in enumerate(self._decode_lengths(max_tokens).items()):
            rows = [request.rows[task] for request, _ in units]
            encoder = np.stack(rows + [rows[-1]] * (size - real))  # [batch_size, input_length]
            if temperature == 0:
                config, rng = DecodeConfig(max_decode_length=length, method="greedy"), None
            else:
                config = DecodeConfig(max_decode_length=length, method="sample", temperature=temperature)
                rng = jax.random.fold_in(batch_key, i)
            tokens = generate(self.model, self.params, encoder, config=config, rng=rng).tokens
            outputs[task] = np.asarray(jax.device_get(tokens))[:real]  # [real, length]
        eos = self.vocabulary.eos_id
        prompt_tokens = completion_tokens = 0
        for j, (request, k) in enumerate(units):
            request.outputs[k] = {task: tokens[j] for task, tokens in outputs.items()}
            for task, tokens in request.outputs[k].items():
                prompt_tokens += request.real_tokens[task]
                hits = np.flatnonzero(tokens == eos)
                completion_tokens += int(hits[0]) + 1 if hits.size else len(tokens)
        self._usage.add(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    def _completion(self, tokens: dict[str, np.ndarray]) -> Completion:
        from dss_jax.data.options import single_task_target, split_single_task
        from dss_jax.prediction import tokens_to_texts

        eos = self.vocabulary.eos_id
        texts = {task: tokens_to_texts(self.vocabulary, row[None], self.model)[0] for task, row in tokens.items()}
        finish = "length" if any(eos not in row for row in tokens.values()) else "stop"
        if self.config.target == "single_task":
            rationale, label = split_single_task(texts["predict"])
            return Completion(text=texts["predict"], finish_reason=finish, rationale=rationale, label=label or None)
        rationale, label = texts["explain"], texts["predict"]
        return Completion(
            text=single_task_target(rationale, label),
            finish_reason=finish,
            rationale=rationale,
            label=label if label.strip() else None,
        )


def _load(config: StudentConfig):
    """(model, params on device, vocabulary, checkpoint dir) or StudentLoadError naming the path."""
    import jax

    from dss_jax.checkpoints import load_checkpoint, select_checkpoints, where_described
    from dss_jax.data import vocab

    if not files.path(config.checkpoint).is_dir():  # a local dir or a gs:// prefix
        raise StudentLoadError(
            f"student checkpoint {config.checkpoint} does not exist: give a checkpoint dir or a "
            "training run's MODEL_DIR"
        )
    try:
        ((_, path),) = select_checkpoints(config.checkpoint, "latest")
        model, params, vocab_path = load_checkpoint(path, config.dtype)
    except (FileNotFoundError, ValueError) as e:
        raise StudentLoadError(f"cannot load the student checkpoint {config.checkpoint}: {e}") from None
    if vocab_path is None:
        raise StudentLoadError(
            f"the student checkpoint {path} has no spiece.model or tokenizer.json (looked in "
            f"{where_described(path)}); the student's vocabulary is needed: copy its run's vocabulary there"
        )
    vocabulary = vocab.from_checkpoint(vocab_path)
    if vocabulary.vocab_size > model.config.vocab_size:
        raise StudentLoadError(
            f"{vocab_path} has {vocabulary.vocab_size} pieces but the model {path} only "
            f"{model.config.vocab_size} embeddings: not this student's vocabulary"
        )
    logging.info("student %s (vocabulary %s) loaded", path, vocab_path)
    return model, jax.device_put(params), vocabulary, path
