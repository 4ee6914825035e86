"""Examples to annotate from a registered SeqIO task's split (`annotate --task=NAME --split=S`).

A DSS cache task (registered through `dss_jax.data.tasks`: `register_cache_task`,
`register_paper_task`, e.g. dss_synthetic) gives its split's cache records as they are
(`tasks.split_records`): id, input, gold label (null for unlabeled records), dataset,
split, position and meta are carried over, the teacher samples are not. Any other SeqIO
task is read from its source (`task.source.get_dataset(split, shuffle=False)`, before
preprocessing): the input is the string feature `input_field`, the label the optional
`label_field`, the id the "id" feature when there is one, else "<task>/<split>/<index>".
A feature that is not UTF-8 text is an InputError naming the task, split, example index
and feature when the example needs it (input, label, id or a prompt placeholder); other
binary features (an image, a serialized proto) are left out of the example's fields.

The task's module must be imported first; the annotate binary imports the built-in ones
and whatever `--gin_file` imports (e.g. gin/tasks/synthetic.gin imports tasks.synthetic).
"""

from __future__ import annotations

import math
from typing import Any, Optional

from dss_jax.teacher.examples import Example, InputError
from dss_jax.teacher.prompts import PromptTemplate


def _text(value: Any) -> Any:
    """A numpy scalar as a Python value, bytes as str; UnicodeDecodeError if not UTF-8."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy scalar
        return _text(value.item())
    return value


def _fields(raw: dict, where: str, needed: set[str]) -> dict[str, Any]:
    """The features of one source example as text; a feature that is not UTF-8 is refused
    if `needed`, else left out (the prompt cannot use it, the cache never sees it)."""
    fields = {}
    for name, value in raw.items():
        try:
            fields[name] = _text(value)
        except UnicodeDecodeError as e:
            if name in needed:
                bad = e.object[e.start : e.start + 1].hex()
                raise InputError(
                    f"{where}: feature {name!r} is not UTF-8 text (byte 0x{bad} at offset {e.start}: "
                    f"{e.reason}); make the task's source give UTF-8 text for it"
                ) from None
    return fields


def _from_cache_records(task_name: str, split: str) -> list[Example]:
    from dss_jax.data import tasks as dss_tasks

    try:
        records = dss_tasks.split_records(task_name, split)
    except (ValueError, FileNotFoundError) as e:
        raise InputError(f"--task={task_name} --split={split}: {e}") from None
    examples = []
    for i, r in enumerate(records):
        fields = {k: v for k, v in r.to_json().items() if k != "samples"}
        examples.append(
            Example(
                id=r.id,
                input=r.input,
                label=r.label,
                fields=fields,
                dataset=r.dataset,
                split=r.split,
                position=r.position,
                meta=dict(r.meta),
                where=f"{task_name}/{split}[{i}]",
            )
        )
    return examples


def _from_source(
    task, split: str, input_field: str, label_field: Optional[str], template: Optional[PromptTemplate]
) -> list[Example]:
    splits = list(task.source.splits)
    if split not in splits:
        raise InputError(f"task {task.name!r} has no split {split!r}; its splits: {', '.join(splits)}")
    dataset = task.source.get_dataset(split=split, shuffle=False)
    # What an example is made of; {{input}} is input_field's text, whatever feature "input" holds.
    placeholders = set(template.fields if template else ()) - {"input"}
    needed = {"id", input_field, *([label_field] if label_field else []), *placeholders}
    examples = []
    for i, raw in enumerate(dataset.as_numpy_iterator()):
        where = f"{task.name}/{split}[{i}]"
        fields = _fields(raw, where, needed)
        for flag, name in (("--task_input_field", input_field), ("--task_label_field", label_field)):
            if name is not None and not isinstance(fields.get(name), (str, int, float)):
                raise InputError(
                    f"{where}: no string feature {name!r} (features: {', '.join(sorted(fields))}); "
                    f"name the right one with {flag}"
                )
        example_id = str(fields["id"]) if isinstance(fields.get("id"), (str, int)) else f"{task.name}/{split}/{i}"
        label = None if label_field is None else fields[label_field]
        if isinstance(label, float) and not math.isfinite(label):
            raise InputError(f"{where}: the label {label_field!r} is {label}, not a finite number")
        label = None if label is None else str(label)
        examples.append(
            Example(
                id=example_id,
                input=str(fields[input_field]),
                label=label,
                fields={**fields, "id": example_id, "input": str(fields[input_field])},
                dataset=task.name,
                split=split,
                position=i,
                where=where,
            )
        )
    return examples


def read_task_examples(
    task_name: str,
    split: str,
    *,
    input_field: str = "inputs",
    label_field: Optional[str] = None,
    template: Optional[PromptTemplate] = None,
) -> list[Example]:
    """The examples of one split of a registered task, in order; InputError names the problem."""
    import seqio

    from dss_jax.data import tasks as dss_tasks

    if task_name not in seqio.TaskRegistry.names():
        known = sorted(seqio.TaskRegistry.names())
        raise InputError(
            f"unknown task {task_name!r}; registered tasks: {', '.join(known) or 'none'} (a task is "
            "registered by importing its module: pass the gin file that imports it, e.g. "
            "--gin_file=tasks/synthetic.gin)"
        )
    if dss_tasks.is_cache_task(task_name):
        examples = _from_cache_records(task_name, split)
    else:
        examples = _from_source(seqio.TaskRegistry.get(task_name), split, input_field, label_field, template)
    first: dict[str, str] = {}
    for example in examples:
        if example.id in first:
            raise InputError(
                f"{example.where}: duplicate id {example.id!r} (first at {first[example.id]}); ids must be unique"
            )
        first[example.id] = example.where
        if not example.input.strip():
            raise InputError(
                f"{example.where} (id {example.id!r}): the input is empty: there is nothing to annotate; "
                "fix the task's data or leave the example out"
            )
        if template is not None:
            missing = template.missing_fields(example.fields)
            if missing:
                raise InputError(
                    f"{example.where}: the prompt {template.source} uses {{{{{missing[0]}}}}} but this "
                    f"example has no string field {missing[0]!r}"
                )
    if not examples:
        raise InputError(f"--task={task_name} --split={split} has no examples")
    return examples
