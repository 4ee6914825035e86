"""Prompt templates: plain-text files with `{{field}}` placeholders and a `##` header.

File syntax (the built-in files under `dss_jax/teacher/prompts/` are examples):

    ## Any header line starting with "##" is a comment, except these directives:
    ## id: my-prompt-v2              -> recorded as each sample's prompt_id (default: file stem)
    ## stop: ["\\n\\nQ:"]              -> stop sequences, a JSON string or list of strings
    ## system: "You are a careful tutor."   -> system message (chat API; prepended otherwise)
    Q: first exemplar ...
    A: ... The answer is (3 + 4).

    Q: {{input}}
    A:

The header is the run of lines at the top that start with `##`; the body is everything
after it, with leading blank lines and trailing whitespace removed (a trailing newline
after "A:" would change what the model writes next). In the body, `{{name}}` (spaces
inside the braces allowed) is replaced by the input record's field `name`: usually
`{{input}}`, but any string or number field of the record works (`{{premise}}`, ...).
Any other text, including single braces, is copied verbatim.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
import re
from typing import Any, Mapping, Optional

from dss_jax import files
from dss_jax.cli import UserError
from dss_jax.data import jsonl

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_DIRECTIVE = re.compile(r"^##\s*(id|stop|system)\s*:\s*(.*)$")

# Parser family -> the family whose built-in prompts it uses.
_PROMPT_FAMILY = {"svamp": "svamp", "cqa": "cqa", "anli1": "anli1", "nli": "anli1", "esnli": "esnli"}
KINDS = ("cot", "zeroshot")


class PromptError(UserError, ValueError):
    """A template that cannot be read or filled; the message names the file/record."""


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    body: str
    id: str
    stop: tuple[str, ...] = ()
    system: Optional[str] = None
    source: str = "<string>"  # file the template came from, for error messages

    @property
    def fields(self) -> tuple[str, ...]:
        """Record fields the body refers to, in first-use order."""
        seen: dict[str, None] = {}
        for m in PLACEHOLDER.finditer(self.body):
            seen.setdefault(m.group(1), None)
        return tuple(seen)

    def missing_fields(self, record: Mapping[str, Any]) -> list[str]:
        return [f for f in self.fields if not isinstance(record.get(f), (str, int, float))]

    def render(self, record: Mapping[str, Any]) -> str:
        missing = self.missing_fields(record)
        if missing:
            raise PromptError(
                f"prompt {self.source} uses {{{{{missing[0]}}}}} but record "
                f"{record.get('id', '?')!r} has no string field {missing[0]!r}"
            )
        return PLACEHOLDER.sub(lambda m: str(record[m.group(1)]), self.body)


def _directive_value(raw: str, key: str, where: str) -> Any:
    raw = raw.strip()
    if raw.startswith(('"', "[")):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as e:
            raise PromptError(f"{where}: '## {key}:' value is not valid JSON ({e})") from None
        if jsonl.find_lone_surrogate(value) is not None:  # the id is written to every cached sample
            raise PromptError(
                f"{where}: '## {key}:' value holds an unpaired UTF-16 surrogate escape, "
                "which is not text; fix the escape"
            )
        return value
    return raw


def parse_template(text: str, source: str = "<string>", default_id: str = "custom") -> PromptTemplate:
    lines = text.splitlines()
    values: dict[str, Any] = {}
    i = 0
    while i < len(lines) and lines[i].startswith("##"):
        m = _DIRECTIVE.match(lines[i])
        if m:
            values[m.group(1)] = _directive_value(m.group(2), m.group(1), f"{source}:{i + 1}")
        i += 1
    body = "\n".join(lines[i:]).lstrip("\n").rstrip()
    if not body:
        raise PromptError(f"{source}: the template has no body after its '##' header")
    if not PLACEHOLDER.search(body):
        raise PromptError(
            f"{source}: the template has no {{{{input}}}} (or other {{{{field}}}}) placeholder, "
            "so every example would get the same prompt"
        )
    stop = values.get("stop", ())
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise PromptError(f"{source}: '## stop:' must be a JSON string or a list of non-empty strings")
    system = values.get("system")
    if system is not None and not isinstance(system, str):
        raise PromptError(f"{source}: '## system:' must be a string")
    prompt_id = values.get("id") or default_id
    if not isinstance(prompt_id, str):
        raise PromptError(f"{source}: '## id:' must be a string")
    return PromptTemplate(body=body, id=prompt_id, stop=tuple(stop), system=system, source=source)


def load_template(path: str | os.PathLike) -> PromptTemplate:
    path = os.fspath(path)
    p = files.path(path)  # a local file or an object-store URL
    if not p.exists():
        raise PromptError(
            f"prompt file not found: {path} (give a file, or a built-in name: {', '.join(builtin_names())})"
        )
    if not p.is_file():
        raise PromptError(f"prompt {path} is not a regular file (a directory?); give a template file")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise PromptError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x}); save the prompt as UTF-8"
        ) from None
    stem = os.path.splitext(p.name)[0]
    return parse_template(text, source=path, default_id=stem)


def builtin_names() -> list[str]:
    folder = importlib.resources.files("dss_jax.teacher").joinpath("prompts")
    return sorted(p.name[: -len(".txt")] for p in folder.iterdir() if p.name.endswith(".txt"))


def load_builtin(name: str) -> PromptTemplate:
    resource = importlib.resources.files("dss_jax.teacher").joinpath("prompts", f"{name}.txt")
    if not resource.is_file():
        raise PromptError(f"no built-in prompt {name!r}; built-in prompts: {', '.join(builtin_names())}")
    return parse_template(resource.read_text(encoding="utf-8"), source=f"<built-in {name}>", default_id=name)


def default_template(family: str, kind: str = "cot") -> PromptTemplate:
    """The built-in few-shot (`cot`) or zero-shot (`zeroshot`) prompt of a parser family."""
    if kind not in KINDS:
        raise PromptError(f"prompt kind must be one of {KINDS}, got {kind!r}")
    if family not in _PROMPT_FAMILY:
        raise PromptError(
            f"no built-in prompt for dataset family {family!r} (built-in: "
            f"{', '.join(sorted(_PROMPT_FAMILY))}); write one and pass it with --prompt"
        )
    return load_builtin(f"{_PROMPT_FAMILY[family]}_{kind}")


def resolve_template(spec: Optional[str], family: str) -> PromptTemplate:
    """`--prompt` semantics: None -> the family's few-shot prompt; an existing file; a built-in name."""
    if not spec:
        return default_template(family)
    if files.is_remote(spec) or os.path.exists(spec) or os.sep in spec or spec.endswith(".txt"):
        return load_template(spec)
    if spec in KINDS:
        return default_template(family, spec)
    return load_builtin(spec)
