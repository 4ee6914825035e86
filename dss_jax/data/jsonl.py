"""Reading a user's JSONL file, one JSON value per line, every fault named as FILE:LINE.

    for line in jsonl.read_lines(path, InputError):
        obj = line.value          # the decoded value; line.where is "path:lineno"

The one reader behind the teacher cache (`data.cache`), the examples to annotate
(`teacher.examples`) and the inputs of `dss_jax.infer`, so that all three refuse the
same things the same way, before anything is sent, decoded or written:

  - a path that is missing or not a regular file;
  - a line that is not UTF-8 (the byte and its column are named);
  - a line that is not JSON, or is nested deeper than the JSON decoder can go;
  - a string holding an unpaired UTF-16 surrogate (a JSON escape like "\\ud800" with
    no partner): Python decodes it, but it cannot be written as UTF-8 (the cache
    writer) or tokenized (sentencepiece), so it would fail far from its line;
  - a number that is not finite: `NaN`, `Infinity` (which Python's decoder takes, JSON
    does not) or one too large for a float (1e999), which would be stored as "nan" or
    "inf" and judged as a label.

Blank lines are skipped. `torn_tail=True` (the cache) skips an unterminated last line
that does not decode, with a warning: the leftover of a write cut short by a crash.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Iterator, NamedTuple, Optional, Type

from dss_jax import files

# An escaped surrogate in the raw text; only then can a decoded string hold a lone one
# (strict UTF-8 decoding refuses encoded surrogates), so the walk below is rarely needed.
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


class Line(NamedTuple):
    number: int  # 1-based
    where: str  # "path:number", the prefix of every message about this line
    value: Any


def check_path(path: str, error: Type[Exception], what: str = "file") -> None:
    """Raises `error` unless `path` (local or an object-store URL) is an existing regular file."""
    p = files.path(path)
    if not p.exists():
        raise error(f"{what} not found: {path}")
    if not p.is_file():
        raise error(f"{what} {path} is not a regular file (a directory?); give the path of a JSONL file")


def find_lone_surrogate(value: Any) -> Optional[str]:
    """The JSON path (e.g. `["meta"]["note"]`) of the first string in `value` holding an
    unpaired surrogate, or None. Iterative: the value may be nested 1,000 deep."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as e:
                return f"{path or 'the value'} (code point U+{ord(item[e.start]):04X} at character {e.start})"
        elif isinstance(item, dict):
            for key, sub in reversed(list(item.items())):
                if find_lone_surrogate(key) is not None:
                    return f"the key {path}[{json_repr(key)}]"
                stack.append((f"{path}[{json_repr(key)}]", sub))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", sub) for i, sub in reversed(list(enumerate(item))))
    return None


def json_repr(s: str) -> str:
    """A string as JSON writes it in ASCII (a lone surrogate shows as its escape)."""
    return json.dumps(s)


def decode_line(raw: bytes, where: str, error: Type[Exception]) -> Any:
    """One line's JSON value; `error` naming `where` for every way the line can be bad."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(
            f"{where}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte column {e.start + 1}); save the file as UTF-8"
        ) from None
    try:
        value = json.loads(text, parse_constant=_not_a_number, parse_float=_finite_float)
    except _NotFinite as e:
        raise error(
            f"{where}: {e} is not a finite number (JSON has no NaN or Infinity); write a number, a string or null"
        ) from None
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON ({e.msg} at column {e.colno}); fix or delete this line") from None
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply to read; flatten this line") from None
    if _ESCAPED_SURROGATE.search(raw):
        bad = find_lone_surrogate(value)
        if bad is not None:
            raise error(
                f"{where}: {bad} holds an unpaired UTF-16 surrogate escape, which is not text "
                "and cannot be written as UTF-8; fix the escape (or pair it) on this line"
            )
    return value


class _NotFinite(ValueError):
    pass


def _not_a_number(name: str):
    raise _NotFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _NotFinite(text)
    return value


def read_lines(
    path: str | os.PathLike,
    error: Type[Exception],
    *,
    what: str = "file",
    torn_tail: bool = False,
    shown_as: Optional[str] = None,
) -> Iterator[Line]:
    """The decoded non-blank lines of `path` (local or an object-store URL), in order; see
    the module docstring. `shown_as` names the file in messages instead of `path` (a local
    working copy of a remote file is named by its URL)."""
    path = os.fspath(path)
    check_path(path, error, what)
    name = shown_as or path
    with files.path(path).open("rb") as f:
        previous: Optional[tuple[int, bytes]] = None
        # One line of lookahead, so the last line is known to be the last.
        for number, raw in enumerate(f, start=1):
            if previous is not None:
                yield from _decoded(name, *previous, error, last=False, torn_tail=torn_tail)
            previous = (number, raw)
        if previous is not None:
            yield from _decoded(name, *previous, error, last=True, torn_tail=torn_tail)


def _decoded(
    path: str, number: int, raw: bytes, error: Type[Exception], *, last: bool, torn_tail: bool
) -> Iterator[Line]:
    if not raw.strip():
        return
    where = f"{path}:{number}"
    if torn_tail and last and not raw.endswith(b"\n") and not is_json(raw):
        logging.warning("%s: half-written last line (%d bytes, no newline) ignored", where, len(raw))
        return
    yield Line(number, where, decode_line(raw, where, error))


def is_json(raw: bytes) -> bool:
    """Whether `raw` is UTF-8 JSON text: what tells a complete line from a torn one.

    Too deep to decode counts as JSON (a crash does not nest), so it is reported, not dropped.
    """
    try:
        json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    except RecursionError:
        return True
    return True  # NaN and 1e999 included: complete, and refused by decode_line
