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

A cache may be an object-store URL (gs://bucket/cache.jsonl), read where it is. An
object cannot be appended to, so `CacheWriter` writes a local working copy and uploads
it whole from time to time, at each sync() and at the end; see its docstring.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import os
import pathlib
import shutil
import time
import uuid
from typing import Any, Iterable, Iterator, Optional

from dss_jax import cli, files
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


def iter_cache(path: str | os.PathLike, shown_as: Optional[str] = None) -> Iterator[CacheRecord]:
    """Yields the records of a cache file in order.

    A malformed line (not UTF-8, not JSON, too deep, an unpaired surrogate, a field of
    the wrong type) raises CacheFormatError naming the file and line. An unterminated
    last line that does not parse is a write cut short by a crash: it is skipped with a
    warning (the next `CacheWriter` on the file moves it aside). Duplicate ids are an error.
    `path` may be an object-store URL; `shown_as` names the file in messages instead.
    """
    path = os.fspath(path)
    if not files.path(path).exists():
        raise FileNotFoundError(f"teacher cache not found: {path}")
    seen: dict[str, int] = {}
    for line in jsonl.read_lines(path, CacheFormatError, what="teacher cache", torn_tail=True, shown_as=shown_as):
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
    p = files.path(path)
    if not p.is_file():
        raise FileNotFoundError(f"teacher cache not found: {path}")
    size, mtime_ns = files.size_and_mtime_ns(path)
    return _load_records(path, mtime_ns, size)


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
    while os.path.lexists(name) if not files.is_remote(name) else files.path(name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def _keep_torn(name: str, tail: bytes) -> None:
    if files.is_remote(name):
        files.path(name).write_bytes(tail)  # an object appears whole: nothing to fsync
        return
    with open(name, "xb") as torn:
        torn.write(tail)
        torn.flush()
        os.fsync(torn.fileno())


def _settle_tail(f, path: str) -> Optional[str]:
    """Ends the file with a newline before appending; returns where a torn tail was kept.

    A last line without a newline is kept (given its newline) when it is JSON: another
    tool's "\n".join(...) writes every record that way. Only a tail that does not
    parse, the leftover of a crash mid-write, leaves the cache, and it is not deleted
    but moved to PATH.torn-TIMESTAMP, which the warning names. `f` is the open local file;
    `path` is where the cache lives (an object-store URL for a remote cache's working
    copy: the torn tail is kept beside the object).
    """
    offset, tail = _tail(f)
    if not tail:
        return None
    kept = None
    if tail.strip() and not jsonl.is_json(tail):
        kept = _free_name(f"{path}.torn-{time.strftime('%Y%m%dT%H%M%S')}")
        _keep_torn(kept, tail)
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


# A cache on an object store is written through a local working copy, uploaded whole (an
# object cannot be appended to) at most this often while records come in, and at every
# sync() and close().
REMOTE_UPLOAD_SECONDS = 10.0


def working_copy_path(url: str) -> str:
    """Where the local working copy of the remote cache `url` lives: in the project's cache
    directory, one per URL, so that a run killed between two uploads leaves its records
    there and the next run on this machine puts them back in the cache."""
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return os.path.join(cli.project_cache_dir(), "remote_caches", f"{key}.{files.path(url).name}")


class CacheWriter:
    """Appends records to a cache file, one whole line each.

    Holds an exclusive lock on the file so two writers cannot interleave. Opening
    checks the whole file first (any malformed line is an error, and nothing is
    written); then a last line without its newline gets one, or, when it does not
    parse (a crash mid-write), is moved to `torn_path`. `ids` holds every id already in
    the file, so a resumed run can skip finished examples; writing an id twice is refused.

    An object-store URL (gs://...) is written through a local working copy
    (`working_copy_path`) that holds the object's records and the new ones and is
    uploaded whole every `upload_seconds` while records are written, at `sync()` and at
    `close()`; a clean close removes it. A run killed between two uploads leaves its
    newer records there: the next writer of the URL on this machine appends those the
    object lacks, so nothing annotated is lost. The lock (a file beside the working copy)
    keeps out a second writer on this machine only: an object store has no locks.
    """

    def __init__(self, path: str | os.PathLike, fsync: bool = True, upload_seconds: float = REMOTE_UPLOAD_SECONDS):
        self.path = os.fspath(path)
        self._fsync = fsync
        self._remote = files.is_remote(self.path)
        self._upload_seconds = upload_seconds
        self._dirty = False  # remote: records written since the last upload
        self._last_upload = time.monotonic()
        self._lock = None  # remote: the working copy's lock file
        target = files.path(self.path) if self._remote else pathlib.Path(self.path)
        if target.exists() and not target.is_file():
            raise CacheLockedError(
                f"{self.path} is not a regular file (a directory?); give the path of the "
                "cache file (JSONL) to append to"
            )
        if self._remote:
            self._open_remote()
            return
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

    def _open_remote(self) -> None:
        """The working copy made from the object (checked as a local cache is), plus the
        records a stopped run left in the old working copy that the object lacks; uploaded
        when that changed the object. The old working copy is replaced only once the new
        one is whole, so a failure here loses nothing."""
        local = working_copy_path(self.path)
        try:
            os.makedirs(os.path.dirname(local), exist_ok=True)
            # The working copy is replaced by a rename, so the lock is a file of its own.
            self._lock = open(local + ".lock", "a+b")
        except OSError as e:
            raise CacheLockedError(
                f"cannot write the working copy of the teacher cache {self.path} ({local}): {e.strerror}"
            ) from None
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise CacheLockedError(f"{self.path} is being written by another process on this machine") from None
        self._local = local
        fresh = f"{local}.{uuid.uuid4().hex}.tmp"
        try:
            left: list[CacheRecord] = []
            if os.path.exists(local):
                try:
                    left.extend(iter_cache(local))
                except CacheFormatError as e:  # keep what parses; the rest was never the cache's
                    logging.warning("%s: its working copy is unreadable after %d records: %s", self.path, len(left), e)
            target = files.path(self.path)
            with open(fresh, "w+b") as f:
                if target.exists():
                    with target.open("rb") as src:
                        shutil.copyfileobj(src, f, 1 << 22)
                f.flush()
                size = f.tell()
                self.ids = {r.id for r in iter_cache(fresh, shown_as=self.path)}
                self.torn_path = _settle_tail(f, self.path)
                recovered = [r for r in left if r.id not in self.ids]
                for record in recovered:
                    f.seek(0, os.SEEK_END)
                    f.write(self._line(record))
                    self.ids.add(record.id)
                changed = f.seek(0, os.SEEK_END) != size or self.torn_path is not None
                f.flush()
                os.fsync(f.fileno())
            os.replace(fresh, local)
            self._file = open(local, "a+b")
        except BaseException:
            if os.path.exists(fresh):
                os.unlink(fresh)
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            raise
        if recovered:
            logging.warning(
                "%s: appended %d records that a run stopped before uploading them had left in %s",
                self.path,
                len(recovered),
                local,
            )
        if changed:
            self._dirty = True
            try:
                self._upload()
            except BaseException:
                self._release()  # the working copy keeps the records for the next run
                raise

    def _upload(self) -> None:
        """Sends the working copy whole to the object store (from the open file: the path is
        only a name for the next run to find)."""
        self._file.flush()
        self._file.seek(0)
        with files.naming_the_file(self.path), files.path(self.path).open("wb") as dst:
            shutil.copyfileobj(self._file, dst, 1 << 22)
        self._file.seek(0, os.SEEK_END)
        self._dirty = False
        self._last_upload = time.monotonic()

    def _line(self, record: CacheRecord) -> bytes:
        """The record's line; refused (nothing written) when the reader would refuse it."""
        where = f"{self.path}: new record"
        obj = record.to_json()
        record_from_json(obj, where)  # never write what the reader would refuse
        try:
            return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
        except UnicodeEncodeError:
            raise CacheFormatError(
                f"{where} {record.id!r}: {jsonl.find_lone_surrogate(obj)} holds an unpaired "
                "UTF-16 surrogate, which cannot be written as UTF-8; nothing written"
            ) from None

    def write(self, record: CacheRecord | dict) -> None:
        if isinstance(record, dict):
            record = record_from_json(record, f"{self.path}: new record")
        if record.id in self.ids:
            raise ValueError(f"{self.path}: id {record.id!r} is already in the cache")
        line = self._line(record)
        with files.naming_the_file(self.path):  # a full disk: one line naming the cache
            self._file.seek(0, os.SEEK_END)
            self._file.write(line)
            self._file.flush()
            if self._fsync:
                os.fsync(self._file.fileno())
        self.ids.add(record.id)
        if self._remote:
            self._dirty = True
            if time.monotonic() - self._last_upload >= self._upload_seconds:
                self._upload()

    def write_all(self, records: Iterable[CacheRecord | dict]) -> int:
        n = 0
        for r in records:
            self.write(r)
            n += 1
        return n

    def sync(self) -> None:
        """Forces written records to disk (for writers opened with fsync=False), and to the
        object store for a remote cache."""
        with files.naming_the_file(self.path):
            self._file.flush()
            os.fsync(self._file.fileno())
        if self._remote and self._dirty:
            self._upload()

    def close(self) -> None:
        if self._file.closed:
            return
        try:
            if self._remote:
                if self._dirty:
                    self._upload()
                # Uploaded: the working copy holds nothing the object lacks.
                os.unlink(self._local)
        finally:
            self._release()

    def _release(self) -> None:
        lock = self._lock or self._file
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
        with files.naming_the_file(self.path):
            self._file.close()
        if self._lock is not None:
            self._lock.close()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc) -> None:
        # A remote cache is uploaded on an error too: what was written is finished work.
        self.close()
