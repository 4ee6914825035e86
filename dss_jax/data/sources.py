"""The four datasets of the paper: how each example's input and gold label are built.

Rows are dicts in the shape of the paper's released `{dataset}_{split}.json` lines (the
same shape the Hugging Face readers produce). The input text is what the student sees
after its task prefix, built as the reference implementation builds it:

    svamp   the file's `input` (the problem body, "\\n", the question)
    cqa     question + "\\nAnswer Choices:" + "\\n(a) <choice>" ... "\\n(e) <choice>"
    anli1   premise + "</s>" + hypothesis   (the reference joins with the tokenizer's EOS
    esnli   premise + "</s>" + hypothesis    token; tokenization turns "</s>" into EOS)

Gold labels: svamp the equation, cqa the answer text, NLI the class name.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import numpy as np

from dss_jax.data import parsers

# The reference joins premise and hypothesis with T5's EOS token; the tokenizer step
# (dss_jax.data.tasks) maps this literal back to the EOS id.
EOS_SEPARATOR = "</s>"
NLI_LABELS = ("entailment", "neutral", "contradiction")
CQA_LETTERS = "abcde"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    family: str  # the parser family (dss_jax.data.parsers)
    chunk_size: int  # completions per `llm/{split}_CoT_{k}.json` file
    splits: tuple[str, ...]  # splits of the paper's files
    has_validation: bool  # False: the validation split is carved out of train


DATASETS: dict[str, DatasetSpec] = {
    "svamp": DatasetSpec("svamp", "svamp", 500, ("train", "test"), False),
    "cqa": DatasetSpec("cqa", "cqa", 1000, ("train", "test"), False),
    "esnli": DatasetSpec("esnli", "esnli", 5500, ("train", "valid", "test", "sample"), True),
    "anli1": DatasetSpec("anli1", "anli1", 5000, ("train", "valid", "test", "sample"), True),
}


def get_spec(dataset: str) -> DatasetSpec:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[dataset]


def _field(row: Mapping[str, Any], key: str, dataset: str, where: str) -> Any:
    if key not in row:
        raise KeyError(f"{where}: a {dataset} row needs the field {key!r}; got fields {sorted(row)}")
    return row[key]


def build_input(dataset: str, row: Mapping[str, Any], where: str = "<row>") -> str:
    """The model input text of one row (before the `predict:`/`explain:` prefix)."""
    spec = get_spec(dataset)
    if spec.name == "svamp":
        if "input" in row:
            return _field(row, "input", dataset, where)
        # A row straight from SVAMP.json (or its Hugging Face copy).
        return f"{_field(row, 'Body', dataset, where)}\n{_field(row, 'Question', dataset, where)}"
    if spec.name == "cqa":
        choices = list(_field(row, "choices", dataset, where))
        if len(choices) != len(CQA_LETTERS):
            raise ValueError(f"{where}: a cqa row needs 5 choices, got {len(choices)}")
        lines = [_field(row, "question", dataset, where), "Answer Choices:"]
        lines += [f"({letter}) {choice}" for letter, choice in zip(CQA_LETTERS, choices)]
        return "\n".join(lines)
    premise = _field(row, "premise", dataset, where)
    hypothesis = _field(row, "hypothesis", dataset, where)
    return f"{premise}{EOS_SEPARATOR}{hypothesis}"


def gold_label(dataset: str, row: Mapping[str, Any], where: str = "<row>") -> Optional[str]:
    """The ground-truth label as text; None when the row has none (e.g. label -1)."""
    spec = get_spec(dataset)
    if spec.name == "svamp":
        return row["label"] if "label" in row else _field(row, "Equation", dataset, where)
    if spec.name == "cqa":
        return _field(row, "answer", dataset, where)
    label = _field(row, "label", dataset, where)
    if isinstance(label, str):
        return label
    if isinstance(label, int) and 0 <= label < len(NLI_LABELS):
        return NLI_LABELS[label]
    return None


def source_id(row: Mapping[str, Any]) -> Optional[str]:
    """The dataset's own example id, when it has one (cqa `id`, anli `uid`, svamp `ID`)."""
    for key in ("id", "uid", "ID"):
        if isinstance(row.get(key), str):
            return row[key]
    return None


def family_of(dataset: str) -> str:
    return parsers.canonical_family(get_spec(dataset).family)


def split_off(n: int, held_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held) positions of a random split of range(n), as the reference splits.

    The reference uses Hugging Face's `train_test_split(test_size=held_fraction, seed=...)`:
    a `numpy.random.default_rng(seed)` permutation whose first ceil(held_fraction * n)
    entries are held out and the rest kept, in permutation order. Reproduced here so the
    same seed selects the same examples without needing `datasets`.
    """
    if not 0.0 <= held_fraction < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {held_fraction}")
    permutation = np.random.default_rng(seed).permutation(n)
    n_held = math.ceil(held_fraction * n)
    return permutation[n_held:], permutation[:n_held]


def subsample(n: int, fraction: float, seed: int) -> np.ndarray:
    """Positions kept when training on `fraction` of n examples (the paper's data sweeps).

    As the reference's `--subsample`: the complement is held out with seed `seed` (its
    `--run`), so a fraction of 1.0 keeps everything in the original order.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"train fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return np.arange(n)
    kept, _ = split_off(n, 1.0 - fraction, seed)
    return kept


SVAMP_TRAIN_SIZE = 800


def svamp_paper_split(rows: list, split: str) -> list:
    """The paper's SVAMP train/test split of the 1000 problems of SVAMP.json.

    The reference draws `numpy.random.RandomState(0).permutation(n)` and keeps the first
    800 positions as train, the rest as test (the released svamp_{train,test}.json).
    """
    if split not in ("train", "test"):
        raise ValueError(f"svamp has the splits 'train' and 'test', not {split!r}")
    permutation = np.random.RandomState(seed=0).permutation(len(rows))
    chosen = permutation[:SVAMP_TRAIN_SIZE] if split == "train" else permutation[SVAMP_TRAIN_SIZE:]
    return [rows[i] for i in chosen]
