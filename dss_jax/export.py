r"""Exports a dss_jax checkpoint as a Hugging Face directory (T5, or a decoder-only student),
or a T5 student as a T5X checkpoint.

    python -m dss_jax.export --checkpoint=MODEL_DIR --output=HF_DIR [--step=N]
    python -m dss_jax.export --checkpoint=CKPT_DIR --output=HF_DIR [--item=NAME] [--vocab=PATH] [--overwrite]
    python -m dss_jax.export --checkpoint=MODEL_DIR --format=t5x --output=T5X_DIR [--step=N] [--overwrite]

--checkpoint takes what eval, infer and annotate take: a training run's MODEL_DIR (its
latest checkpoint, or --step), one of its checkpoint_<step>/ dirs, or a params checkpoint
(dss_jax.convert / checkpoints.save_params); see `checkpoints.select_checkpoints` and
`checkpoints.load_params`. HF_DIR gets config.json, generation_config.json,
model.safetensors and spiece.model, so that
`transformers.T5ForConditionalGeneration.from_pretrained(HF_DIR)` loads the student (an
untied one, T5 v1.1 / Flan-T5, loads without transformers 5's tie warning with
`tie_word_embeddings=False`: see `hf_convert.export_hf_checkpoint`; a student with a
relative-position table per layer, imported from T5X's scalable_t5, is a
UMT5ForConditionalGeneration). A decoder-only student
(Llama, Qwen2, Qwen3, Gemma 3) gets config.json, generation_config.json and its weights,
in shards with model.safetensors.index.json past 5 GiB, and its tokenizer as
tokenizer.json + tokenizer_config.json: the one its checkpoint came with, or, for a
student trained with a SentencePiece vocabulary, one written from it that gives the same
ids (`vocab.sentencepiece_as_tokenizer_json`); export prints the line that loads it.

The export is what a user of it needs: generation_config.json sets `max_new_tokens` to the
longest target the run trained (transformers would otherwise stop at 20 tokens and cut
rationales), and README.md, its model card, says how to prompt it (`predict: ` for the
label, `explain: ` for the rationale), the task, options and lengths it was trained with,
its validation figures at this step and the line that loads it.

HF_DIR must be new or empty; --overwrite replaces a directory of Hugging Face model files
(an earlier export) whole. A directory that is, holds or lies in a training run or a
checkpoint (MODEL_DIR/hf, a new directory beside the run's own, is fine), or holds
--vocab, is refused even then (dss_jax/output_paths.py), since config.json and
spiece.model would replace the run's. HF_DIR is written beside itself and renamed into
place, so a crash leaves no half-exported model.

--format=t5x writes T5X_DIR/checkpoint_<step>/ as T5X's Checkpointer writes it (format
version 3: the msgpack file `checkpoint` and beside it a TensorStore zarr array for each
parameter, written one at a time; `--t5x_inline_arrays`: every array inside the msgpack
file; a new Adafactor state; step 0 for a checkpoint without one), which T5X restores as
INITIAL_CHECKPOINT_PATH and
`dss_jax.convert --t5x_checkpoint` imports back exactly (`checkpoints.t5x`). A T5X
checkpoint records no model config and no vocabulary: export prints the
`network.T5Config` bindings of the student's shape. T5X_DIR follows HF_DIR's rules; a
T5X run's MODEL_DIR is never written into.

--checkpoint, --vocab and --output may be on an object store (gs://bucket/...): the export
is written in a local temporary directory and uploaded. transformers loads only local
directories, so the load line printed (and in the model card) copies it down first.
"""

import json
from typing import Optional

from absl import app, flags, logging

from dss_jax import cli, files, output_paths
from dss_jax.data import lengths as dss_lengths

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint",
    None,
    "A training run's MODEL_DIR (its latest checkpoint, or --step), or one checkpoint directory.",
    required=True,
)
_STEP = flags.DEFINE_integer("step", None, "With a MODEL_DIR: the step to export (default: the latest).")
_OUTPUT = flags.DEFINE_string("output", None, "Directory for the Hugging Face files.", required=True)
_ITEM = flags.DEFINE_string(
    "item",
    None,
    "Orbax item (subdirectory) holding the params, when the checkpoint has several and the search should not guess.",
)
_VOCAB = flags.DEFINE_string("vocab", None, "spiece.model or tokenizer.json to ship; default: the checkpoint's own.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an earlier export in --output.")
_FORMAT = flags.DEFINE_enum(
    "format", "hf", ["hf", "t5x"], "hf: a Hugging Face directory; t5x: a T5X msgpack checkpoint_<step>/ directory."
)
_T5X_INLINE_ARRAYS = flags.DEFINE_bool(
    "t5x_inline_arrays",
    False,
    "With --format=t5x: every array inside the msgpack file (one file, built in memory), not as zarr arrays beside it.",
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from dss_jax import checkpoints
    from dss_jax.model import hf_convert, interface

    if _FORMAT.value == "t5x":
        return export_t5x()
    if _T5X_INLINE_ARRAYS.value:
        raise app.UsageError("--t5x_inline_arrays goes with --format=t5x")
    # The output is checked first, so a refusal costs no read of a large checkpoint.
    output_paths.check_outputs(
        [output_paths.Output("--output", _OUTPUT.value, directory=True, whole=True)],
        inputs={"--checkpoint": _CHECKPOINT.value, "--vocab": _VOCAB.value},
        overwrite=_OVERWRITE.value,
        overwrite_setting="--overwrite",
    )
    checkpoints.check_output_dir(
        _OUTPUT.value, overwrite=_OVERWRITE.value, replaceable=hf_convert.HF_DIR_FILES, what="a Hugging Face model"
    )
    # A MODEL_DIR resolves to one of its checkpoint_<step>/ dirs, as in eval, infer and annotate.
    steps = "latest" if _STEP.value is None else _STEP.value
    ((step, path),) = checkpoints.select_checkpoints(
        _CHECKPOINT.value, steps, path_setting="--checkpoint", steps_setting="--step"
    )
    try:
        params, config, vocab = checkpoints.load_params(path, item=_ITEM.value)
        vocab = _VOCAB.value or vocab
        model = interface.build(config)
        lengths = dss_lengths.trained_feature_lengths(path)
        generation = {}
        if lengths is not None:
            targets = [v for k, v in lengths[1].items() if k.endswith("_targets")]
            generation["max_new_tokens"] = max(targets)
        else:
            logging.warning(
                "%s is no training run's: generation_config.json sets no length (transformers then stops at 20 "
                "tokens; pass max_new_tokens to generate)",
                path,
            )
        card = model_card(path, step, lengths, checkpoints.run_task(path), how_to_load(model, _OUTPUT.value))
        extra = {"README.md": card.encode()}
        kept = checkpoints.describing_dir(path)  # a converted checkpoint keeps its Hugging Face tokenizer
        extra.update({f: (kept / f).read_bytes() for f in checkpoints.TOKENIZER_FILES if (kept / f).is_file()})
        out = model.export_hf(params, _OUTPUT.value, vocab, _OVERWRITE.value, generation=generation, extra_files=extra)
    except (FileNotFoundError, ValueError) as e:
        raise cli.UserError(str(e)) from e
    if vocab is None:
        logging.warning("no spiece.model found for %s: %s has no tokenizer", path, out)
    print(f"exported {path}{'' if step is None else f' (step {step})'} -> {out} (vocabulary: {vocab or 'none'})")
    print(f"load it with: {how_to_load(model, str(out))}")


def export_t5x() -> None:
    """--format=t5x: --output becomes a T5X model directory holding checkpoint_<step>/checkpoint
    (`checkpoints.t5x.export_checkpoint`), replaced whole with --overwrite as an HF export is."""
    from dss_jax import checkpoints
    from dss_jax.checkpoints import outputs, t5x

    if _VOCAB.value:
        raise app.UsageError("--vocab goes with --format=hf: T5X keeps no vocabulary beside its checkpoints")
    output_paths.check_outputs(
        [output_paths.Output("--output", _OUTPUT.value, directory=True, whole=True)],
        inputs={"--checkpoint": _CHECKPOINT.value},
        overwrite=_OVERWRITE.value,
        overwrite_setting="--overwrite",
    )
    steps = "latest" if _STEP.value is None else _STEP.value
    ((step, path),) = checkpoints.select_checkpoints(
        _CHECKPOINT.value, steps, path_setting="--checkpoint", steps_setting="--step"
    )
    what = "a T5X checkpoint"
    try:
        params, config, _ = checkpoints.load_params(path, item=_ITEM.value)
        t5x.check_exportable(config)
        with outputs.staged_output_dir(
            _OUTPUT.value, overwrite=_OVERWRITE.value, replaceable=["checkpoint_*"], what=what
        ) as staging:
            written = t5x.export_checkpoint(params, config, step or 0, staging, _T5X_INLINE_ARRAYS.value)
    except (FileNotFoundError, ValueError) as e:
        raise cli.UserError(str(e)) from e
    out = files.path(files.absolute(_OUTPUT.value)) / written.name
    print(f"exported {path}{'' if step is None else f' (step {step})'} -> {out} (T5X msgpack, format version 3)")
    print(f"in T5X: INITIAL_CHECKPOINT_PATH = '{out}', with a model gin file that binds (its shape):")
    print("".join(f"    {line}\n" for line in t5x.t5x_network_bindings(config)), end="")


def how_to_load(model, output: str) -> str:
    """How to load the export in `output` into transformers, which reads local directories
    only: an export on an object store is copied down first."""
    if not files.is_remote(output):
        return model.from_pretrained_call(output)
    name = files.path(output).name
    copy = f"# transformers loads local directories: gcloud storage cp -r {files.absolute(output)} ."
    return f"{copy}\n{model.from_pretrained_call(name)}"


def model_card(path: str, step: Optional[int], lengths, task, load_line: str) -> str:
    """README.md of an export: how to prompt the student and what it was trained and scored on."""
    from dss_jax import checkpoints

    lines = ["# A Distilling Step-by-Step student (dss_jax)", ""]
    lines += [f"Exported by `python -m dss_jax.export` from `{path}`{'' if step is None else f' (step {step})'}.", ""]
    if task is None and lengths is None:
        lines += ["This checkpoint is no training run's (a converted model): it was not trained here.", ""]
    else:
        options = task[2] if task else {}
        label = (
            'the rationale, then "So the answer is:" and the label'
            if options.get("label_target") == "rationale_then_label"
            else "the label"
        )
        lines += [
            "## How to prompt it",
            "",
            f"- `predict: <input>` gives {label}.",
            "- `explain: <input>` gives a rationale (the teacher's reasoning it was trained to produce).",
            "",
            "## Training",
            "",
        ]
        if task and task[1]:
            lines.append(f"- Task: `{task[1]}`")
        if options:
            lines.append(f"- Task options: `{json.dumps(options, sort_keys=True)}`")
        if lengths is not None:
            lines.append(f"- TASK_FEATURE_LENGTHS: `{json.dumps(lengths[1], sort_keys=True)}` (from `{lengths[0]}`)")
        lines.append("")
        validation = checkpoints.describing_dir(path) / "validation" / "metrics.jsonl"
        record = None
        if step is not None and validation.is_file():
            for line in validation.read_text().splitlines():
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                if isinstance(data, dict) and data.get("step") == step:
                    record = data
        if record is not None:
            figures = {k: v for k, v in record.items() if k.startswith("decode/") and "per_second" not in k}
            lines += ["## Validation at this step", "", f"From `{validation}`:", ""]
            lines += [f"- {k}: {v:.4g}" for k, v in sorted(figures.items())] + [""]
    lines += ["## Loading it", "", "```", load_line, "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    cli.run(main, "export")
