"""The annotation loop: prompt a teacher for every unfinished example, parse, select, cache.

Workers (daemon threads, `concurrency` of them) take examples from a queue, render the
prompt, call the backend and parse every completion; the calling thread is the only
writer of the cache, so each record is one crash-safe append. That gives the resume
guarantee: an example is finished exactly when its line is in the cache, so a run that
is killed at any moment and started again skips `writer.ids` and loses nothing; an
example whose request failed for good is not written, and the next run retries it.

A reply is stored even when it is not quite text: unpaired UTF-16 surrogates (a
server's detokenizer splitting a pair) cannot be written as UTF-8, so each is replaced
by U+FFFD before parsing and counted in the summary, instead of failing the write on
every rerun after the request was paid for.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import re
import sys
import threading
import time
from typing import Any, Callable, Optional, Sequence, TextIO

from dss_jax.data.cache import CacheRecord, CacheWriter, TeacherSample, iter_cache
from dss_jax.teacher.backend import FatalBackendError, RequestFailed, TeacherBackend, Usage
from dss_jax.teacher.examples import Example
from dss_jax.teacher.prompts import PromptTemplate
from dss_jax.teacher.selection import KEEP_CHOICES, Selection, select_samples

Parse = Callable[[str], Any]  # completion -> object with .rationale and .label
LabelsMatch = Callable[[str, str], bool]


@dataclasses.dataclass(frozen=True)
class AnnotateConfig:
    template: PromptTemplate
    teacher: str  # recorded as each sample's `teacher` (the model name)
    num_samples: int = 1
    temperature: float = 0.0
    max_tokens: int = 256
    stop: Optional[tuple[str, ...]] = None  # None: the template's stop sequences
    concurrency: int = 8
    keep: str = "all"
    vote: bool = False
    min_vote_share: float = 0.0  # with vote: keep nothing when the winner has less than this share
    progress: bool = True

    def __post_init__(self):
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.keep not in KEEP_CHOICES:
            raise ValueError(f"keep must be one of {KEEP_CHOICES}, got {self.keep!r}")
        if not 0.0 <= self.min_vote_share <= 1.0:
            raise ValueError(f"min_vote_share must be in [0, 1], got {self.min_vote_share}")
        if self.min_vote_share and not self.vote:
            raise ValueError("min_vote_share needs vote (--vote): it filters on the majority vote's share")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")


@dataclasses.dataclass
class Summary:
    examples: int = 0  # in the input
    skipped: int = 0  # already in the cache when the run started
    written: int = 0  # records appended by this run
    failed: dict = dataclasses.field(default_factory=dict)  # id -> last error (not written)
    pending: int = 0  # neither written nor failed (a fatal error or an interrupt stopped the run)
    samples: int = 0
    parsed: int = 0
    kept: int = 0
    dropped_unparsed: int = 0
    dropped_minority: int = 0
    dropped_wrong: int = 0
    dropped_uncertain: int = 0  # samples of a winning label whose vote share was below min_vote_share
    records_without_samples: int = 0  # written with every sample filtered out
    replaced_code_points: int = 0  # unpaired surrogates in replies, stored as U+FFFD
    samples_with_gold: int = 0
    samples_correct: int = 0
    votes_with_gold: int = 0
    votes_correct: int = 0
    usage: Usage = dataclasses.field(default_factory=Usage)
    seconds: float = 0.0
    fatal_error: Optional[str] = None
    interrupted: bool = False

    @property
    def unparsed(self) -> int:
        return self.samples - self.parsed

    @property
    def complete(self) -> bool:
        """Every input example is now in the cache."""
        return self.skipped + self.written == self.examples

    def add(self, selection: Selection) -> None:
        self.written += 1
        self.samples += selection.num_samples
        self.parsed += selection.num_parsed
        self.kept += len(selection.kept)
        self.dropped_unparsed += selection.dropped_unparsed
        self.dropped_minority += selection.dropped_minority
        self.dropped_wrong += selection.dropped_wrong
        self.dropped_uncertain += selection.dropped_uncertain
        self.records_without_samples += not selection.kept
        if selection.num_correct is not None:
            self.samples_with_gold += selection.num_samples
            self.samples_correct += selection.num_correct
        if selection.vote_correct is not None:
            self.votes_with_gold += 1
            self.votes_correct += selection.vote_correct

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["usage"] = dataclasses.asdict(self.usage)
        out["unparsed"] = self.unparsed
        out["complete"] = self.complete
        out["failed_ids"] = sorted(self.failed)
        return out

    def format(self) -> str:
        lines = [
            f"examples: {self.examples} in the input, {self.skipped} already cached, "
            f"{self.written} written now, {len(self.failed)} failed, {self.pending} left for the next run",
            f"samples: {self.samples} received, {self.parsed} parsed, {self.unparsed} unparsable; "
            f"{self.kept} kept, dropped {self.dropped_unparsed} unparsable, "
            f"{self.dropped_minority} outvoted, {self.dropped_wrong} wrong"
            + (f", {self.dropped_uncertain} of uncertain votes" if self.dropped_uncertain else ""),
        ]
        if self.replaced_code_points:
            lines.append(
                f"replies held {self.replaced_code_points} unpaired surrogate code points (not UTF-8); stored as U+FFFD"
            )
        if self.records_without_samples:
            lines.append(f"records written with no sample left after filtering: {self.records_without_samples}")
        if self.samples_with_gold:
            acc = self.samples_correct / self.samples_with_gold
            lines.append(
                f"teacher accuracy (per sample, unparsable count as wrong): {acc:.2%} "
                f"({self.samples_correct}/{self.samples_with_gold})"
            )
        if self.votes_with_gold:
            acc = self.votes_correct / self.votes_with_gold
            lines.append(f"teacher accuracy (majority vote): {acc:.2%} ({self.votes_correct}/{self.votes_with_gold})")
        u = self.usage
        lines.append(
            f"usage: {u.requests} requests ({u.retries} retries), {u.prompt_tokens} prompt + "
            f"{u.completion_tokens} completion tokens"
            + (f"; {u.responses_without_usage} replies reported no usage" if u.responses_without_usage else "")
        )
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        lines.append(f"time: {self.seconds:.1f}s ({rate:.2f} examples/s)")
        if self.failed:
            shown = sorted(self.failed)[:10]
            lines.append(
                f"FAILED (not written; run the same command again to retry them): {len(self.failed)} examples, e.g."
            )
            lines.extend(f"  {i}: {self.failed[i]}" for i in shown)
        if self.fatal_error:
            lines.append(f"STOPPED by a fatal error: {self.fatal_error}")
        if self.interrupted:
            lines.append("INTERRUPTED: finished examples are cached; run the same command again to continue")
        if self.complete:
            lines.append("done: every input example is in the cache")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class _Result:
    example: Example
    samples: Optional[tuple[TeacherSample, ...]] = None
    error: Optional[BaseException] = None
    replaced: int = 0  # code points of the replies replaced to make them storable


_DONE = object()
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Storable:
    """Makes reply text storable as UTF-8, counting the code points it replaces."""

    def __init__(self) -> None:
        self.replaced = 0

    def __call__(self, text: Optional[str]) -> Optional[str]:
        if text is None or text.isascii():
            return text
        text, n = _SURROGATE.subn("\ufffd", text)
        self.replaced += n
        return text


def _annotate_one(
    example: Example,
    backend: TeacherBackend,
    config: AnnotateConfig,
    parse: Parse,
    storable: Optional[_Storable] = None,
) -> tuple[TeacherSample, ...]:
    template = config.template
    prompt = template.render(example.fields)
    completions = backend.complete(
        prompt,
        config.num_samples,
        config.temperature,
        max_tokens=config.max_tokens,
        stop=template.stop if config.stop is None else config.stop,
        system=template.system,
    )
    storable = storable or _Storable()
    samples = []
    for c in completions:
        text, finish_reason = storable(c.text), storable(c.finish_reason)
        if c.structured:  # the student's: its parts are given, not parsed out of text
            rationale, label = storable(c.rationale), storable(c.label)
        else:
            parsed = parse(text)
            rationale, label = parsed.rationale, parsed.label
        samples.append(
            TeacherSample(
                rationale=rationale,
                label=label,
                completion=text,
                teacher=config.teacher,
                prompt_id=template.id,
                meta={"finish_reason": finish_reason} if finish_reason else {},
            )
        )
    return tuple(samples)


def _worker(jobs: queue.Queue, results: queue.Queue, stop: threading.Event, backend, config, parse) -> None:
    try:
        while not stop.is_set():
            try:
                example = jobs.get_nowait()
            except queue.Empty:
                return
            try:
                storable = _Storable()
                samples = _annotate_one(example, backend, config, parse, storable)
                results.put(_Result(example, samples=samples, replaced=storable.replaced))
            except BaseException as e:  # reported by the main thread, which decides what is fatal
                results.put(_Result(example, error=e))
    finally:
        results.put(_DONE)


def _record(example: Example, selection: Selection, config: AnnotateConfig) -> CacheRecord:
    info: dict[str, Any] = {
        "num_samples": selection.num_samples,
        "num_parsed": selection.num_parsed,
        "keep": config.keep,
    }
    if selection.vote is not None:
        info["vote"] = {"label": selection.vote.label, "count": selection.vote.count, "of": selection.vote.total}
    meta = dict(example.meta)
    meta["annotate"] = info
    return CacheRecord(
        id=example.id,
        input=example.input,
        label=example.label,
        samples=selection.kept,
        dataset=example.dataset,
        split=example.split,
        position=example.position,
        meta=meta,
    )


def _progress_bar(total: int, enabled: bool, stream: TextIO):
    from tqdm import tqdm  # imported here so library users who never annotate do not need it

    return tqdm(
        total=total, desc="annotate", unit="ex", file=stream, disable=not enabled, dynamic_ncols=True, smoothing=0.1
    )


def run_annotation(
    examples: Sequence[Example],
    backend: TeacherBackend,
    writer: CacheWriter,
    config: AnnotateConfig,
    parse: Parse,
    labels_match: LabelsMatch,
    progress_stream: TextIO = sys.stderr,
) -> Summary:
    """Annotates every example not yet in `writer`'s cache; returns what happened.

    `parse(completion)` gives an object with `.rationale` and `.label` (e.g.
    `functools.partial(parsers.parse_completion, family)`), `labels_match(a, b)` compares
    labels. A `FatalBackendError` or a KeyboardInterrupt stops new work (the finished
    records stay written) and is reported in the summary; any other error in a worker
    (a bug) stops the run and is re-raised.
    """
    summary = Summary(examples=len(examples))
    todo = [e for e in examples if e.id not in writer.ids]
    summary.skipped = len(examples) - len(todo)
    if summary.skipped:
        logging.info("%d of %d examples are already in %s; skipping them", summary.skipped, len(examples), writer.path)
    start = time.monotonic()
    jobs: queue.Queue = queue.Queue()
    for e in todo:
        jobs.put(e)
    results: queue.Queue = queue.Queue()
    stop = threading.Event()
    workers = [
        threading.Thread(
            target=_worker, args=(jobs, results, stop, backend, config, parse), daemon=True, name=f"annotate-{i}"
        )
        for i in range(min(config.concurrency, max(1, len(todo))))
    ]
    for w in workers:
        w.start()
    bar = _progress_bar(len(todo), config.progress and bool(todo), progress_stream)
    unexpected: Optional[BaseException] = None
    try:
        running = len(workers)
        while running:
            item = results.get()
            if item is _DONE:
                running -= 1
                continue
            if item.error is not None:
                if isinstance(item.error, RequestFailed):
                    summary.failed[item.example.id] = str(item.error)
                elif isinstance(item.error, FatalBackendError):
                    summary.fatal_error = summary.fatal_error or str(item.error)
                    stop.set()
                else:
                    unexpected = unexpected or item.error
                    stop.set()
            else:
                selection = select_samples(
                    item.samples,
                    item.example.label,
                    labels_match,
                    keep=config.keep,
                    vote=config.vote,
                    min_vote_share=config.min_vote_share,
                )
                writer.write(_record(item.example, selection, config))
                summary.add(selection)
                summary.replaced_code_points += item.replaced
            bar.update(1)
            bar.set_postfix(
                failed=len(summary.failed), unparsed=summary.unparsed, retries=backend.usage.retries, refresh=False
            )
    except KeyboardInterrupt:
        # Workers are daemon threads: in-flight requests are abandoned, nothing half-written.
        stop.set()
        summary.interrupted = True
    finally:
        bar.close()
        if summary.interrupted:
            # Ctrl-C can land between a record's append and its count: the file is the truth.
            writer.sync()
            todo_ids = {e.id for e in todo}
            summary.written = sum(1 for r in iter_cache(writer.path) if r.id in todo_ids)
        summary.pending = len(todo) - summary.written - len(summary.failed)
        summary.usage = backend.usage
        summary.seconds = time.monotonic() - start
    if unexpected is not None:
        raise unexpected
    return summary
