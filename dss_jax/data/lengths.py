"""TASK_FEATURE_LENGTHS: how many examples of a split they cut, and the lengths a run trained with.

    report_truncation("dss_svamp", "test", lengths)      # logs the count once, returns it
    trained_feature_lengths("/runs/svamp/checkpoint_1000")  # ("…/metadata", {...}) or None
    check_not_shorter(lengths, checkpoint, ...)          # UserError unless told

SeqIO cuts every feature to its length silently (the last kept token becomes EOS); a
target cut in training is learnt cut, and an input or a gold label cut in evaluation is
scored cut. Each place that cuts (the train and validation pipelines, eval's examples)
reports how many examples it cuts per feature; eval and infer refuse lengths shorter than
the ones their checkpoint's run trained with unless told.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import os
import re
from typing import Mapping, Optional, Sequence

from dss_jax import files
from dss_jax.cli import UserError
from dss_jax.data.paired import PAIRED_TEXT_FEATURES


@dataclasses.dataclass(frozen=True)
class Truncation:
    """Examples of a split longer than their feature lengths (EOS included)."""

    task_name: str
    split: str
    examples: int
    cut: int  # examples with at least one feature cut
    per_feature: Mapping[str, int]  # feature -> examples whose feature is cut
    lengths: Mapping[str, int]

    def message(self) -> str:
        where = f"{self.task_name}/{self.split}"
        if not self.cut:
            return f"{where}: no example is longer than TASK_FEATURE_LENGTHS ({self.examples} examples)"
        detail = ", ".join(f"{k} > {self.lengths[k]}: {n}" for k, n in self.per_feature.items() if n)
        return (
            f"{where}: {self.cut} of {self.examples} examples are longer than TASK_FEATURE_LENGTHS and are cut "
            f"({detail}); raise TASK_FEATURE_LENGTHS to keep them whole"
        )


def truncation(
    task_name: str,
    split: str,
    feature_lengths: Mapping[str, int],
    features: Sequence[str] = PAIRED_TEXT_FEATURES,
    max_examples: Optional[int] = None,
) -> Truncation:
    """Counts the examples of a split (its first `max_examples`) whose `features` are longer
    than `feature_lengths` (as the task tokenizes them, with EOS): one pass, nothing cut."""
    import numpy as np
    import tensorflow as tf

    from dss_jax.data import tasks as dss_tasks
    from dss_jax.data.options import effective_feature_lengths

    lengths = effective_feature_lengths(task_name, feature_lengths)
    features = tuple(features)
    dataset = dss_tasks.get_task(task_name).get_dataset(
        sequence_length=None, split=split, shuffle=False, num_epochs=1, use_cached=False
    )
    if max_examples is not None:
        dataset = dataset.take(max_examples)
    sizes = dataset.map(lambda ex: {k: tf.size(ex[k]) for k in features}).batch(1024)
    limits = np.array([lengths[k] for k in features])
    examples, cut, per_feature = 0, 0, np.zeros(len(features), np.int64)
    for block in sizes.as_numpy_iterator():
        over = np.stack([block[k] for k in features], axis=1) > limits  # [examples, features]
        examples += over.shape[0]
        cut += int(over.any(axis=1).sum())
        per_feature += over.sum(axis=0)
    return Truncation(
        task_name, split, examples, cut, dict(zip(features, map(int, per_feature))), {k: lengths[k] for k in features}
    )


_REPORTED: dict[tuple, Truncation] = {}


def report_truncation(
    task_name: str,
    split: str,
    feature_lengths: Mapping[str, int],
    features: Sequence[str] = PAIRED_TEXT_FEATURES,
    max_examples: Optional[int] = None,
) -> Truncation:
    """`truncation`, logged (a warning when any example is cut) the first time it is asked
    for with these arguments in this process; later calls return the same count."""
    key = (task_name, split, tuple(sorted(feature_lengths.items())), tuple(features), max_examples)
    if key not in _REPORTED:
        found = truncation(task_name, split, feature_lengths, features, max_examples)
        (logging.warning if found.cut else logging.info)("%s", found.message())
        _REPORTED[key] = found
    return _REPORTED[key]


# ----- the lengths a run trained with --------------------------------------------------

_GIN_LENGTHS = re.compile(r"^(?:TASK_FEATURE_LENGTHS|train\.task_feature_lengths) = \\?\s*(\{[^}]*\})", re.M)


def trained_feature_lengths(checkpoint_dir: str | os.PathLike) -> Optional[tuple[str, dict[str, int]]]:
    """(where it is recorded, TASK_FEATURE_LENGTHS) of the run that trained a checkpoint:
    the checkpoint's metadata (`settings`), else its run's config.gin; None for a
    checkpoint that is no run's (a converted T5)."""
    from dss_jax.checkpoints import locate

    path = files.path(checkpoint_dir)  # a local dir or a gs:// prefix
    metadata = path / "metadata" / "metadata"  # orbax's JsonSave item of RunCheckpointer
    if metadata.is_file():
        try:
            recorded = json.loads(metadata.read_text()).get("settings", {}).get("task_feature_lengths")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if isinstance(recorded, dict):
            return str(metadata), recorded
    config = locate.describing_file(path, locate.RUN_GIN_FILE)
    if config is None:
        return None
    m = _GIN_LENGTHS.search(config.read_bytes().decode("utf-8", errors="replace"))
    if m is None:
        return None
    try:
        value = ast.literal_eval(m.group(1))
    except (ValueError, SyntaxError):
        return None
    return (str(config), value) if isinstance(value, dict) else None


def used_features(output_rationale: bool, label_target: str = "label") -> tuple[str, ...]:
    """The features an evaluation decodes with: the label's, and the rationale's when it
    decodes rationales or the single-task ablation answers rationale then label."""
    rationale = output_rationale or label_target == "rationale_then_label"
    return PAIRED_TEXT_FEATURES if rationale else ("label_inputs", "label_targets")


def check_not_shorter(
    feature_lengths: Mapping[str, int],
    checkpoint_dir: str,
    setting: str,
    allow_flag: str,
    features: Sequence[str] = PAIRED_TEXT_FEATURES,
) -> None:
    """A UserError when `feature_lengths` are shorter, for any of `features`, than the
    lengths the checkpoint's run trained with: the inputs and targets it learnt whole would
    be cut. `allow_flag` is the binding that allows it."""
    found = trained_feature_lengths(checkpoint_dir)
    if found is None:
        return
    source, trained = found
    shorter = [k for k in features if k in feature_lengths and k in trained and feature_lengths[k] < trained[k]]
    if not shorter:
        return
    runs = "{" + ", ".join(f"'{k}': {trained[k]}" for k in PAIRED_TEXT_FEATURES if k in trained) + "}"
    raise UserError(
        f"TASK_FEATURE_LENGTHS is shorter than {setting} was trained with ({source}: "
        f"{', '.join(f'{k} {feature_lengths[k]} < {trained[k]}' for k in shorter)}): its inputs and targets would "
        f'be cut and scored cut; use the run\'s lengths (--gin.TASK_FEATURE_LENGTHS="{runs}"), or bind '
        f"--gin.{allow_flag}=True to use them cut"
    )
