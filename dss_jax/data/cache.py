"""The teacher cache: an open JSONL format for a large model's cached outputs.

One JSON object per line, one line per example:

    {"id": "svamp/train/0",                 # stable example id (unique in the file)
     "input": "Luke scored 84 points ...",  # the model input text, as the student sees it
     "label": "( 84.0 / 2.0 )",             # ground-truth label, or null when unknown
     "dataset": "svamp", "split": "train", "position": 0,   # where it came from (optional)
     "samples": [                           # zero or more teacher samples
        {"rationale": "Luke scored 84 points after 2 rounds. ...",  # null when unparsed
         "label": "(84 / 2)",                                       # null when unparsed
         "completion": "<the raw text the teacher returned>",
         "teacher": "palm-540b", "prompt_id": "dss-paper-cot"}],
     "meta": {}}                            # free-form, kept as is

Writing is append-only and crash-safe: each record is one `write` of a whole line,
flushed and fsynced; a half-written last line (a crash mid-write) is detected when the
file is next opened for appending, reported, and cut off, so the file never holds a
silently corrupt record. Reading reports a malformed line by file and line number.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
from typing import Any, Iterable, Iterator, Optional

from dss_jax.cli import UserError

FORMAT_VERSION = 1


class CacheFormatError(UserError, ValueError):
    """A cache file that does not follow the format; the message names file and line."""


@dataclasses.dataclass(frozen=True)
class TeacherSample:
    rationale: Optional[str]
    label: Optional[str]
    completion: str = ""
    teacher: str = ""
    prompt_id: str = ""
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def parsed(self) -> bool:
        return self.rationale is not None and self.label is not None


@dataclasses.dataclass(frozen=True)
class CacheRecord:
    id: str
    input: str
    label: Optional[str] = None
    samples: tuple[TeacherSample, ...] = ()
    dataset: Optional[str] = None
    split: Optional[str] = None
    position: Optional[int] = None
    meta: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "input": self.input, "label": self.label}
        for key in ("dataset", "split", "position"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["samples"] = []
        for s in self.samples:
            sample = {
                "rationale": s.rationale,
                "label": s.label,
                "completion": s.completion,
                "teacher": s.teacher,
                "prompt_id": s.prompt_id,
            }
            if s.meta:
                sample["meta"] = s.meta
            out["samples"].append(sample)
        if self.meta:
            out["meta"] = self.meta
        return out

    @property
    def parsed_samples(self) -> tuple[TeacherSample, ...]:
        return tuple(s for s in self.samples if s.parsed)


def _optional_str(obj: dict, key: str, where: str) -> Optional[str]:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise CacheFormatError(f"{where}: field {key!r} must be a string or null, got {type(value).__name__}")
    return value


def record_from_json(obj: Any, where: str = "<record>") -> CacheRecord:
    """Validates one decoded line; `where` ("file:line") prefixes every error."""
    if not isinstance(obj, dict):
        raise CacheFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("id", "input"):
        if not isinstance(obj.get(key), str):
            raise CacheFormatError(f"{where}: missing or non-string required field {key!r}")
    raw_samples = obj.get("samples", [])
    if not isinstance(raw_samples, list):
        raise CacheFormatError(f"{where}: field 'samples' must be a list")
    samples = []
    for i, s in enumerate(raw_samples):
        swhere = f"{where}: samples[{i}]"
        if not isinstance(s, dict):
            raise CacheFormatError(f"{swhere}: expected a JSON object")
        samples.append(
            TeacherSample(
                rationale=_optional_str(s, "rationale", swhere),
                label=_optional_str(s, "label", swhere),
                completion=_optional_str(s, "completion", swhere) or "",
                teacher=_optional_str(s, "teacher", swhere) or "",
                prompt_id=_optional_str(s, "prompt_id", swhere) or "",
                meta=s.get("meta") or {},
            )
        )
    position = obj.get("position")
    if position is not None and not isinstance(position, int):
        raise CacheFormatError(f"{where}: field 'position' must be an integer")
    return CacheRecord(
        id=obj["id"],
        input=obj["input"],
        label=_optional_str(obj, "label", where),
        samples=tuple(samples),
        dataset=_optional_str(obj, "dataset", where),
        split=_optional_str(obj, "split", where),
        position=position,
        meta=obj.get("meta") or {},
    )


def iter_cache(path: str | os.PathLike) -> Iterator[CacheRecord]:
    """Yields the records of a cache file in order.

    A malformed line raises CacheFormatError naming the file and line. An unterminated
    last line that does not parse is a write cut short by a crash: it is skipped with a
    warning (the next `CacheWriter` on the file removes it). Duplicate ids are an error.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"teacher cache not found: {path}")
    seen: dict[str, int] = {}
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    for lineno, raw in enumerate(lines, start=1):
        is_unterminated_tail = lineno == len(lines)
        if not raw.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if is_unterminated_tail:
                logging.warning("%s: half-written last line (%d bytes) ignored", where, len(raw))
                return
            raise CacheFormatError(f"{where}: not valid JSON ({e}); fix or delete this line") from None
        record = record_from_json(obj, where)
        if record.id in seen:
            raise CacheFormatError(
                f"{where}: duplicate id {record.id!r} (first at line {seen[record.id]})"
            )
        seen[record.id] = lineno
        yield record


def read_cache(path: str | os.PathLike) -> list[CacheRecord]:
    return list(iter_cache(path))


def _repair_tail(f) -> int:
    """Cuts a half-written last line off an open (r+b) file; returns bytes removed."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    if size == 0:
        return 0
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return 0
    # Walk back to the previous newline in blocks.
    pos = size
    block = 1 << 16
    cut = 0
    while pos > 0:
        start = max(0, pos - block)
        f.seek(start)
        chunk = f.read(pos - start)
        idx = chunk.rfind(b"\n")
        if idx >= 0:
            cut = start + idx + 1
            break
        pos = start
    f.truncate(cut)
    f.flush()
    os.fsync(f.fileno())
    return size - cut


class CacheWriter:
    """Appends records to a cache file, one whole line each.

    Holds an exclusive lock on the file so two writers cannot interleave; repairs a
    half-written tail on open. `ids` holds every id already in the file, so a resumed
    run can skip finished examples; writing an id twice is refused.
    """

    def __init__(self, path: str | os.PathLike, fsync: bool = True):
        self.path = os.fspath(path)
        self._fsync = fsync
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        self._file = open(self.path, "a+b")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise RuntimeError(f"{self.path} is being written by another process") from None
        removed = _repair_tail(self._file)
        if removed:
            logging.warning("%s: removed a half-written last line (%d bytes)", self.path, removed)
        self.ids: set[str] = {r.id for r in iter_cache(self.path)}

    def write(self, record: CacheRecord | dict) -> None:
        if isinstance(record, dict):
            record = record_from_json(record, f"{self.path}: new record")
        if record.id in self.ids:
            raise ValueError(f"{self.path}: id {record.id!r} is already in the cache")
        line = json.dumps(record.to_json(), ensure_ascii=False) + "\n"
        self._file.seek(0, os.SEEK_END)
        self._file.write(line.encode("utf-8"))
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())
        self.ids.add(record.id)

    def write_all(self, records: Iterable[CacheRecord | dict]) -> int:
        n = 0
        for r in records:
            self.write(r)
            n += 1
        return n

    def sync(self) -> None:
        """Forces written records to disk (for writers opened with fsync=False)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
