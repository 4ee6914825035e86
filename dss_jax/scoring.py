"""Decode-based evaluation of a task split: the eval binary's and the train loop's.

    examples = load_examples("dss_svamp", "test", feature_lengths)
    result = decode_and_score(model, params, examples, batch_size=32)   # greedy by default
    write_outputs(result, "/tmp/eval/step_1000", step=1000)      # predictions.jsonl, metrics.json
    result.metrics  # {"accuracy": ..., "teacher_agreement": ..., "num_examples": ...}

Every example of a split is decoded (`predict: x -> label`, and `explain: x -> rationale`
when asked) by `prediction.answer`, in batches of a fixed size; predictions do not depend
on the batch size. Labels are judged with `parsers.labels_match` for the task's family:
SVAMP equations by value with the safe evaluator, every other family by exact text, as
the reference implementation scores them. When the teacher's label is known (the task's
`teacher_label` feature), the student's agreement with its teacher is reported too.

`make_train_eval_hook` wraps the same code for the training loop's `eval_hook`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import numpy as np

import gin
from dss_jax import files
from dss_jax.data import lengths as dss_lengths
from dss_jax.data import options as dss_options
from dss_jax.data import paired as dss_paired
from dss_jax.data import parsers
from dss_jax.data import tasks as dss_tasks
from dss_jax.model.decoding import DecodeConfig
from dss_jax.prediction import DecodeSettings, answer

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"


# --------------------------------------------------------------------------------------
# Examples of a split
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EvalExamples:
    """The examples of one task split, in the order of the split."""

    task_name: str
    split: str
    family: str
    vocabulary: Any  # seqio.Vocabulary of the task's features
    feature_lengths: Mapping[str, int]
    ids: list[str]
    inputs: list[str]  # raw inputs, without the "predict: " prefix
    targets: list[str]  # gold labels
    teacher_labels: list[Optional[str]]  # None where the record has no parsed teacher label
    label_tokens: np.ndarray  # [n, label_inputs] int32, "predict: ..." padded with 0
    rationale_tokens: np.ndarray  # [n, rationale_inputs] int32, "explain: ..."

    def __len__(self) -> int:
        return len(self.ids)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _pad_rows(rows: Sequence[np.ndarray], length: int) -> np.ndarray:
    out = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row[:length]
    return out


def load_examples(
    task_name: str, split: str, feature_lengths: Mapping[str, int], max_examples: Optional[int] = None
) -> EvalExamples:
    """Reads and tokenizes a split of a DSS task (inputs trimmed to the feature lengths; how
    many examples are cut is logged, `lengths.report_truncation`)."""
    task = dss_tasks.get_task(task_name)
    if split not in task.splits:
        raise ValueError(f"task {task_name!r} has no split {split!r}; its splits: {', '.join(task.splits)}")
    missing = [k for k in dss_paired.PAIRED_TEXT_FEATURES if k not in feature_lengths]
    if missing:
        raise ValueError(f"TASK_FEATURE_LENGTHS lacks {missing}; it needs {list(dss_paired.PAIRED_TEXT_FEATURES)}")
    dss_lengths.report_truncation(task_name, split, feature_lengths, max_examples=max_examples)  # scored cut
    feature_lengths = dss_options.effective_feature_lengths(task_name, feature_lengths)
    dataset = task.get_dataset(dict(feature_lengths), split=split, shuffle=False, num_epochs=1, use_cached=False)
    if max_examples is not None:
        dataset = dataset.take(max_examples)
    ids, inputs, targets, teacher, label_rows, rationale_rows = [], [], [], [], [], []
    for ex in dataset.as_numpy_iterator():
        ids.append(_text(ex["id"]))
        inputs.append(_text(ex["label_inputs_pretokenized"]).removeprefix(dss_paired.LABEL_PREFIX))
        targets.append(_text(ex["label_targets_pretokenized"]))
        label = _text(ex.get(dss_paired.TEACHER_LABEL, b""))
        teacher.append(label or None)
        label_rows.append(ex["label_inputs"])
        rationale_rows.append(ex["rationale_inputs"])
    if not ids:
        raise ValueError(f"{task_name}/{split} has no examples")
    return EvalExamples(
        task_name=task_name,
        split=split,
        family=dss_tasks.task_family(task_name),
        vocabulary=task.output_features["label_targets"].vocabulary,
        feature_lengths=dict(feature_lengths),
        ids=ids,
        inputs=inputs,
        targets=targets,
        teacher_labels=teacher,
        label_tokens=_pad_rows(label_rows, feature_lengths["label_inputs"]),
        rationale_tokens=_pad_rows(rationale_rows, feature_lengths["rationale_inputs"]),
    )


# --------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------


def score(
    family: str, predictions: Sequence[str], targets: Sequence[str], teacher_labels: Sequence[Optional[str]] = ()
) -> tuple[list[bool], dict[str, float]]:
    """(per-example correctness, metrics) of predicted labels.

    accuracy: fraction judged equal to the gold label (`parsers.labels_match`).
    teacher_agreement: fraction of the examples with a teacher label where the student's
    label matches the teacher's (and teacher_accuracy: how often that teacher label is
    right), only when some example has one.
    """
    correct = [parsers.labels_match(family, p, t) for p, t in zip(predictions, targets)]
    metrics = {"num_examples": float(len(correct)), "accuracy": float(np.mean(correct)) if correct else 0.0}
    with_teacher = [i for i, t in enumerate(teacher_labels) if t]
    if with_teacher:
        agree = [parsers.labels_match(family, predictions[i], teacher_labels[i]) for i in with_teacher]
        teacher_right = [parsers.labels_match(family, teacher_labels[i], targets[i]) for i in with_teacher]
        metrics.update(
            teacher_agreement=float(np.mean(agree)),
            teacher_accuracy=float(np.mean(teacher_right)),
            num_teacher_labels=float(len(with_teacher)),
        )
    return correct, metrics


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class EvalResult:
    records: list[dict]  # one predictions.jsonl row per example
    metrics: dict[str, float]


def decode_and_score(
    model,
    params,
    examples: EvalExamples,
    *,
    batch_size: int = 32,
    decode: Union[DecodeSettings, DecodeConfig, None] = None,
    output_rationale: bool = False,
    progress: bool = False,
) -> EvalResult:
    """Decodes the labels (and optionally the rationales) of `examples` and scores them
    (with a progress bar per pass when `progress`)."""
    vocab_size = examples.vocabulary.vocab_size
    if vocab_size > model.config.vocab_size:
        raise ValueError(
            f"the task's vocabulary has {vocab_size} pieces but the model only {model.config.vocab_size} "
            "embeddings: evaluate with the vocabulary the model was trained with (task_vocabulary.spm_path)"
        )
    lengths = examples.feature_lengths
    start = time.perf_counter()
    # The single-task ablation writes its rationale before the label: the label is scored.
    predictions, rationales = answer(
        model,
        params,
        examples.vocabulary,
        examples.label_tokens,
        label_length=lengths["label_targets"],
        rationale_rows=examples.rationale_tokens if output_rationale else None,
        rationale_length=lengths["rationale_targets"],
        single_task=dss_options.current_options(examples.task_name).label_target == "rationale_then_label",
        batch_size=batch_size,
        decode=decode,
        progress=examples.task_name if progress else None,
    )
    seconds = time.perf_counter() - start
    correct, metrics = score(examples.family, predictions, examples.targets, examples.teacher_labels)
    metrics["examples_per_second"] = len(examples) / max(seconds, 1e-9)
    records = []
    for i, example_id in enumerate(examples.ids):
        row = {
            "id": example_id,
            "input": examples.inputs[i],
            "target": examples.targets[i],
            "prediction": predictions[i],
        }
        if rationales is not None:
            row["rationale"] = rationales[i]
        if examples.teacher_labels[i] is not None:
            row["teacher_label"] = examples.teacher_labels[i]
        row["correct"] = correct[i]
        records.append(row)
    return EvalResult(records=records, metrics=metrics)


# --------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------


def write_outputs(
    result: EvalResult, output_dir: str, *, step: Optional[int] = None, info: Optional[Mapping[str, Any]] = None
) -> None:
    """Writes predictions.jsonl and metrics.json (metrics plus `info`) into `output_dir`."""
    if jax.process_index() != 0:
        return
    if not files.is_remote(output_dir):  # an object store has no directories to make
        os.makedirs(output_dir, exist_ok=True)
    predictions = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in result.records)
    files.atomic_write(os.path.join(output_dir, PREDICTIONS_FILE), predictions)
    summary = {**dict(info or {}), "step": step, **result.metrics}
    # Last: a metrics.json means the evaluation finished (the sweep resumes on it).
    files.atomic_write(os.path.join(output_dir, METRICS_FILE), json.dumps(summary, indent=2, sort_keys=True) + "\n")


def tasks_examples(
    task_name: str, split: str, feature_lengths: Mapping[str, int], max_examples: Optional[int] = None
) -> dict[str, EvalExamples]:
    """{task: its examples} of MIXTURE_OR_TASK_NAME's split: the task's, or each task's of a
    SeqIO mixture (those that have the split)."""
    return {
        name: load_examples(name, split, feature_lengths, max_examples)
        for name in dss_tasks.tasks_with_split(task_name, split)
    }


def mixture_metrics(task_name: str, results: Mapping[str, EvalResult]) -> dict[str, float]:
    """The metrics of an evaluation of MIXTURE_OR_TASK_NAME: a task's own; for a mixture,
    each task's under `TASK/` and, unprefixed, their unweighted mean over the tasks
    (`num_examples`: the sum), which validation selects on and tables show."""
    if list(results) == [task_name]:
        return dict(results[task_name].metrics)
    out: dict[str, float] = {}
    for name, result in results.items():
        out.update({f"{name}/{k}": v for k, v in result.metrics.items()})
    shared = set.intersection(*(set(r.metrics) for r in results.values()))
    for k in sorted(shared):
        values = [r.metrics[k] for r in results.values()]
        out[k] = float(sum(values)) if k == "num_examples" else float(sum(values) / len(values))
    return out


def write_tasks_outputs(
    task_name: str,
    results: Mapping[str, EvalResult],
    output_dir: str,
    *,
    step: Optional[int] = None,
    info: Optional[Mapping[str, Any]] = None,
) -> None:
    """`write_outputs` for MIXTURE_OR_TASK_NAME: a task's into `output_dir`; a mixture's
    tasks each into `output_dir/TASK/`, then `output_dir/metrics.json` with
    `mixture_metrics` (last, so it still marks the evaluation finished)."""
    if list(results) == [task_name]:
        write_outputs(results[task_name], output_dir, step=step, info={**dict(info or {}), "task": task_name})
        return
    for name, result in results.items():
        write_outputs(result, os.path.join(output_dir, name), step=step, info={**dict(info or {}), "task": name})
    if jax.process_index() == 0:
        summary = {**dict(info or {}), "task": task_name, "step": step, **mixture_metrics(task_name, results)}
        files.atomic_write(os.path.join(output_dir, METRICS_FILE), json.dumps(summary, indent=2, sort_keys=True) + "\n")


TABLE_COLUMNS = ("accuracy", "teacher_agreement", "num_examples", "examples_per_second")


def format_table(rows: Mapping[Optional[int], Mapping[str, float]]) -> str:
    """A short text table: one line per evaluated step."""
    header = f"{'step':>10}  " + "  ".join(f"{c:>19}" for c in TABLE_COLUMNS)
    lines = [header]
    for step, metrics in rows.items():
        cells = []
        for c in TABLE_COLUMNS:
            v = metrics.get(c)
            cells.append(f"{'-':>19}" if v is None else (f"{int(v):>19d}" if c == "num_examples" else f"{v:>19.4f}"))
        lines.append(f"{'-' if step is None else step:>10}  " + "  ".join(cells))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Evaluation during training
# --------------------------------------------------------------------------------------


class TrainEvalHook:
    """`eval_hook(params=..., step=...) -> {"decode/accuracy": ..., ...}` for the train loop.

    The examples are read once, on the first call. `model` may be set after construction
    (the loop's own model); when it is None at the first call, it is built from gin's
    `model_config` like the train binary builds it. With `output_dir`, each call also
    writes predictions.jsonl and metrics.json into `output_dir/step_<step>/`. In a
    multi-process run every process decodes all the examples with the global (sharded)
    params, in step; process 0 writes.
    """

    PREFIX = "decode/"

    def __init__(
        self,
        model,
        task_name: str,
        feature_lengths: Mapping[str, int],
        batch_size: int,
        split: str = "validation",
        decode_config: Union[DecodeSettings, DecodeConfig, None] = None,
        max_examples: Optional[int] = None,
        output_rationale: bool = False,
        output_dir: Optional[str] = None,
        initial_checkpoint_path: Optional[str] = None,
    ):
        self.model = model
        self.task_name, self.split = task_name, split
        self.feature_lengths = dict(feature_lengths)
        self.batch_size, self.decode_config = batch_size, decode_config
        self.max_examples, self.output_rationale = max_examples, output_rationale
        self.output_dir = output_dir
        self._initial_checkpoint_path = initial_checkpoint_path
        self._examples: Optional[dict[str, EvalExamples]] = None

    def __call__(self, *, params, step: int) -> dict[str, float]:
        if self.model is None:
            from dss_jax.configurables import build_model, model_config

            self.model = build_model(model_config(checkpoint_path=self._initial_checkpoint_path))
        if self._examples is None:  # a task's, or each task's of a mixture
            self._examples = tasks_examples(self.task_name, self.split, self.feature_lengths, self.max_examples)
        results = {
            name: decode_and_score(
                self.model,
                params,
                examples,
                batch_size=self.batch_size,
                decode=self.decode_config,
                output_rationale=self.output_rationale,
            )
            for name, examples in self._examples.items()
        }
        if self.output_dir:
            write_tasks_outputs(
                self.task_name,
                results,
                os.path.join(self.output_dir, f"step_{step}"),
                step=step,
                info={"split": self.split},
            )
        metrics = mixture_metrics(self.task_name, results)
        logging.info("decode eval at step %d on %s/%s: %s", step, self.task_name, self.split, json.dumps(metrics))
        return {self.PREFIX + k: v for k, v in metrics.items()}


@gin.configurable
def make_train_eval_hook(
    model=None,
    *,
    task_name: str = gin.REQUIRED,
    feature_lengths: Mapping[str, int] = gin.REQUIRED,
    batch_size: int = 32,
    split: str = "validation",
    decode_config: Union[DecodeSettings, DecodeConfig, None] = None,
    max_examples: Optional[int] = None,
    output_rationale: bool = False,
    output_dir: Optional[str] = None,
    initial_checkpoint_path: Optional[str] = None,
) -> Callable[..., dict[str, float]]:
    """The decode-based eval hook of the train loop (see `TrainEvalHook`). In gin:

    train.eval_hook = @make_train_eval_hook()
    make_train_eval_hook.task_name = %MIXTURE_OR_TASK_NAME
    make_train_eval_hook.feature_lengths = %TASK_FEATURE_LENGTHS
    make_train_eval_hook.initial_checkpoint_path = %INITIAL_CHECKPOINT_PATH
    make_train_eval_hook.max_examples = 1000
    """
    return TrainEvalHook(
        model,
        task_name,
        feature_lengths,
        batch_size,
        split,
        decode_config,
        max_examples,
        output_rationale,
        output_dir,
        initial_checkpoint_path,
    )
