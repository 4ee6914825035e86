"""Decode-based evaluation: one code path for the eval binary, inference and training.

    examples = load_examples("dss_svamp", "test", feature_lengths)
    result = evaluate(model, params, examples, batch_size=32)   # greedy by default
    write_outputs(result, "/tmp/eval/step_1000", step=1000)      # predictions.jsonl, metrics.json
    result.metrics  # {"accuracy": ..., "teacher_agreement": ..., "num_examples": ...}

Every example of a split is decoded (`predict: x -> label`, and `explain: x -> rationale`
when asked) in batches of a fixed size. The last batch is padded with copies of its last
real row and the padding rows' outputs are dropped; rows never interact in the model or
in the decoders (each stops at its own EOS), so predictions do not depend on the batch
size. Labels are judged with `parsers.labels_match` for the task's family: SVAMP
equations by value with the safe evaluator, every other family by exact text, as the
reference implementation scores them. When the teacher's label is known (the task's
`teacher_label` feature), the student's agreement with its teacher is reported too.

`make_train_eval_hook` wraps the same code for the training loop's `eval_hook`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import numpy as np
from jax.experimental import multihost_utils

import gin
from dss_jax import files
from dss_jax.data import parsers
from dss_jax.data import tasks as dss_tasks
from dss_jax.model.decoding import DecodeConfig, generate

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"


# --------------------------------------------------------------------------------------
# Decoding settings
# --------------------------------------------------------------------------------------


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """How to decode, without the length (that comes from TASK_FEATURE_LENGTHS).

    In gin: `DecodeSettings.method = 'beam'`, `DecodeSettings.num_beams = 4`. Sampling
    draws with `seed` folded with the batch index, so (unlike greedy and beam search)
    its results depend on the batch size.
    """

    method: str = "greedy"  # "greedy" | "beam" | "sample"
    num_beams: int = 4
    length_penalty: float = 1.0
    early_stopping: Union[bool, str] = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def config(self, max_decode_length: int) -> DecodeConfig:
        return DecodeConfig(
            max_decode_length=max_decode_length,
            method=self.method,
            num_beams=self.num_beams,
            length_penalty=self.length_penalty,
            early_stopping=self.early_stopping,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
        )


def as_decode_config(decode: Union[DecodeSettings, DecodeConfig, None], max_decode_length: int) -> DecodeConfig:
    """A DecodeConfig for targets of `max_decode_length` tokens (a given config's length is replaced)."""
    if decode is None:
        decode = DecodeSettings()
    if isinstance(decode, DecodeConfig):
        return dataclasses.replace(decode, max_decode_length=max_decode_length)
    return decode.config(max_decode_length)


def _seed_of(decode) -> int:
    return getattr(decode, "seed", 0)


# --------------------------------------------------------------------------------------
# Batched decoding
# --------------------------------------------------------------------------------------


def decode_batches(
    model,
    params,
    encoder_tokens: np.ndarray,
    config: DecodeConfig,
    batch_size: int,
    seed: int = 0,
    progress: Optional[str] = None,
) -> np.ndarray:
    """Decodes every row of `encoder_tokens` [n, enc_len] in batches of `batch_size`.

    Returns the generated tokens [n, max_decode_length] (pad after EOS). The last batch is
    padded to `batch_size` with copies of its last row, so one shape is compiled.
    `progress`: a description to show a progress bar under (examples/s, ETA) on process 0.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = encoder_tokens.shape[0]
    out = np.zeros((n, config.max_decode_length), np.int32)
    bar = progress_bar(n, progress) if progress else None
    for index, start in enumerate(range(0, n, batch_size)):
        rows = encoder_tokens[start : start + batch_size]  # [<=batch, enc_len]
        real = rows.shape[0]
        if real < batch_size:
            rows = np.concatenate([rows, np.repeat(rows[-1:], batch_size - real, axis=0)])
        rng = jax.random.fold_in(jax.random.key(seed), index) if config.method == "sample" else None
        tokens = generate(model, params, rows, config=config, rng=rng).tokens  # [batch, max_len]
        if not tokens.is_fully_addressable:
            # Multi-process training: every process decodes the same rows with the global
            # (sharded) params, and the tokens come back as a global array.
            tokens = multihost_utils.process_allgather(tokens, tiled=True)
        out[start : start + real] = np.asarray(jax.device_get(tokens))[:real]
        if bar is not None:
            bar.update(real)
    if bar is not None:
        bar.close()
    return out


def progress_bar(total: int, description: str):
    """A tqdm bar on stderr counting examples (rate and ETA), shown by process 0 only. In a
    log file rather than a terminal it writes a line every 30 s instead of redrawing."""
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=description,
        unit="ex",
        file=sys.stderr,
        disable=jax.process_index() != 0,
        mininterval=0.5 if interactive else 30,
        dynamic_ncols=interactive,
        ascii=not interactive,
    )


def tokens_to_texts(vocabulary, tokens: np.ndarray, eos_id: int = 1) -> list[str]:
    """Texts of generated rows [n, length]: each row up to (without) its first EOS."""
    texts = []
    for row in np.asarray(tokens):
        ids = row.tolist()
        if eos_id in ids:
            ids = ids[: ids.index(eos_id)]
        texts.append(vocabulary.decode([i for i in ids if i != 0]))
    return texts


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
    """Reads and tokenizes a split of a DSS task (inputs trimmed to the feature lengths)."""
    task = dss_tasks.get_task(task_name)
    if split not in task.splits:
        raise ValueError(f"task {task_name!r} has no split {split!r}; its splits: {', '.join(task.splits)}")
    missing = [k for k in dss_tasks.PAIRED_TEXT_FEATURES if k not in feature_lengths]
    if missing:
        raise ValueError(f"TASK_FEATURE_LENGTHS lacks {missing}; it needs {list(dss_tasks.PAIRED_TEXT_FEATURES)}")
    feature_lengths = dss_tasks.effective_feature_lengths(task_name, feature_lengths)
    dataset = task.get_dataset(dict(feature_lengths), split=split, shuffle=False, num_epochs=1, use_cached=False)
    if max_examples is not None:
        dataset = dataset.take(max_examples)
    ids, inputs, targets, teacher, label_rows, rationale_rows = [], [], [], [], [], []
    for ex in dataset.as_numpy_iterator():
        ids.append(_text(ex["id"]))
        inputs.append(_text(ex["label_inputs_pretokenized"]).removeprefix(dss_tasks.LABEL_PREFIX))
        targets.append(_text(ex["label_targets_pretokenized"]))
        label = _text(ex.get(dss_tasks.TEACHER_LABEL, b""))
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


def evaluate(
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
    label_tokens = decode_batches(
        model,
        params,
        examples.label_tokens,
        as_decode_config(decode, lengths["label_targets"]),
        batch_size,
        _seed_of(decode),
        progress=progress and f"{examples.task_name} labels",
    )
    predictions = tokens_to_texts(examples.vocabulary, label_tokens)
    rationales = None
    if dss_tasks.current_options(examples.task_name).label_target == "rationale_then_label":
        # The single-task ablation writes its rationale before the label: score the label.
        rationales, predictions = (list(x) for x in zip(*map(dss_tasks.split_single_task, predictions)))
    elif output_rationale:
        rationale_tokens = decode_batches(
            model,
            params,
            examples.rationale_tokens,
            as_decode_config(decode, lengths["rationale_targets"]),
            batch_size,
            _seed_of(decode),
            progress=progress and f"{examples.task_name} rationales",
        )
        rationales = tokens_to_texts(examples.vocabulary, rationale_tokens)
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
    os.makedirs(output_dir, exist_ok=True)
    predictions = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in result.records)
    files.atomic_write(os.path.join(output_dir, PREDICTIONS_FILE), predictions)
    summary = {**dict(info or {}), "step": step, **result.metrics}
    # Last: a metrics.json means the evaluation finished (the sweep resumes on it).
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
# Checkpoints to evaluate
# --------------------------------------------------------------------------------------


def checkpoints_to_evaluate(
    path: str, steps: Union[str, int, Sequence[int]] = "latest"
) -> list[tuple[Optional[int], str]]:
    """[(step or None, checkpoint dir)] for a checkpoint or a training run's model dir: see
    `checkpoints.select_checkpoints`, where every binary resolves its checkpoint."""
    from dss_jax import checkpoints

    return checkpoints.select_checkpoints(path, steps)


def _is_hf_checkpoint(path: str) -> bool:
    """A Hugging Face T5 directory (config.json with a model_type, HF weight files)."""
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    try:
        with open(config) as f:
            is_hf = "model_type" in json.load(f)
    except (OSError, json.JSONDecodeError):
        return False
    return is_hf and any(os.path.isfile(os.path.join(path, name)) for name in HF_WEIGHT_FILES)


HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def load_checkpoint(path: str, dtype: Optional[str] = None):
    """(T5 model, params, vocab path or None) of one checkpoint: ours (see
    `checkpoints_to_evaluate`) or a Hugging Face T5 directory, imported on the fly."""
    from dss_jax import checkpoint_manager, checkpoints
    from dss_jax.model.config import T5Config
    from dss_jax.model.t5 import T5

    if _is_hf_checkpoint(path):
        from dss_jax.model import hf_convert

        params, config, vocab_path = hf_convert.import_hf_checkpoint(path)
    else:
        try:
            params, config, vocab_path = checkpoints.load_params(path)
        except FileNotFoundError as e:
            metadata = os.path.isdir(os.path.join(path, "metadata"))
            model_config = checkpoint_manager.read_metadata(path).get("model_config") if metadata else None
            if not model_config or checkpoints.CONFIG_FILE not in str(e):
                raise
            # A run dir without config.json: the trainer keeps the model config in the metadata too.
            params, config, vocab_path = checkpoints.load_params(
                path,
                config=T5Config.from_dict(model_config, source=f"{path}/metadata"),
                config_source=f"the model config in {path}/metadata",
            )
    if dtype:
        config = config.replace(dtype=dtype)
    return T5(config), params, vocab_path


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
        self._examples: Optional[EvalExamples] = None

    def __call__(self, *, params, step: int) -> dict[str, float]:
        if self.model is None:
            from dss_jax.configurables import build_model, model_config

            self.model = build_model(model_config(checkpoint_path=self._initial_checkpoint_path))
        if self._examples is None:
            self._examples = load_examples(self.task_name, self.split, self.feature_lengths, self.max_examples)
        result = evaluate(
            self.model,
            params,
            self._examples,
            batch_size=self.batch_size,
            decode=self.decode_config,
            output_rationale=self.output_rationale,
        )
        if self.output_dir:
            write_outputs(
                result,
                os.path.join(self.output_dir, f"step_{step}"),
                step=step,
                info={"task": self.task_name, "split": self.split},
            )
        logging.info(
            "decode eval at step %d on %s/%s: %s", step, self.task_name, self.split, json.dumps(result.metrics)
        )
        return {self.PREFIX + k: v for k, v in result.metrics.items()}


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
