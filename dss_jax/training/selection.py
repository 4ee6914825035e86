"""Which checkpoint validation selects, and when a run has stopped improving on it.

With EVAL_PERIOD > 0 the loop scores the validation split every EVAL_PERIOD steps into
MODEL_DIR/validation/metrics.jsonl, each record with the examples and real tokens trained
on so far. `train.keep_best_checkpoints` keeps every checkpoint that was the best so far
when it was evaluated (the only ones a selection can choose, within any budget);
`train.early_stopping_patience` stops the run after that many evaluations in a row
without a new best. MODEL_DIR/validation/selection.json records the rule.

    evals = read_evaluations("/runs/x")              # [Evaluation(step, value, examples_seen, real_tokens_seen)]
    best_evaluation(evals, "max", max_real_tokens=2e6)   # the best within 2M real tokens
    python -m dss_jax.eval ... --gin.STEPS="'best'"  # scores the selected checkpoint
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Iterable, Optional, Sequence

from dss_jax import files, settings
from dss_jax.metrics_writer import read_records

VALIDATION_DIR = "validation"  # MODEL_DIR/validation/: metrics.jsonl, TensorBoard
SELECTION_FILE = "selection.json"  # MODEL_DIR/validation/selection.json: the rule
MODES = ("max", "min")
SEEN_EXAMPLES, SEEN_TOKENS = "examples_seen", "real_tokens_seen"  # in every train and validation record


@dataclasses.dataclass(frozen=True)
class Evaluation:
    step: int
    value: float  # the selection metric; NaN when the record lacks it or it was not finite
    examples_seen: float  # examples trained on before this checkpoint (NaN: not recorded)
    real_tokens_seen: float  # real (non-padding) tokens trained on before it


@dataclasses.dataclass(frozen=True)
class SelectionRule:
    metric: str = "decode/accuracy"
    mode: str = "max"
    early_stopping_patience: Optional[int] = None

    def better(self, a: float, b: Optional[float]) -> bool:
        """Whether value `a` beats `b` (None: nothing yet); NaN never does, ties do not."""
        if math.isnan(a):
            return False
        return b is None or (a > b if self.mode == "max" else a < b)


def _float(v) -> float:
    try:
        return float(v)  # MetricsWriter writes a non-finite value as its string ("nan")
    except (TypeError, ValueError):
        return math.nan


def evaluations_of(records: Iterable[dict], metric: str) -> list[Evaluation]:
    return [
        Evaluation(int(r["step"]), _float(r.get(metric)), _float(r.get(SEEN_EXAMPLES)), _float(r.get(SEEN_TOKENS)))
        for r in sorted(records, key=lambda r: r["step"])
    ]


def read_rule(model_dir: str) -> Optional[SelectionRule]:
    path = os.path.join(model_dir, VALIDATION_DIR, SELECTION_FILE)
    if not files.path(path).is_file():
        return None
    data = files.read_json_object(path, settings.SettingError, "the run's checkpoint selection rule")
    return SelectionRule(**{f.name: data[f.name] for f in dataclasses.fields(SelectionRule) if f.name in data})


def write_rule(model_dir: str, rule: SelectionRule) -> None:
    path = os.path.join(model_dir, VALIDATION_DIR, SELECTION_FILE)
    files.makedirs(os.path.dirname(path))
    files.atomic_write(path, json.dumps(dataclasses.asdict(rule), indent=1) + "\n")


def read_evaluations(model_dir: str, metric: Optional[str] = None) -> list[Evaluation]:
    """The run's validation evaluations, by step, on `metric` (default: the run's rule's)."""
    metric = metric or (read_rule(model_dir) or SelectionRule()).metric
    return evaluations_of(read_records(os.path.join(model_dir, VALIDATION_DIR, "metrics.jsonl")), metric)


def best_so_far(evaluations: Sequence[Evaluation], rule: SelectionRule) -> list[Evaluation]:
    """The evaluations that beat every earlier one: what a selection within any budget of
    steps, examples or tokens can choose (the last of them within the budget)."""
    out: list[Evaluation] = []
    for e in evaluations:
        if rule.better(e.value, out[-1].value if out else None):
            out.append(e)
    return out


def best_evaluation(
    evaluations: Sequence[Evaluation],
    mode: str = "max",
    *,
    max_steps: Optional[float] = None,
    max_examples: Optional[float] = None,
    max_real_tokens: Optional[float] = None,
) -> Optional[Evaluation]:
    """The best evaluation (the earliest on a tie) among those within every given budget
    (steps, examples seen, real tokens seen); None when none is within it."""
    rule = SelectionRule(mode=mode)
    within = [
        e
        for e in evaluations
        if (max_steps is None or e.step <= max_steps)
        and (max_examples is None or e.examples_seen <= max_examples)
        and (max_real_tokens is None or e.real_tokens_seen <= max_real_tokens)
    ]
    records = best_so_far(within, rule)
    return records[-1] if records else None


def seen_from_train_records(path: str, step: Optional[int] = None) -> dict[str, float]:
    """{"examples", "tokens"} trained on up to `step` (default: the last record), summed
    from a train/metrics.jsonl whose records average the steps since the previous one (a
    run's records before they carried the running totals)."""
    previous, tokens, examples = 0, 0.0, 0.0
    for r in read_records(path):
        if step is not None and r["step"] > step:
            break
        n = r["step"] - previous
        tokens += _float(r.get("real_tokens_per_step")) * n
        examples += _float(r.get("examples_per_step")) * n
        previous = r["step"]
    return {"examples": examples, "tokens": tokens}


class Tracker:
    """The loop's running selection: the best evaluation so far, how many evaluations
    since it, whether to stop, and the steps whose checkpoints to keep."""

    def __init__(self, rule: SelectionRule):
        self.rule = rule
        self.best: Optional[Evaluation] = None
        self.since_best = 0
        self.best_steps: set[int] = set()
        self.evaluated: set[int] = set()

    def add(self, evaluation: Evaluation) -> bool:
        """Counts one evaluation; True when it is a new best."""
        self.evaluated.add(evaluation.step)
        if self.rule.better(evaluation.value, None if self.best is None else self.best.value):
            self.best, self.since_best = evaluation, 0
            self.best_steps.add(evaluation.step)
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        patience = self.rule.early_stopping_patience
        return patience is not None and self.best is not None and self.since_best >= patience
