r"""Runs a distilled student on raw inputs: what a user runs after training.

    python -m dss_jax.infer \
      --gin_file=runs/infer.gin --gin_file=tasks/svamp.gin \
      --gin.CHECKPOINT_PATH="'/tmp/svamp_small'" \
      --gin.INFER_INPUT="'questions.jsonl'" --gin.INFER_OUTPUT="'answers.jsonl'"

INFER_INPUT is JSONL, one object per line: {"id": "q1", "input": "<the question>"}
("id" optional: the line number is used). Inputs are written as the task's cache
records hold them (for NLI, "premise</s>hypothesis"). INFER_OUTPUT gets one line per
input: {"id", "input", "label"} plus "rationale" with `--gin.OUTPUT_RATIONALE=True`,
and "truncated": true when the input was longer than TASK_FEATURE_LENGTHS allows (it
is cut, with a warning naming the line; never an error). A malformed line stops the
run with FILE:LINE and what is wrong. CHECKPOINT_PATH: a checkpoint dir, or a training
run's MODEL_DIR (its latest checkpoint). The vocabulary is the checkpoint's
spiece.model (or `task_vocabulary.spm_path`, bound explicitly); one trained for the task
anew would not fit the embeddings, so a checkpoint without spiece.model is refused.

INFER_OUTPUT is checked before the checkpoint is read (dss_jax/output_paths.py): it may
not be INFER_INPUT, a file of a run or a checkpoint, or an existing non-empty file
unless `--gin.OVERWRITE=True`, which replaces it whole. CHECKPOINT_PATH, INFER_INPUT and
INFER_OUTPUT may be object-store URLs (gs://bucket/x, dss_jax/files.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import TYPE_CHECKING, Any, Mapping, Optional

import jax
import numpy as np
from absl import flags

import gin
from dss_jax import checkpoints, cli, configurables, files, gin_utils, output_paths, settings
from dss_jax.data import jsonl, parsers
from dss_jax.data import options as dss_options
from dss_jax.data import paired as dss_paired

if TYPE_CHECKING:  # imported at run time only, so that `--help` needs no TensorFlow
    from dss_jax.prediction import DecodeSettings

FLAGS = flags.FLAGS
gin_utils.define_gin_flags()

REQUIRED_MACROS = ("CHECKPOINT_PATH", "INFER_INPUT", "INFER_OUTPUT", "TASK_FEATURE_LENGTHS")

# Every setting of infer_file and the values it may take, checked before anything is read.
SETTINGS: dict[str, settings.Rule] = {
    "infer_file.checkpoint_path": settings.text,
    "infer_file.input_path": settings.text,
    "infer_file.output_path": settings.text,
    "infer_file.task_name": settings.optional(settings.text),
    "infer_file.family": settings.optional(settings.text),
    "infer_file.batch_size": settings.positive_int,
    "infer_file.output_rationale": settings.boolean,
    "infer_file.dtype": settings.optional(settings.text),
    "infer_file.allow_shorter_lengths": settings.boolean,
}


class InputFormatError(cli.UserError, ValueError):
    """A malformed input line; the message names FILE:LINE."""


@dataclasses.dataclass(frozen=True)
class RawInput:
    id: str
    input: str
    line: int


def read_inputs(path: str) -> list[RawInput]:
    """The records of an input JSONL file (blank lines skipped).

    Read by `data.jsonl`, so a line that is not UTF-8 or JSON, too deep, or holds an
    unpaired surrogate (which the tokenizer would fail on far from here) is FILE:LINE.
    """
    out, seen = [], {}
    for line in jsonl.read_lines(path, InputFormatError, what="input file (INFER_INPUT)"):
        obj, where, lineno = line.value, line.where, line.number
        if not isinstance(obj, dict):
            raise InputFormatError(
                f'{where}: expected a JSON object like {{"id": "q1", "input": "..."}}, got {type(obj).__name__}'
            )
        if not isinstance(obj.get("input"), str):
            raise InputFormatError(f"{where}: missing or non-string field 'input'")
        if not obj["input"].strip():
            raise InputFormatError(
                f"{where}: field 'input' is empty: there is nothing to answer; fill it in or drop the line"
            )
        example_id = obj.get("id", str(lineno))
        if isinstance(example_id, bool) or not isinstance(example_id, (str, int)):
            raise InputFormatError(f"{where}: field 'id' must be a string or an integer")
        example_id = str(example_id)
        if example_id in seen:
            raise InputFormatError(f"{where}: duplicate id {example_id!r} (first at line {seen[example_id]})")
        seen[example_id] = lineno
        out.append(RawInput(example_id, obj["input"], lineno))
    if not out:
        raise InputFormatError(f"{path}: no inputs")
    return out


def _vocabulary(vocab_path: Optional[str], task_name: Optional[str], checkpoint: str, setting: str):
    """The checkpoint's spiece.model, or `task_vocabulary.spm_path` bound explicitly, or a
    vocabulary the task was registered with; never one trained for the task anew, whose
    ids would not be the embeddings'."""
    from dss_jax.data import tasks as dss_tasks
    from dss_jax.data import vocab
    from dss_jax.data.lazy_vocab import LazyVocabulary

    explicit = dss_tasks.explicit_vocabulary()
    if explicit or vocab_path is not None:
        return vocab.from_checkpoint(explicit or vocab_path)
    registered = dss_tasks.get_task(task_name).output_features["label_targets"].vocabulary if task_name else None
    if registered is not None and not isinstance(registered, LazyVocabulary):
        return registered
    raise cli.UserError(
        f"{setting}: {checkpoints.where_described(checkpoint)} has no spiece.model or tokenizer.json, so the "
        "vocabulary the checkpoint was trained with is unknown: copy its run's vocabulary there, or bind "
        "--gin.task_vocabulary.spm_path=\"'PATH'\" to it"
    )


@gin.configurable
def infer_file(
    *,
    checkpoint_path: str = gin.REQUIRED,
    input_path: str = gin.REQUIRED,
    output_path: str = gin.REQUIRED,
    feature_lengths: Mapping[str, int] = gin.REQUIRED,
    task_name: Optional[str] = None,
    family: Optional[str] = None,
    batch_size: int = 32,
    decode: Optional[DecodeSettings] = None,
    output_rationale: bool = False,
    dtype: Optional[str] = None,
    overwrite: bool = False,
    allow_shorter_lengths: bool = False,
) -> list[dict[str, Any]]:
    """Writes the student's labels (and rationales) for every input; returns the rows.

    family: the task family when no task is named; only NLI families ("anli1", "esnli")
    change the input tokenization ("</s>" -> EOS). overwrite: replace an existing
    output_path. allow_shorter_lengths: decode with TASK_FEATURE_LENGTHS shorter than the
    checkpoint's run trained with (refused otherwise).
    """
    output_paths.check_outputs(
        [output_paths.Output("INFER_OUTPUT", output_path)],
        inputs={"INFER_INPUT": input_path, "CHECKPOINT_PATH": checkpoint_path},
        overwrite=overwrite,
        overwrite_setting="--gin.OVERWRITE=True",
    )
    from dss_jax.data import tasks as dss_tasks
    from dss_jax.prediction import answer, encode_input

    needed = ["label_inputs", "label_targets"] + (["rationale_inputs", "rationale_targets"] if output_rationale else [])
    missing = [k for k in needed if k not in feature_lengths]
    if missing:
        raise ValueError(f"TASK_FEATURE_LENGTHS lacks {missing} (it has {sorted(feature_lengths)})")
    if family is None and task_name:
        family = dss_tasks.task_family(task_name)
    separator = family is not None and parsers.canonical_family(family) in ("anli1", "esnli")
    inputs = read_inputs(input_path)
    ((_, path),) = checkpoints.select_checkpoints(checkpoint_path, "latest")
    # A student of the single-task ablation answers "rationale So the answer is: label":
    # its run says so, with or without a task named here.
    setting = f"CHECKPOINT_PATH={checkpoint_path}"
    if task_name:
        dss_options.use_run_options(task_name, path, setting)
        label_target = dss_options.current_options(task_name).label_target
    else:
        label_target = (checkpoints.run_task(path) or (None, None, {}))[2].get("label_target", "label")
    if not allow_shorter_lengths:
        from dss_jax.data import lengths as dss_lengths

        dss_lengths.check_not_shorter(
            feature_lengths,
            path,
            setting,
            "infer_file.allow_shorter_lengths",
            dss_lengths.used_features(output_rationale, label_target),
        )
    vocabulary = _vocabulary(checkpoints.find_vocabulary(path), task_name, path, setting)
    model, params, _ = checkpoints.load_checkpoint(path, dtype)

    too_long: dict[int, list[str]] = {}  # input index -> what was cut, for one warning per input

    def encode_all(prefix: str, feature: str) -> np.ndarray:
        length = feature_lengths[feature]
        rows = []
        for i, item in enumerate(inputs):
            row, full = encode_input(vocabulary, prefix + item.input, length, separator)
            rows.append(row)
            if full > length:
                too_long.setdefault(i, []).append(f"{full} tokens with {prefix.strip()!r} > {feature}={length}")
        return np.stack(rows)

    label_rows = encode_all(dss_paired.LABEL_PREFIX, "label_inputs")
    rationale_rows = encode_all(dss_paired.RATIONALE_PREFIX, "rationale_inputs") if output_rationale else None
    for i, what in sorted(too_long.items()):
        logging.warning(
            "%s:%d (id %r): input too long (%s); truncated", input_path, inputs[i].line, inputs[i].id, "; ".join(what)
        )
    single_task = label_target == "rationale_then_label"
    label_length = feature_lengths["label_targets"]
    if single_task:  # rationale and label in one target, sized as effective_feature_lengths sizes it in training
        if "rationale_targets" not in feature_lengths:
            raise cli.UserError(
                f"{setting} is a single-task student (rationale then label): TASK_FEATURE_LENGTHS "
                "needs 'rationale_targets' to size its answers"
            )
        label_length += feature_lengths["rationale_targets"]
    labels, rationales = answer(
        model,
        params,
        vocabulary,
        label_rows,
        label_length=label_length,
        rationale_rows=rationale_rows,
        rationale_length=feature_lengths.get("rationale_targets"),
        single_task=single_task,
        batch_size=batch_size,
        decode=decode,
        progress="",
    )
    rows = []
    for i, item in enumerate(inputs):
        row: dict[str, Any] = {"id": item.id, "input": item.input, "label": labels[i]}
        if rationales is not None:
            row["rationale"] = rationales[i]
        if i in too_long:
            row["truncated"] = True
        rows.append(row)
    if jax.process_index() == 0:
        if not files.is_remote(output_path):  # an object store has no directories to make
            os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
        files.atomic_write(output_path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    logging.info("wrote %d predictions to %s (%d inputs truncated)", len(rows), output_path, len(too_long))
    return rows


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    configurables.register_for_decoding()
    gin_utils.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths, REQUIRED_MACROS)
    from dss_jax.prediction import DECODE_SETTINGS

    settings.check_gin({**SETTINGS, **DECODE_SETTINGS})  # before anything is read or written
    cli.use_compilation_cache()  # what an earlier run compiled is loaded, not compiled again
    try:
        rows = infer_file()
    except (FileNotFoundError, ValueError) as e:
        logging.debug("inference failed", exc_info=True)
        raise SystemExit(f"error: {e}") from None  # cli drops the note gin appends
    print(f"{len(rows)} predictions written", flush=True)


if __name__ == "__main__":
    cli.run(main, "infer")
