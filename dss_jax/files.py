"""Where every path a user gives goes (a local one or an object-store URL such as
gs://bucket/run), writing a file so that nobody sees half of it, and reading a JSON object
with an error that names the file.

    from dss_jax import files

    p = files.path(model_dir) / "task.json"          # pathlib.Path, or etils.epath.Path for gs://
    files.is_remote(p); files.absolute(p)             # a URL stays as it is
    with files.open_growing(path) as f: ...           # a log a run extends (metrics.jsonl)
    files.copy(src, dst); files.rmtree(d); files.upload_tree(local_dir, remote_dir)

    files.atomic_write(path, text)                    # str or bytes
    with files.atomic_output(path) as tmp:            # anything that writes to a path
        CacheWriter(tmp).write_all(records)
    files.read_json_object(path, MyError, "what it is for")   # a dict, or MyError naming the file
    with files.naming_the_file(path):                 # a failed write names `path`
        f.write(line)

Object stores go through etils.epath (as in T5X and MaxText), served by fsspec (gcsfs for
gs://): pathlib's API over URLs, so a module written against `files.path` reads and
writes both. Local paths stay pathlib.Path. What an object store cannot do and what we do
instead is in docs/cloud.md: an object appears whole when its upload ends (so an atomic
write uploads a finished local file); a log that grows is uploaded whole at each flush.

A reader sees the old file or the new one, never a part; a failed or interrupted write
leaves the old file as it was and no temporary file behind, and its error names `path`
(a write on a full disk fails naming no file; a binary's one error line needs one).
The temporary name is unique per writer (also across hosts sharing a file system, whose
pids may clash), so concurrent writers of the same bytes (every process generating the
same dataset) are safe: the last rename wins.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import re
import shutil
import tempfile
import uuid
from typing import IO, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]

# The object stores epath serves, with the fsspec package each needs. Our own gs:// code is
# tested against a GCS emulator (tests/gcs_emulator.py); s3 and az go through the same calls.
OBJECT_STORES = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs"}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")

# epath would route gs:// through tf.io.gfile whenever TensorFlow is installed (seqio brings
# it): a second GCS client that ignores emulators. One client, gcsfs, serves ours and orbax's.
os.environ.setdefault("EPATH_USE_TF", "false")


def _no_listing_cache() -> None:
    """gcsfs keeps every listing it made, never expired: a process that listed a run would
    then miss or mis-size what another process (a trainer, a sweep's run) wrote since."""
    import fsspec.config

    for protocol in ("gs", "gcs"):
        fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)


_no_listing_cache()


def scheme(path: PathLike) -> Optional[str]:
    """The URL scheme of `path` ("gs"), or None for a local path."""
    found = _URL.match(os.fspath(path))
    return found.group(1).lower() if found else None


def is_remote(path: PathLike) -> bool:
    """True for an object-store URL (gs://bucket/x), False for a local path."""
    return scheme(path) is not None


def path(p: PathLike):
    """The path a user gave, as a path object: an etils.epath.Path for an object-store URL
    (pathlib's API over gs://), a pathlib.Path (with ~ expanded) for a local path."""
    if isinstance(p, pathlib.Path):
        return p
    if is_remote(p):
        from etils import epath

        return p if isinstance(p, epath.Path) else epath.Path(os.fspath(p))
    return pathlib.Path(os.path.expanduser(os.fspath(p)))


def absolute(p: PathLike) -> str:
    """`p` made absolute (a local path, ~ expanded); a URL as it is, less a trailing /."""
    text = os.fspath(p)
    if is_remote(text):
        return str(path(text))
    return os.path.abspath(os.path.expanduser(text))


def temporary_path(path_: PathLike) -> pathlib.Path:
    """A unique temporary name beside a local path (for a URL: in a fresh local directory,
    since the file is uploaded whole when it is finished)."""
    if is_remote(path_):
        return pathlib.Path(tempfile.mkdtemp(prefix="dss_upload_")) / path(path_).name
    p = pathlib.Path(path_)
    return p.with_name(f".{p.name}.{uuid.uuid4().hex}.tmp")


def upload(local: PathLike, remote: PathLike) -> None:
    """Copies the local file `local` to `remote` (any path) in one upload, streamed."""
    with open(local, "rb") as src, path(remote).open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)


def copy(src: PathLike, dst: PathLike) -> None:
    """Copies the file `src` to `dst`, each local or remote, streamed."""
    if not is_remote(src) and not is_remote(dst):
        shutil.copyfile(src, dst)
        return
    with path(src).open("rb") as f, path(dst).open("wb") as g:
        shutil.copyfileobj(f, g, 1 << 22)


def upload_tree(local_dir: PathLike, remote_dir: PathLike) -> None:
    """Copies every file below `local_dir` to the same place below `remote_dir`."""
    local_dir = pathlib.Path(local_dir)
    for f in sorted(local_dir.rglob("*")):
        if f.is_file():
            dst = path(remote_dir) / f.relative_to(local_dir).as_posix()
            if not is_remote(dst):
                dst.parent.mkdir(parents=True, exist_ok=True)
            upload(f, dst)


def rmtree(p: PathLike, missing_ok: bool = False) -> None:
    """Removes the directory `p` and everything below it (a URL: every object under it)."""
    if is_remote(p):
        path(p).rmtree(missing_ok=missing_ok)
    elif missing_ok:
        shutil.rmtree(p, ignore_errors=True)
    else:
        shutil.rmtree(p)


def size_and_mtime_ns(p: PathLike) -> tuple[int, int]:
    """(bytes, when last written in ns) of a file, local or an object (whose times count
    whole seconds: a rewrite within the same second shows only if its size differs)."""
    stat = path(p).stat()
    if is_remote(p):  # epath's StatResult
        return stat.length, int(stat.mtime * 1e9)
    return stat.st_size, stat.st_mtime_ns


def makedirs(p: PathLike) -> None:
    """Creates the directory `p` and its parents (a no-op on an object store, which has no
    directories: a prefix exists once an object is written under it)."""
    if not is_remote(p):
        os.makedirs(os.path.expanduser(os.fspath(p)), exist_ok=True)


class _GrowingObject:
    """A log on an object store that grows: objects cannot be appended to, so its bytes
    live in memory (starting from what the object held, with `keep`) and every flush
    uploads them whole. A reader sees the log as of the last flush."""

    def __init__(self, target, keep: bool, binary: bool):
        self._target = target
        self._binary = binary
        self._data = io.BytesIO()
        if keep and target.exists():
            self._data.write(target.read_bytes())
        self._dirty = not keep  # emptied: an empty object once flushed, as a local file once opened
        self.closed = False

    def write(self, data: Union[str, bytes]) -> int:
        if self._binary != isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"write() of {type(data).__name__} to a {'binary' if self._binary else 'text'} log")
        self._dirty = True
        self._data.write(data if self._binary else data.encode("utf-8"))
        return len(data)

    def flush(self) -> None:
        if self._dirty and not self.closed:
            self._target.write_bytes(self._data.getvalue())
            self._dirty = False

    def close(self) -> None:
        if not self.closed:
            self.flush()
            self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_growing(p: PathLike, keep: bool = True, binary: bool = False) -> IO:
    """A file a run extends (a metrics log, an events file): opened for appending
    (`keep=False`: emptied first), as text (UTF-8) or `binary`. On an object store the
    whole file is uploaded at each flush() and at close()."""
    if is_remote(p):
        return _GrowingObject(path(p), keep, binary)
    mode = ("a" if keep else "w") + ("b" if binary else "")
    return open(p, mode) if binary else open(p, mode, encoding="utf-8")


@contextlib.contextmanager
def atomic_output(path_: PathLike, *, fsync: bool = False) -> Iterator[pathlib.Path]:
    """Yields a local temporary path; when the block ends without an error, the file
    written there replaces `path_` (after an fsync with `fsync=True`): renamed over it
    when local, uploaded in one piece to an object store (where an object appears whole
    when its upload ends)."""
    if is_remote(path_):
        tmp = temporary_path(path_)
        try:
            with naming_the_file(path_, temporary=tmp):
                yield tmp
                upload(tmp, path_)
        finally:
            shutil.rmtree(tmp.parent, ignore_errors=True)
        return
    tmp = temporary_path(path_)
    try:
        with naming_the_file(path_, temporary=tmp):
            yield tmp
            if fsync:
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, path_)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def naming_the_file(path_: PathLike, temporary: Optional[PathLike] = None) -> Iterator[None]:
    """An OSError of the block that names no file (a write or flush on a full disk), or
    names the `temporary` file written in its place, is raised again naming `path_`, so
    that a binary reports it in one line (cli.guard)."""
    try:
        yield
    except OSError as e:
        named = e.filename is not None and (temporary is None or os.fspath(e.filename) != os.fspath(temporary))
        if named or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror or os.strerror(e.errno), os.fspath(path_)) from e


def atomic_write(path_: PathLike, data: Union[str, bytes], *, fsync: bool = False):
    """Writes `data` (text as UTF-8) to `path_` atomically; returns the path (files.path)."""
    with atomic_output(path_, fsync=fsync) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return path(path_)


def read_json_object(path_: PathLike, error: type[Exception], what: str = "") -> dict:
    """The JSON object in `path_`, or `error` naming the file when it is not valid JSON (or
    UTF-8) or holds something other than an object; `what` says what the file is for."""
    p = path(path_)
    why = f": {what}" if what else ""
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise error(f"{p} is not valid JSON ({e}){why}") from None
    if not isinstance(data, dict):
        raise error(f"{p} holds a JSON {type(data).__name__}, not an object{why}")
    return data
