"""The embedded default dataset: synthetic word problems with a cached, fallible teacher.

Arithmetic word problems in the spirit of SVAMP (templates.py: 26 shapes, one to three
operations, distractor sentences), each answered by a scripted chain-of-thought teacher
(teacher.py) that is wrong, slips or fails to answer
on configured fractions of the examples. The result is written in the teacher cache
format (dss_jax/data/cache.py) with `dataset: "synthetic"`, so training on it runs
exactly the code path of a real teacher's cache:

    {"id": "synthetic/train/0", "input": "Tom had 5 apples. ...\\nHow many apples ...?",
     "label": "( 5.0 + 3.0 )", "dataset": "synthetic", "split": "train", "position": 0,
     "samples": [{"rationale": "...", "label": "(5 + 3)", "completion": "... The answer is (5 + 3).",
                  "teacher": "synthetic-teacher", "prompt_id": "synthetic-cot", "meta": {...}}],
     "meta": {"answer": 8, "template": "change_gain", "operations": 1, "distractors": []}}

Everything follows from `SyntheticConfig` and its seed: the same settings give
byte-identical files. The files live in a directory named after a hash of the settings
(`<cache_dir>/synthetic/seed<seed>-<hash>/{train,validation,test}.jsonl`, plus
`unlabeled.jsonl` with `unlabeled_size` > 0: problems without label or teacher sample, for
self-training, see docs/bootstrap.md), so changing a
setting makes new files and never reuses stale ones; `ensure_dataset` writes them when
missing. The SeqIO task `dss_synthetic` (tasks/synthetic.py) reads the settings from gin
(`synthetic_config.*`); `python -m dss_jax.make_synthetic` writes them from the shell.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import pathlib
import random
from typing import Mapping, Optional, Sequence

import gin
from dss_jax import files
from dss_jax.data import parsers, safe_eval
from dss_jax.data.cache import CacheRecord, CacheWriter, TeacherSample
from dss_jax.data.synthetic.problems import NumberRange, Problem, operation_count
from dss_jax.data.synthetic.teacher import FAMILY, answer, assign_outcomes
from dss_jax.data.synthetic.templates import generate_problem

# Bump when the generator's output changes for the same settings (new templates,
# phrasing): old files then stay where they are and new ones get a new name.
GENERATOR_VERSION = 1
DATASET = "synthetic"
TEACHER = "synthetic-teacher"
PROMPT_ID = "synthetic-cot"
SPLITS = ("train", "validation", "test")
UNLABELED = "unlabeled"  # the optional pool of unlabeled problems (unlabeled_size > 0)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Everything that decides the generated files (and so their directory's name)."""

    seed: int = 0
    train_size: int = 2000
    validation_size: int = 200
    test_size: int = 300
    # Difficulty: operations per problem, the range of the story's numbers, distractors.
    min_operations: int = 1
    max_operations: int = 3
    min_number: int = 2
    max_number: int = 50
    distractor_rate: float = 0.3  # problems with an extra sentence whose number must be ignored
    # The teacher, per completion: exactly round(n * rate) of each outcome per split.
    teacher_error_rate: float = 0.15  # wrong label (and usually wrong reasoning)
    teacher_slip_rate: float = 0.05  # an arithmetic slip in the rationale, right label
    unparsable_rate: float = 0.02  # no answer phrase: the parser finds no label
    continuation_rate: float = 0.3  # parsable completions that ramble on into an invented "Q:"
    samples_per_record: int = 1  # teacher samples per problem (for self-consistency)
    # Problems with no label and no teacher sample (split "unlabeled"), for self-training:
    # drawn after the other splits, so train/validation/test do not change with it.
    unlabeled_size: int = 0

    def __post_init__(self):
        def need(ok: bool, what: str):
            if not ok:
                raise ValueError(f"synthetic dataset setting: {what} (settings: {self})")

        need(
            all(
                isinstance(getattr(self, f), int)
                for f in (
                    "seed",
                    "train_size",
                    "validation_size",
                    "test_size",
                    "min_operations",
                    "max_operations",
                    "min_number",
                    "max_number",
                    "samples_per_record",
                    "unlabeled_size",
                )
            ),
            "sizes, counts and numbers must be integers",
        )
        need(
            self.train_size >= 1 and self.validation_size >= 1 and self.test_size >= 1,
            "train_size, validation_size and test_size must be at least 1",
        )
        need(
            1 <= self.min_operations <= self.max_operations <= 3,
            f"need 1 <= min_operations <= max_operations <= 3, got {self.min_operations}..{self.max_operations}",
        )
        need(
            1 <= self.min_number and self.min_number + 3 <= self.max_number,
            f"need 1 <= min_number and max_number >= min_number + 3, got [{self.min_number}, {self.max_number}]",
        )
        for name in (
            "distractor_rate",
            "teacher_error_rate",
            "teacher_slip_rate",
            "unparsable_rate",
            "continuation_rate",
        ):
            need(0.0 <= getattr(self, name) <= 1.0, f"{name} must be in [0, 1], got {getattr(self, name)}")
        need(
            self.teacher_error_rate + self.teacher_slip_rate + self.unparsable_rate <= 1.0,
            "teacher_error_rate + teacher_slip_rate + unparsable_rate must be at most 1",
        )
        need(self.samples_per_record >= 1, f"samples_per_record must be at least 1, got {self.samples_per_record}")
        need(self.unlabeled_size >= 0, f"unlabeled_size must be at least 0, got {self.unlabeled_size}")

    @property
    def splits(self) -> tuple[str, ...]:
        return SPLITS + ((UNLABELED,) if self.unlabeled_size else ())

    def sizes(self) -> dict[str, int]:
        sizes = {"train": self.train_size, "validation": self.validation_size, "test": self.test_size}
        if self.unlabeled_size:
            sizes[UNLABELED] = self.unlabeled_size
        return sizes

    def settings(self) -> dict:
        """What the files depend on. unlabeled_size is left out when 0, so that the datasets
        written before it existed keep their names."""
        settings = {"generator_version": GENERATOR_VERSION, **dataclasses.asdict(self)}
        if not self.unlabeled_size:
            del settings["unlabeled_size"]
        return settings

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:12]


# The dataset's settings as gin binds them (`synthetic_config.max_operations = 2`): the
# dataclass itself, registered under that name. Only calls through this name read gin;
# `SyntheticConfig(...)` in code stays independent of the bindings.
synthetic_config = gin.external_configurable(SyntheticConfig, name="synthetic_config")


@gin.configurable
def synthetic_cache_dir(directory: Optional[str] = None) -> pathlib.Path:
    """Where generated datasets go: `directory`, else `data_locations()`'s cache dir."""
    if directory:
        return files.path(directory)  # ~ expanded; a gs:// URL stays one
    from dss_jax.data.options import data_locations

    return data_locations()[1]


# --------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------


def rng_for(config: SyntheticConfig, *key) -> random.Random:
    """The random stream of one draw, keyed by the seed and `key` (a split, an index ...)."""
    # A string seed is hashed (sha512) by `random`, the same in every process and version.
    return random.Random("/".join(["dss-synthetic", str(config.seed), *map(str, key)]))


def _problem(config: SyntheticConfig, rng: random.Random) -> Problem:
    return generate_problem(
        rng,
        NumberRange(config.min_number, config.max_number),
        config.min_operations,
        config.max_operations,
        config.distractor_rate,
    )


def generate_problems(config: SyntheticConfig) -> dict[str, list[Problem]]:
    """The problems of every split; no input text appears twice in the dataset.

    Splits are drawn in order (train, validation, test, then unlabeled), each from its own
    seeded stream, so the unlabeled pool changes nothing before it."""
    seen: set[str] = set()
    out: dict[str, list[Problem]] = {}
    for split, size in config.sizes().items():
        problems = []
        for i in range(size):
            for attempt in range(1000):
                problem = _problem(config, rng_for(config, split, i, attempt))
                if problem.text not in seen:
                    break
            else:
                raise ValueError(
                    f"could not draw {size} distinct {split} problems with {config}; "
                    "widen the number range (min_number, max_number) or allow more operations"
                )
            seen.add(problem.text)
            problems.append(problem)
        out[split] = problems
    return out


def generate_records(config: SyntheticConfig) -> dict[str, list[CacheRecord]]:
    """The cache records of every split: problems, gold labels and teacher samples."""
    records: dict[str, list[CacheRecord]] = {}
    for split, problems in generate_problems(config).items():
        if split == UNLABELED:
            records[split] = [_unlabeled_record(i, problem) for i, problem in enumerate(problems)]
            continue
        outcomes = [
            assign_outcomes(
                len(problems),
                rng_for(config, split, "outcomes", k),
                config.teacher_error_rate,
                config.teacher_slip_rate,
                config.unparsable_rate,
            )
            for k in range(config.samples_per_record)
        ]
        split_records = []
        for i, problem in enumerate(problems):
            samples = []
            for k in range(config.samples_per_record):
                rng = rng_for(config, split, i, "teacher", k)
                result = answer(problem, outcomes[k][i], rng, lambda: _problem(config, rng), config.continuation_rate)  # noqa: B023  (called in this iteration)
                parsed = parsers.parse_completion(FAMILY, result.completion)
                meta = {"outcome": result.outcome, **({"mistake": result.kind} if result.kind else {})}
                samples.append(
                    TeacherSample(parsed.rationale, parsed.label, result.completion, TEACHER, PROMPT_ID, meta)
                )
            split_records.append(
                CacheRecord(
                    id=f"{DATASET}/{split}/{i}",
                    input=problem.text,
                    label=problem.label,
                    samples=tuple(samples),
                    dataset=DATASET,
                    split=split,
                    position=i,
                    meta=_meta(problem),
                )
            )
        records[split] = split_records
    return records


def _meta(problem: Problem) -> dict:
    return {
        "answer": problem.answer,
        "template": problem.template,
        "operations": operation_count(problem.expr),
        "distractors": list(problem.distractors),
    }


def _unlabeled_record(i: int, problem: Problem) -> CacheRecord:
    # No label and no teacher sample: what a student annotates in self-training. The
    # answer stays in `meta` (training never reads meta), so annotations can be judged.
    return CacheRecord(
        id=f"{DATASET}/{UNLABELED}/{i}",
        input=problem.text,
        label=None,
        samples=(),
        dataset=DATASET,
        split=UNLABELED,
        position=i,
        meta=_meta(problem),
    )


def dataset_dir(config: SyntheticConfig, cache_dir: os.PathLike | str) -> pathlib.Path:
    return files.path(os.fspath(cache_dir)) / DATASET / f"seed{config.seed}-{config.fingerprint()}"


def split_paths(config: SyntheticConfig, cache_dir: os.PathLike | str) -> dict[str, pathlib.Path]:
    directory = dataset_dir(config, cache_dir)
    return {split: directory / f"{split}.jsonl" for split in config.splits}


def write_dataset(config: SyntheticConfig, cache_dir: os.PathLike | str) -> dict[str, pathlib.Path]:
    """Generates the dataset and writes its cache files (each atomically), replacing any."""
    paths = split_paths(config, cache_dir)
    directory = dataset_dir(config, cache_dir)
    files.makedirs(directory)
    files.atomic_write(directory / "settings.json", json.dumps(config.settings(), indent=1, sort_keys=True) + "\n")
    for split, records in generate_records(config).items():
        # Concurrent writers produce the same bytes.
        with files.atomic_output(paths[split]) as tmp, CacheWriter(tmp, fsync=False) as writer:
            writer.write_all(records)
            writer.sync()
    return paths


def ensure_dataset(
    config: Optional[SyntheticConfig] = None, cache_dir: Optional[os.PathLike | str] = None
) -> dict[str, pathlib.Path]:
    """The cache files of `config` (default: gin's `synthetic_config()`), written if missing."""
    config = config or synthetic_config()
    cache_dir = synthetic_cache_dir() if cache_dir is None else cache_dir
    paths = split_paths(config, cache_dir)
    if all(p.is_file() for p in paths.values()):
        return paths
    return write_dataset(config, cache_dir)


# --------------------------------------------------------------------------------------
# Trivial baselines, for judging a student
# --------------------------------------------------------------------------------------


def _answer(record: CacheRecord) -> Optional[float]:
    return safe_eval.evaluate(record.label) if record.label is not None else None


def _numbers(text: str) -> list[int]:
    return [int(w.strip(".,?")) for w in text.split() if w.strip(".,?").isdigit()]


def baselines(train: Sequence[CacheRecord], evaluation: Sequence[CacheRecord]) -> dict[str, float]:
    """Accuracies (by value) on `evaluation` of answers that need no understanding.

    majority_answer: always the most common answer value of train.
    first_two_numbers: the first two numbers of the question under the one operation
      (+, -, *, /) that is most often right on train.
    """
    if not evaluation:
        raise ValueError("baselines need at least one evaluation record")
    counts = collections.Counter(_answer(r) for r in train if _answer(r) is not None)
    majority = counts.most_common(1)[0][0] if counts else None
    gold = [_answer(r) for r in evaluation]

    def op_accuracy(records: Sequence[CacheRecord], op: str) -> float:
        right = 0
        for r in records:
            numbers = _numbers(r.input)
            if len(numbers) >= 2:
                guess = safe_eval.evaluate(f"{numbers[0]} {op} {numbers[1]}")
                right += guess is not None and guess == _answer(r)
        return right / len(records)

    best_op = max("+-*/", key=lambda op: op_accuracy(train, op))
    return {
        "majority_answer": sum(g == majority for g in gold) / len(gold),
        "first_two_numbers": op_accuracy(evaluation, best_op),
    }


def describe(paths: Mapping[str, pathlib.Path]) -> list[str]:
    """`key=value` lines about a written dataset: per-split teacher report and the baselines."""
    from dss_jax.data import report
    from dss_jax.data.cache import read_cache

    records = {split: read_cache(path) for split, path in paths.items()}
    lines = []
    for split, recs in records.items():
        lines.append(f"[{split}] path={paths[split]}")
        lines += [f"[{split}] {line}" for line in report.summarize(recs, FAMILY).lines()]
    for split in ("validation", "test"):
        for name, acc in baselines(records["train"], records[split]).items():
            lines.append(f"[{split}] baseline_{name}={acc:.6f}")
    return lines
