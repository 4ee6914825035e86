"""Teacher-cache records -> paired text examples, the two halves of Distilling Step-by-Step:

    label_inputs      "predict: <input>"     label_targets      the label (gold or teacher)
    rationale_inputs  "explain: <input>"     rationale_targets  the teacher's rationale

plus `id` and `teacher_label`, the text of the teacher's label for the example ("" when
the record has no parsed teacher sample), so that evaluation can report how often the
student agrees with its teacher. Training examples follow the task's options (label
source, teacher samples, the single-task target); evaluation examples are one per
record with a gold label. No TensorFlow here: data/tasks.py tokenizes these for SeqIO.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Union

from dss_jax.data.cache import CacheRecord
from dss_jax.data.options import TaskOptions, single_task_target

PAIRED_TEXT_FEATURES = ("label_inputs", "label_targets", "rationale_inputs", "rationale_targets")
LABEL_PREFIX = "predict: "
RATIONALE_PREFIX = "explain: "
TEACHER_LABEL = "teacher_label"  # untokenized string feature; "" when there is none


def _chosen_samples(record: CacheRecord, teacher_sample: Union[int, str]):
    if teacher_sample == "all":
        return list(record.samples)
    return list(record.samples[teacher_sample : teacher_sample + 1])


def _example(
    record: CacheRecord, label: str, rationale: str, suffix: str = "", teacher_label: str = ""
) -> dict[str, str]:
    return {
        "id": record.id + suffix,
        "label_inputs": LABEL_PREFIX + record.input,
        "label_targets": label,
        "rationale_inputs": RATIONALE_PREFIX + record.input,
        "rationale_targets": rationale,
        "teacher_label": teacher_label,
    }


def training_examples(records: Sequence[CacheRecord], options: TaskOptions) -> tuple[list[dict[str, str]], int]:
    """(paired examples, records dropped) for training.

    Teacher labels: one example per parsed chosen sample; a record without one is
    dropped. Gold labels: one example per parsed chosen sample with the gold label, or,
    when none parsed, one with an empty rationale (as the reference trains them); a
    record without a gold label is dropped. "gt_else_teacher" treats a record with a
    gold label as "gt" does and one without as "teacher" does (so a record with neither
    is dropped). With `label_target="rationale_then_label"` the label target becomes
    `single_task_target(rationale, label)`.
    """
    examples, dropped = [], 0
    if options.label_target == "rationale_then_label":
        examples, dropped = training_examples(records, dataclasses.replace(options, label_target="label"))
        for ex in examples:
            ex["label_targets"] = single_task_target(ex["rationale_targets"], ex["label_targets"])
        return examples, dropped
    for record in records:
        chosen = _chosen_samples(record, options.teacher_sample)
        parsed = [(i, s) for i, s in enumerate(chosen) if s.parsed]
        multi = options.teacher_sample == "all"
        use_teacher = options.label_source == "teacher" or (
            options.label_source == "gt_else_teacher" and record.label is None
        )
        if use_teacher:
            if not parsed:
                dropped += 1
            examples += [_example(record, s.label, s.rationale, f"#{i}" if multi else "", s.label) for i, s in parsed]
            continue
        if record.label is None:
            dropped += 1
        elif parsed:
            examples += [
                _example(record, record.label, s.rationale, f"#{i}" if multi else "", s.label) for i, s in parsed
            ]
        else:
            examples.append(_example(record, record.label, ""))
    return examples, dropped


def evaluation_examples(records: Sequence[CacheRecord], options: TaskOptions) -> tuple[list[dict[str, str]], int]:
    """One example per record with a gold label; rationale (and teacher label) of the first
    parsed chosen sample."""
    examples, dropped = [], 0
    for record in records:
        if record.label is None:
            dropped += 1
            continue
        parsed = [s for s in _chosen_samples(record, options.teacher_sample) if s.parsed]
        first = parsed[0] if parsed else None
        examples.append(
            _example(record, record.label, first.rationale if first else "", "", first.label if first else "")
        )
    return examples, dropped
