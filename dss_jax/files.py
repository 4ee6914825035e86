"""Writing a file so that nobody sees half of it (a temporary file beside it, then a rename),
and reading a JSON object with an error that names the file.

    from dss_jax import files

    files.atomic_write(path, text)                    # str or bytes
    with files.atomic_output(path) as tmp:            # anything that writes to a path
        CacheWriter(tmp).write_all(records)
    files.read_json_object(path, MyError, "what it is for")   # a dict, or MyError naming the file
    with files.naming_the_file(path):                 # a failed write names `path`
        f.write(line)

A reader sees the old file or the new one, never a part; a failed or interrupted write
leaves the old file as it was and no temporary file behind, and its error names `path`
(a write on a full disk fails naming no file; a binary's one error line needs one).
The temporary name is unique per writer (also across hosts sharing a file system, whose
pids may clash), so concurrent writers of the same bytes (every process generating the
same dataset) are safe: the last rename wins.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import uuid
from typing import Iterator, Optional, Union

PathLike = Union[str, os.PathLike]


def temporary_path(path: PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


@contextlib.contextmanager
def atomic_output(path: PathLike, *, fsync: bool = False) -> Iterator[pathlib.Path]:
    """Yields a temporary path beside `path`; when the block ends without an error, the
    file written there replaces `path` (after an fsync with `fsync=True`)."""
    tmp = temporary_path(path)
    try:
        with naming_the_file(path, temporary=tmp):
            yield tmp
            if fsync:
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def naming_the_file(path: PathLike, temporary: Optional[PathLike] = None) -> Iterator[None]:
    """An OSError of the block that names no file (a write or flush on a full disk), or
    names the `temporary` file written in its place, is raised again naming `path`, so
    that a binary reports it in one line (cli.guard)."""
    try:
        yield
    except OSError as e:
        named = e.filename is not None and (temporary is None or os.fspath(e.filename) != os.fspath(temporary))
        if named or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror or os.strerror(e.errno), os.fspath(path)) from e


def atomic_write(path: PathLike, data: Union[str, bytes], *, fsync: bool = False) -> pathlib.Path:
    """Writes `data` (text as UTF-8) to `path` atomically; returns the path."""
    with atomic_output(path, fsync=fsync) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return pathlib.Path(path)


def read_json_object(path: PathLike, error: type[Exception], what: str = "") -> dict:
    """The JSON object in `path`, or `error` naming the file when it is not valid JSON (or
    UTF-8) or holds something other than an object; `what` says what the file is for."""
    path = pathlib.Path(path)
    why = f": {what}" if what else ""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise error(f"{path} is not valid JSON ({e}){why}") from None
    if not isinstance(data, dict):
        raise error(f"{path} holds a JSON {type(data).__name__}, not an object{why}")
    return data
