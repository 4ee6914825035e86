"""The options of the DSS tasks, and where their data lives; no TensorFlow or SeqIO here.

Options (`TaskOptions`) are read from gin when a dataset is built, under the task's
name as gin scope, so both of these work:

    task_options.label_source = "teacher"              # every DSS task
    dss_svamp/task_options.train_fraction = 0.25       # one task

`label_target = "rationale_then_label"` is the single-task ablation: one target, the
rationale then the label after `ANSWER_SEPARATOR` (`single_task_target`,
`split_single_task`). A trained run records the options that change how its student
answers (`RUN_OPTIONS`, in its task.json); eval, infer and annotate bind them again with
`use_run_options`. `data_locations` says where the paper's files and the project's
caches are.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import sys
from typing import Mapping, Optional, Union

import gin
from dss_jax import cli, files
from dss_jax.cli import UserError

# Where the built-in tasks find the paper's files and keep their imported caches.
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = _REPO_ROOT.parent / "shared" / "data" / "dss_palm"


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    # "gt": dataset labels; "teacher": the teacher's labels; "gt_else_teacher": the dataset
    # label when the record has one, else the teacher's (self-training on labeled + unlabeled).
    label_source: str = "gt"
    teacher_sample: Union[int, str] = 0  # which sample per record: an index, or "all" parsed
    train_fraction: float = 1.0  # keep this fraction of train (the paper's data sweeps)
    seed: int = 0  # seed of that subsample (the reference's --run)
    validation_fraction: float = 0.1  # carved out of train when there is no validation cache
    validation_seed: int = 0
    # "label": predict: x -> label (DSS, finetuning, distillation). "rationale_then_label":
    # the single-task ablation, predict: x -> "<rationale> So the answer is: <label>".
    label_target: str = "label"

    def __post_init__(self):
        if self.label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source must be one of {LABEL_SOURCES}, got {self.label_source!r}")
        if not (self.teacher_sample == "all" or (isinstance(self.teacher_sample, int) and self.teacher_sample >= 0)):
            raise ValueError(f"teacher_sample must be a sample index >= 0 or 'all', got {self.teacher_sample!r}")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if self.label_target not in LABEL_TARGETS:
            raise ValueError(f"label_target must be one of {LABEL_TARGETS}, got {self.label_target!r}")


# The options of the DSS tasks as gin binds them (`task_options.train_fraction = 0.1`,
# optionally scoped by task name): the dataclass itself, registered under that name.
# Only calls through this name read gin; `TaskOptions(...)` in code does not.
task_options = gin.external_configurable(TaskOptions, name="task_options")


LABEL_TARGETS = ("label", "rationale_then_label")
LABEL_SOURCES = ("gt", "teacher", "gt_else_teacher")
ANSWER_SEPARATOR = " So the answer is: "


def single_task_target(rationale: str, label: str) -> str:
    """The ablation's one target: the rationale, then the label after a fixed phrase."""
    return (rationale.strip() + ANSWER_SEPARATOR + label).strip()


def split_single_task(prediction: str) -> tuple[str, str]:
    """(rationale, label) of a single-task prediction; the label is "" (no answer) when
    the answer phrase is missing."""
    head, sep, tail = prediction.rpartition(ANSWER_SEPARATOR.strip())
    return (head.strip(), tail.strip()) if sep else (prediction.strip(), "")


def current_options(task_name: str) -> TaskOptions:
    """The task's options as gin binds them now (scoped by the task's name)."""
    with gin.config_scope(task_name):
        return task_options()


def label_target(task_name: str) -> str:
    """What `predict:` answers with for a task (its options), or for every task of a SeqIO
    mixture, which must agree: one student answers the one prompt one way."""
    names = [task_name]
    if "seqio" in sys.modules:  # a mixture can only be registered through seqio
        from dss_jax.data import tasks as dss_tasks

        names = dss_tasks.task_names(task_name)
    targets = {name: current_options(name).label_target for name in names}
    if len(set(targets.values())) > 1:
        raise UserError(
            f"mixture {task_name!r}: its tasks train different label targets ({targets}); bind "
            "task_options.label_target once for all of them"
        )
    return targets[names[0]]


def effective_feature_lengths(task_name: str, feature_lengths: Mapping[str, int]) -> dict[str, int]:
    """TASK_FEATURE_LENGTHS, with room for rationale + label in one target when the task
    (or mixture) trains the single-task ablation."""
    lengths = dict(feature_lengths)
    if label_target(task_name) == "rationale_then_label":
        lengths["label_targets"] = lengths["label_targets"] + lengths["rationale_targets"]
    return lengths


@gin.configurable
def data_locations(
    data_dir: Optional[str] = None, cache_dir: Optional[str] = None
) -> tuple[pathlib.Path, pathlib.Path]:
    """(the paper's files, where imported caches and trained vocabularies go).

    Defaults: $DSS_PALM_DIR or ../shared/data/dss_palm next to the repository, and
    $DSS_CACHE_DIR or ~/.cache/dss_jax. Either may be an object-store URL (gs://...): the
    path objects are then etils.epath paths (files.path).
    """
    data = data_dir or os.environ.get("DSS_PALM_DIR") or DEFAULT_DATA_DIR
    cache = cache_dir or cli.project_cache_dir()
    return files.path(os.fspath(data)), files.path(os.fspath(cache))


# Options that change how a trained student answers (label_target) or which examples a
# task's validation split holds; the other options only pick training examples.
RUN_OPTIONS = ("label_target", "validation_fraction", "validation_seed")


def bound_option(task_name: str, name: str):
    """The value gin binds for `task_options.NAME` in the task's scope or unscoped, or None."""
    for key in (f"{task_name}/task_options.{name}", f"task_options.{name}"):
        try:
            return gin.query_parameter(key)
        except ValueError:
            continue
    return None


def use_run_options(task_name: str, checkpoint_path: str, setting: str) -> Optional[str]:
    """Makes `task_name` decode and score the way the checkpoint's run was trained.

    Each of RUN_OPTIONS the run recorded (its task.json; label_target from config.gin for
    older runs) is bound for `task_name` unless gin binds it too; a contradicting binding
    is an error naming both values. validation_* apply only to the run's own task.
    Returns the run's label_target (None for a checkpoint that is no run's).
    """
    from dss_jax import checkpoints

    found = checkpoints.run_task(checkpoint_path)
    if found is None:
        return None
    source, run_task_name, options = found
    for name in RUN_OPTIONS:
        if name not in options or (name != "label_target" and run_task_name != task_name):
            continue
        value, bound = options[name], bound_option(task_name, name)
        if bound is not None and bound != value:
            raise UserError(
                f"{setting} was trained with task_options.{name}={value!r} ({source}) but this command binds "
                f"{bound!r}: drop the binding to use the run's, or evaluate a checkpoint trained with {bound!r}"
            )
        if bound is None and value != getattr(TaskOptions(), name):
            with gin.unlock_config():
                gin.bind_parameter(f"{task_name}/task_options.{name}", value)
            logging.info("%s: task_options.%s=%r, as its run was trained (%s)", task_name, name, value, source)
    return options.get("label_target")
