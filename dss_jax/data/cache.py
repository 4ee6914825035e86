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
flushed and fsynced. A half-written last line (a crash mid-write: no newline, does not
parse) is skipped by readers, and the next writer moves it to CACHE.torn-TIMESTAMP
and says so, so the file never holds a silently corrupt record and nothing is deleted.
A complete last line without its newline (another tool's "\n".join) is a record like
any other. Reading reports a malformed line by file and line number.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import json
import logging
import os
import time
from typing import Any, Iterable, Iterator, Optional

from dss_jax import files
from dss_jax.cli import UserError
from dss_jax.data import jsonl

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
        raise CacheFormatError(f"{where}: field {key!r} must be a string or null, got {_kind(value)}")
    return value


def _optional_object(obj: dict, key: str, where: str) -> dict:
    # `meta` is free-form inside, but an object: code reads it with .get and copies it.
    value = obj.get(key)
    if value is not None and not isinstance(value, dict):
        raise CacheFormatError(f"{where}: field {key!r} must be a JSON object or null, got {_kind(value)}")
    return value or {}


def _kind(value: Any) -> str:
    """A JSON value's type in JSON's words (so a message says 'boolean', not 'bool')."""
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def record_from_json(obj: Any, where: str = "<record>") -> CacheRecord:
    """Validates one decoded line; `where` ("file:line") prefixes every error.

    Types are checked exactly, as JSON has them: a boolean is not an integer, a list or a
    string is not an object, a number is not an id.
    """
    if not isinstance(obj, dict):
        raise CacheFormatError(f"{where}: expected a JSON object, got {_kind(obj)}")
    for key in ("id", "input"):
        if key not in obj:
            raise CacheFormatError(f"{where}: missing required field {key!r}")
        if not isinstance(obj[key], str):
            raise CacheFormatError(f"{where}: required field {key!r} must be a string, got {_kind(obj[key])}")
    if not obj["id"]:
        raise CacheFormatError(f"{where}: field 'id' is empty")
    if not obj["input"].strip():
        raise CacheFormatError(
            f"{where}: field 'input' is empty: a record without a problem can be neither trained on nor asked; "
            "give its text or remove the record"
        )
    raw_samples = obj.get("samples", [])
    if not isinstance(raw_samples, list):
        raise CacheFormatError(f"{where}: field 'samples' must be a list, got {_kind(raw_samples)}")
    samples = []
    for i, s in enumerate(raw_samples):
        swhere = f"{where}: samples[{i}]"
        if not isinstance(s, dict):
            raise CacheFormatError(f"{swhere}: expected a JSON object, got {_kind(s)}")
        samples.append(
            TeacherSample(
                rationale=_optional_str(s, "rationale", swhere),
                label=_optional_str(s, "label", swhere),
                completion=_optional_str(s, "completion", swhere) or "",
                teacher=_optional_str(s, "teacher", swhere) or "",
                prompt_id=_optional_str(s, "prompt_id", swhere) or "",
                meta=_optional_object(s, "meta", swhere),
            )
        )
    position = obj.get("position")
    if position is not None and (isinstance(position, bool) or not isinstance(position, int) or position < 0):
        raise CacheFormatError(
            f"{where}: field 'position' must be an integer >= 0 or null, "
            f"got {position if type(position) is int else _kind(position)}"
        )
    return CacheRecord(
        id=obj["id"],
        input=obj["input"],
        label=_optional_str(obj, "label", where),
        samples=tuple(samples),
        dataset=_optional_str(obj, "dataset", where),
        split=_optional_str(obj, "split", where),
        position=position,
        meta=_optional_object(obj, "meta", where),
    )


def iter_cache(path: str | os.PathLike) -> Iterator[CacheRecord]:
    """Yields the records of a cache file in order.

    A malformed line (not UTF-8, not JSON, too deep, an unpaired surrogate, a field of
    the wrong type) raises CacheFormatError naming the file and line. An unterminated
    last line that does not parse is a write cut short by a crash: it is skipped with a
    warning (the next `CacheWriter` on the file moves it aside). Duplicate ids are an error.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"teacher cache not found: {path}")
    seen: dict[str, int] = {}
    for line in jsonl.read_lines(path, CacheFormatError, what="teacher cache", torn_tail=True):
        record = record_from_json(line.value, line.where)
        if record.id in seen:
            raise CacheFormatError(f"{line.where}: duplicate id {record.id!r} (first at line {seen[record.id]})")
        seen[record.id] = line.number
        yield record


def read_cache(path: str | os.PathLike) -> list[CacheRecord]:
    return list(iter_cache(path))


def load_records(path: str | os.PathLike) -> tuple[CacheRecord, ...]:
    """The records of a cache file, read once per process while the file is unchanged
    (a task's splits and its vocabulary corpus read the same file)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"teacher cache not found: {path}")
    stat = os.stat(path)
    return _load_records(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _load_records(path: str, mtime_ns: int, size: int) -> tuple[CacheRecord, ...]:
    del mtime_ns, size  # part of the key: a rewritten file is read again
    return tuple(iter_cache(path))


def _tail(f) -> tuple[int, bytes]:
    """(offset, bytes) of what follows the last newline of an open (r+b) file."""
    f.seek(0, os.SEEK_END)
    pos = size = f.tell()
    block = 1 << 16
    while pos > 0:
        start = max(0, pos - block)
        f.seek(start)
        idx = f.read(pos - start).rfind(b"\n")
        if idx >= 0:
            pos = start + idx + 1
            break
        pos = start
    f.seek(pos)
    return pos, f.read(size - pos)


def _free_name(base: str) -> str:
    name, n = base, 1
    while os.path.lexists(name):
        n += 1
        name = f"{base}-{n}"
    return name


def _settle_tail(f, path: str) -> Optional[str]:
    """Ends the file with a newline before appending; returns where a torn tail was kept.

    A last line without a newline is kept (given its newline) when it is JSON: another
    tool's "\n".join(...) writes every record that way. Only a tail that does not
    parse, the leftover of a crash mid-write, leaves the cache, and it is not deleted
    but moved to PATH.torn-TIMESTAMP, which the warning names.
    """
    offset, tail = _tail(f)
    if not tail:
        return None
    kept = None
    if tail.strip() and not jsonl.is_json(tail):
        kept = _free_name(f"{path}.torn-{time.strftime('%Y%m%dT%H%M%S')}")
        with open(kept, "xb") as torn:
            torn.write(tail)
            torn.flush()
            os.fsync(torn.fileno())
        f.truncate(offset)
        logging.warning(
            "%s: its last line (%d bytes) was cut short, as by a crash mid-write; moved it to %s", path, len(tail), kept
        )
    else:
        f.seek(0, os.SEEK_END)
        f.write(b"\n")
    f.flush()
    os.fsync(f.fileno())
    return kept


class CacheLockedError(UserError, RuntimeError):
    """The cache is being written by another process, or cannot be opened for writing."""


class CacheWriter:
    """Appends records to a cache file, one whole line each.

    Holds an exclusive lock on the file so two writers cannot interleave. Opening
    checks the whole file first (any malformed line is an error, and nothing is
    written); then a last line without its newline gets one, or, when it does not
    parse (a crash mid-write), is moved to `torn_path`. `ids` holds every id already in
    the file, so a resumed run can skip finished examples; writing an id twice is refused.
    """

    def __init__(self, path: str | os.PathLike, fsync: bool = True):
        self.path = os.fspath(path)
        self._fsync = fsync
        if os.path.exists(self.path) and not os.path.isfile(self.path):
            raise CacheLockedError(
                f"{self.path} is not a regular file (a directory?); give the path of the "
                "cache file (JSONL) to append to"
            )
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._file = open(self.path, "a+b")
        except OSError as e:
            raise CacheLockedError(f"cannot open the teacher cache {self.path} for appending: {e.strerror}") from None
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise CacheLockedError(f"{self.path} is being written by another process") from None
        try:
            self.ids: set[str] = {r.id for r in iter_cache(self.path)}
            self.torn_path: Optional[str] = _settle_tail(self._file, self.path)
        except BaseException:
            self.close()
            raise

    def write(self, record: CacheRecord | dict) -> None:
        where = f"{self.path}: new record"
        if isinstance(record, dict):
            record = record_from_json(record, where)
        obj = record.to_json()
        record_from_json(obj, where)  # never write what the reader would refuse
        if record.id in self.ids:
            raise ValueError(f"{self.path}: id {record.id!r} is already in the cache")
        try:
            line = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
        except UnicodeEncodeError:
            raise CacheFormatError(
                f"{where} {record.id!r}: {jsonl.find_lone_surrogate(obj)} holds an unpaired "
                "UTF-16 surrogate, which cannot be written as UTF-8; nothing written"
            ) from None
        with files.naming_the_file(self.path):  # a full disk: one line naming the cache
            self._file.seek(0, os.SEEK_END)
            self._file.write(line)
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
        with files.naming_the_file(self.path):
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            with files.naming_the_file(self.path):
                self._file.close()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
