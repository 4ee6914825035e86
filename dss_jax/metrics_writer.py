"""Where training and evaluation numbers go: TensorBoard, `metrics.jsonl`, a progress line.

Only process 0 writes; every process computes the same (replicated) scalars.

A resumed run recomputes the steps after its checkpoint, so their old numbers are
superseded: `MetricsWriter(..., resume_step=S)` first rewrites `metrics.jsonl` without
the records of steps after S (a new file renamed over the old one, so a crash leaves one
or the other whole), and opens a new TensorBoard events file that starts with a purge
at step S+1 (TensorBoard's file_version 2 / SessionLog.START semantics: the reader drops
the earlier files' events at and after that step). Every step then has one value.
An evaluation written again over an earlier one (eval with OVERWRITE) replaces the
step's record: `write(..., replace=True)` rewrites `metrics.jsonl` without the old one
and the writer's events file as a purge of every earlier value followed by each record
of `metrics.jsonl`. A write that fails (a full disk) names its file.

LOG_DIR may be on an object store (gs://): objects cannot be appended to, so metrics.jsonl
and the events file are kept whole in memory and uploaded whole at each flush (each
record), and a rewrite uploads the new file in one piece.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import os
import socket
import sys
import time
from typing import Mapping, Optional

import jax

from dss_jax import files


class MetricsWriter:
    """Appends records to LOG_DIR/metrics.jsonl and TensorBoard events.

    resume_step: the step the run continues from (its restored checkpoint, 0 for a fresh
    start); records of later steps left by an earlier attempt are superseded. None: keep
    everything (a writer that never re-runs steps).
    """

    def __init__(
        self,
        log_dir: str,
        *,
        jsonl_name: str = "metrics.jsonl",
        tensorboard: bool = True,
        resume_step: Optional[int] = None,
    ):
        self.log_dir = log_dir
        self.enabled = jax.process_index() == 0
        self._tb = None
        if self.enabled:
            files.makedirs(log_dir)
            path = self.jsonl_path = os.path.join(log_dir, jsonl_name)
            if resume_step is not None and files.path(path).exists():
                drop_records_after(path, resume_step)
            with files.naming_the_file(path):
                self._jsonl = files.open_growing(path)
            if tensorboard:
                # Each writer opens a new events file; after an earlier attempt's files, it
                # starts with a purge of the steps this run recomputes.
                earlier = any(n.startswith("events.out.tfevents") for n in _names_in(log_dir))
                purge_step = resume_step + 1 if resume_step is not None and earlier else None
                self._tb = EventsFile(log_dir, purge_step=purge_step)

    def write(self, step: int, scalars: Mapping[str, float], prefix: str = "", *, replace: bool = False) -> None:
        """Appends the record of `step`; `replace`: the step's earlier records are dropped
        first, from metrics.jsonl and from what TensorBoard shows."""
        if not self.enabled:
            return
        clean = {f"{prefix}{k}": float(v) for k, v in scalars.items()}
        record = {"step": int(step), **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}
        replaced = replace and drop_records_of(self.jsonl_path, int(step))
        if replaced:  # the file was replaced: append to the new one
            self._jsonl.close()
            with files.naming_the_file(self.jsonl_path):
                self._jsonl = files.open_growing(self.jsonl_path)
        with files.naming_the_file(self.jsonl_path):
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tb is None:
            return
        if replaced:
            self._tb = self._tb.rewritten(read_records(self.jsonl_path))
        else:
            self._tb.write_scalars(int(step), clean)

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


class EventsFile:
    """One TensorBoard events file of scalars, written with tensorboard's own record
    framing and protos (no TensorFlow, no torch: tensorboardX imports torch when it is
    installed, 3 s of every run's start-up). Each write is flushed (`flush=False`: not
    the first ones, until `write_scalars` flushes). On an object store the file is kept in
    memory and uploaded whole at each flush (`files.open_growing`)."""

    def __init__(
        self, log_dir: str, purge_step: Optional[int] = None, *, path: Optional[str] = None, flush: bool = True
    ):
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event_pb2 = event_pb2
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_FILE_IDS)}"
        self.path = path or os.path.join(log_dir, name)
        with files.naming_the_file(self.path):
            self._records = RecordWriter(files.open_growing(self.path, keep=False, binary=True))
        self._add(event_pb2.Event(file_version="brain.Event:2"), step=purge_step)
        if purge_step is not None:
            # TensorBoard drops the earlier files' events at and after a START session log.
            self._add(
                event_pb2.Event(session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)), step=purge_step
            )
        if flush:
            with files.naming_the_file(self.path):
                self._records.flush()

    def _add(self, event, step: Optional[int] = None) -> None:
        event.wall_time = time.time()
        if step is not None:
            event.step = step
        with files.naming_the_file(self.path):
            self._records.write(event.SerializeToString())

    def write_scalars(self, step: int, scalars: Mapping[str, float], *, flush: bool = True) -> None:
        from tensorboard.compat.proto import summary_pb2

        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
        self._add(self._event_pb2.Event(summary=summary_pb2.Summary(value=values)), step=step)
        if flush:
            with files.naming_the_file(self.path):
                self._records.flush()

    def rewritten(self, records: list[dict]) -> "EventsFile":
        """This file replaced (atomically, under its name) by one that purges every earlier
        value (a START at step 0) and holds `records` (metrics.jsonl's), open for more. The
        file is this writer's own, newer than every earlier one in the directory."""
        self.close()
        log_dir = os.path.dirname(self.path)
        if files.is_remote(self.path):
            # Built in memory and uploaded whole at its one flush: an object is replaced whole.
            new = EventsFile(log_dir, purge_step=0, path=self.path, flush=False)
            for r in records:
                new.write_scalars(r["step"], {k: float(v) for k, v in r.items() if k != "step"}, flush=False)
            with files.naming_the_file(self.path):
                new._records.flush()
            return new
        with files.atomic_output(self.path) as tmp:
            new = EventsFile(log_dir, purge_step=0, path=str(tmp))
            new.path = self.path  # later writes are named by the final path
            for r in records:
                new.write_scalars(r["step"], {k: float(v) for k, v in r.items() if k != "step"})
        return new

    def close(self) -> None:
        with files.naming_the_file(self.path):
            self._records.close()


def _names_in(directory: str) -> list[str]:
    """The names of the entries of a directory (local or gs://); [] when there is none."""
    d = files.path(directory)
    return [e.name for e in d.iterdir()] if d.is_dir() else []


def _read_lines(path: str) -> list[str]:
    """A text file's lines as `open(path, encoding="utf-8", errors="replace")` reads them,
    local or gs:// (read whole: metrics files are small)."""
    with files.path(path).open("rb") as f:
        data = f.read()
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace").readlines()


_FILE_IDS = itertools.count()


def drop_records_after(path: str, step: int) -> int:
    """Rewrites a metrics.jsonl without the records of steps after `step` (and without a
    torn last line); returns how many lines were dropped. Write-new-then-rename: a crash
    at any point leaves either the old file or the new one, never a mix."""
    lines = _read_lines(path)
    kept = [line for line in lines if _record_step(line) is not None and _record_step(line) <= step]
    dropped = len(lines) - len(kept)
    if not dropped:
        return 0
    files.atomic_write(path, "".join(kept), fsync=True)
    logging.info("%s: dropped %d record(s) after step %d, superseded by the resumed run", path, dropped, step)
    return dropped


def drop_records_of(path: str, step: int) -> int:
    """Rewrites a metrics.jsonl without the records of `step` (a new file renamed into
    place); returns how many were dropped."""
    if not files.path(path).exists():
        return 0
    lines = _read_lines(path)
    kept = [line for line in lines if _record_step(line) != step]
    if len(kept) == len(lines):
        return 0
    files.atomic_write(path, "".join(kept), fsync=True)
    return len(lines) - len(kept)


def read_records(path: str) -> list[dict]:
    """The whole records of a metrics.jsonl, in file order ([] when there is none); a
    torn or malformed line (a writer killed mid-line) is left out."""
    if not files.path(path).exists():
        return []
    return [json.loads(line) for line in _read_lines(path) if _record_step(line) is not None]


def _record_step(line: str) -> Optional[int]:
    """The step of one metrics line; None for a line that is not a whole record."""
    if not line.endswith("\n"):
        return None  # torn: the writer died mid-line, after the last checkpoint
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


class Progress:
    """One line per report: step, loss, tokens/s, ETA (stderr, process 0 only); the loop
    reports every log_period steps and, between those, whenever `due()`."""

    def __init__(self, total_steps: int, start_step: int, stream=None, period_seconds: float = 30.0):
        self.total = total_steps
        self.start_step = start_step
        self.t0 = self.last = time.time()
        self.stream = stream or sys.stderr
        self.enabled = jax.process_index() == 0
        self.period = period_seconds

    def due(self) -> bool:
        """Whether `period_seconds` passed since the last line (so a run whose log_period
        is long, or whose first steps compile, still shows progress)."""
        return self.enabled and time.time() - self.last >= self.period

    def eta_seconds(self, step: int) -> Optional[float]:
        done = step - self.start_step
        if done <= 0:
            return None
        return (time.time() - self.t0) / done * (self.total - step)

    def report(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        self.last = time.time()
        eta = self.eta_seconds(step)
        parts = [f"step {step}/{self.total}"]
        for key, fmt in (
            ("loss", "loss {:.4f}"),
            ("label/loss", "label {:.4f}"),
            ("rationale/loss", "rationale {:.4f}"),
            ("label/accuracy", "label_acc {:.3f}"),
            ("real_tokens_per_second", "{:.0f} tok/s"),
        ):
            if key in scalars:
                parts.append(fmt.format(scalars[key]))
        if eta is not None:
            parts.append(f"ETA {_hms(eta)}")
        print(" | ".join(parts), file=self.stream, flush=True)


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
