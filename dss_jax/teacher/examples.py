"""Reading the examples to annotate: a JSONL file, one object per line.

Required: `id` (a string, unique in the file) and `input` (the text the student will
see, and what `{{input}}` in a prompt becomes; not empty). Optional: `label` (the ground truth, a
string or a number; used for the `correct` filter and teacher accuracy), `dataset`,
`split`, `position`, `meta` (copied into the cache record), and any other string or
number fields, which prompt templates can use as `{{name}}`.

Every problem is reported as FILE:LINE with what to fix; all lines are checked before
any request is sent, so a typo on line 90000 does not surface hours into a run (nor a
byte that is not UTF-8, or an unpaired surrogate escape the cache could not store).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional

from dss_jax.cli import UserError
from dss_jax.data import jsonl
from dss_jax.teacher.prompts import PromptTemplate


class InputError(UserError, ValueError):
    """A malformed input file; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Example:
    id: str
    input: str
    label: Optional[str]
    fields: Mapping[str, Any]  # the whole input record, for prompt placeholders
    dataset: Optional[str] = None
    split: Optional[str] = None
    position: Optional[int] = None
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    where: str = ""  # FILE:LINE, for messages


def _example_from_json(obj: Any, where: str) -> Example:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object with 'id' and 'input', got {type(obj).__name__}")
    for key in ("id", "input"):
        if key not in obj:
            raise InputError(f"{where}: missing required field {key!r} (each line needs 'id' and 'input')")
        if not isinstance(obj[key], str):
            raise InputError(f"{where}: field {key!r} must be a string, got {type(obj[key]).__name__}")
    if not obj["id"]:
        raise InputError(f"{where}: field 'id' is empty")
    if not obj["input"].strip():
        raise InputError(f"{where}: field 'input' is empty: there is nothing to annotate; fill it in or drop the line")
    label = obj.get("label")
    if isinstance(label, bool) or not (label is None or isinstance(label, (str, int, float))):
        raise InputError(f"{where}: field 'label' must be a string, a number or null")
    for key in ("dataset", "split"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise InputError(f"{where}: field {key!r} must be a string")
    position = obj.get("position")
    if position is not None and (isinstance(position, bool) or not isinstance(position, int)):
        raise InputError(f"{where}: field 'position' must be an integer")
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise InputError(f"{where}: field 'meta' must be a JSON object")
    return Example(
        id=obj["id"],
        input=obj["input"],
        label=None if label is None else str(label),
        fields=obj,
        dataset=obj.get("dataset"),
        split=obj.get("split"),
        position=position,
        meta=meta,
        where=where,
    )


def read_examples(path: str | os.PathLike, template: Optional[PromptTemplate] = None) -> list[Example]:
    """All examples of `path`; with a template, also checks every placeholder can be filled.

    Lines that are not UTF-8 or JSON, nested too deeply, or hold an unpaired surrogate
    (text that could be neither sent nor cached) are refused by `data.jsonl`.
    """
    path = os.fspath(path)
    examples: list[Example] = []
    first_line: dict[str, int] = {}
    for line in jsonl.read_lines(path, InputError, what="input file"):
        obj, where = line.value, line.where
        example = _example_from_json(obj, where)
        if example.id in first_line:
            raise InputError(
                f"{where}: duplicate id {example.id!r} (first at line {first_line[example.id]}); ids must be unique"
            )
        first_line[example.id] = line.number
        if template is not None:
            missing = template.missing_fields(obj)
            if missing:
                raise InputError(
                    f"{where}: the prompt {template.source} uses {{{{{missing[0]}}}}} "
                    f"but this record has no string field {missing[0]!r}"
                )
        examples.append(example)
    return examples
