r"""Imports a Hugging Face checkpoint directory, or a T5X checkpoint, as a dss_jax params
checkpoint.

    python -m dss_jax.convert --hf_dir DIR --output CKPT_DIR [--overwrite]
    python -m dss_jax.convert --t5x_checkpoint T5X_DIR/checkpoint_N --vocab spiece.model --output CKPT_DIR
    python -m dss_jax.convert --t5x_checkpoint T5X_DIR/checkpoint_N --gin_file=t5x/examples/t5/t5_1_1/base.gin \
        --gin.DROPOUT_RATE=0.1 --output CKPT_DIR

A T5X checkpoint is read without t5x (`checkpoints.t5x`), in any layout T5X has written:
msgpack (`checkpoint_N/checkpoint`, version 3, arrays inline or out of line), orbax
(`checkpoint_N/state/`, OCDBT or not) or the early orbax one, scanned layers
(examples/scalable_t5, whose per-layer relative-position tables make a student with
T5Config.relative_attention_per_layer) included. A T5X checkpoint records no config: its
T5's config comes from the user's model gin file (T5X's, translated by dss_jax.t5x_gin, or
ours: --gin_file, --gin.*, --gin_search_paths), every array checked against it, or without
one from its arrays' shapes (a gated MLP taken to be GELU). Its optimizer state is left
out, and --vocab, or else the vocabulary the gin file names, gives the spiece.model it was
trained with (T5X keeps none beside its checkpoints).

DIR holds config.json and model.safetensors (or sharded safetensors with their index, or
pytorch_model.bin when torch is installed), and for T5 usually spiece.model. Its
config.json's model_type picks the family: t5 (v1.0, v1.1, Flan-T5), mt5, umt5 (a T5 with a
relative-position table per layer), or llama, qwen2, qwen3, gemma3_text (the decoder-only
family). The Hugging Face tokenizer files in DIR
(tokenizer.json, tokenizer_config.json, special_tokens_map.json, tokenizer.model) are kept
beside the params, and export writes them back. CKPT_DIR receives an
orbax checkpoint of the params (CKPT_DIR/params), our config.json and the vocabulary; the
trainer takes it as INITIAL_CHECKPOINT_PATH. No hub downloads: DIR must be on disk or on
an object store (gs://bucket/..., as may T5X_DIR, --vocab and CKPT_DIR be).

Every tensor is checked against DIR/config.json (names, shapes, dtypes) and every file
against its format before anything is written; CKPT_DIR is written beside itself and
renamed into place. A non-empty CKPT_DIR is refused unless --overwrite (which replaces an
earlier convert output whole), and one that is, holds or lies in a training run or a
checkpoint (DIR included) always (dss_jax/output_paths.py).
"""

import os

from absl import app, flags, logging

from dss_jax import cli, files, gin_utils, output_paths

_HF_DIR = flags.DEFINE_string("hf_dir", None, "Hugging Face checkpoint directory.")
_T5X = flags.DEFINE_string("t5x_checkpoint", None, "A T5X checkpoint_<step>/ directory (msgpack or orbax).")
_VOCAB = flags.DEFINE_string("vocab", None, "With --t5x_checkpoint: the spiece.model the checkpoint was trained with.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory to write the checkpoint to.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing checkpoint in --output.")
gin_utils.define_gin_flags()  # with --t5x_checkpoint: the model gin file (T5X's or ours) its config comes from


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    from dss_jax import checkpoints
    from dss_jax.model import interface

    if (_HF_DIR.value is None) == (_T5X.value is None):
        raise app.UsageError("give one of --hf_dir (a Hugging Face directory) and --t5x_checkpoint")
    if _VOCAB.value is not None and _T5X.value is None:
        raise app.UsageError("--vocab goes with --t5x_checkpoint (a Hugging Face directory brings its own)")
    gin_given = bool(flags.FLAGS.gin_file or flags.FLAGS.gin_bindings)
    if gin_given and _T5X.value is None:
        raise app.UsageError(
            "--gin_file and --gin.* go with --t5x_checkpoint (a Hugging Face directory brings its config)"
        )
    # The model's config from the user's gin file, read before anything is written or read.
    config, gin_vocab = _gin_model() if gin_given else (None, None)
    source = _HF_DIR.value or _T5X.value
    # The output is checked first, so a refusal costs no read of a large checkpoint.
    output_paths.check_outputs(
        [output_paths.Output("--output", _OUTPUT.value, directory=True, whole=True)],
        inputs={"--hf_dir" if _HF_DIR.value else "--t5x_checkpoint": source, "--vocab": _VOCAB.value},
        overwrite=_OVERWRITE.value,
        overwrite_setting="--overwrite",
    )
    checkpoints.check_output_dir(
        _OUTPUT.value, overwrite=_OVERWRITE.value, replaceable=checkpoints.SAVE_PARAMS_FILES, what="a params checkpoint"
    )
    try:
        if _T5X.value:
            from dss_jax.checkpoints import t5x

            params, config = t5x.import_checkpoint(_T5X.value, config, f"the gin files {flags.FLAGS.gin_file}")
            vocab, tokenizer = _VOCAB.value or gin_vocab, []
        else:
            params, config, vocab = interface.import_hf_checkpoint(_HF_DIR.value)
            tokenizer = [os.path.join(_HF_DIR.value, f) for f in checkpoints.TOKENIZER_FILES]
            tokenizer = [p for p in tokenizer if files.path(p).is_file()]
        out = checkpoints.save_params(
            _OUTPUT.value,
            params,
            config,
            vocab,
            overwrite=_OVERWRITE.value,
            source=source,
            tokenizer_files=tokenizer,
        )
    except (FileNotFoundError, FileExistsError, ValueError, ImportError) as e:
        raise cli.UserError(str(e)) from e
    n = sum(p.size for p in jax.tree.leaves(params))
    logging.info("wrote %s: %.1fM params, %s", out, n / 1e6, config)
    kept = vocab or ", ".join(os.path.basename(p) for p in tokenizer) or "none"
    if vocab is None and not tokenizer:
        logging.warning(
            "%s: no spiece.model or tokenizer.json (%s): the checkpoint carries no vocabulary",
            source,
            "pass --vocab" if _T5X.value else "none in the directory",
        )
    print(f"converted {source} -> {out} ({n} params, vocabulary: {kept})")


def _gin_model():
    """(the T5Config the --gin_file/--gin.* settings bind, the vocabulary file they name or
    None): a T5X model file (t5x/examples/t5/t5_1_1/base.gin, translated by dss_jax.t5x_gin)
    or one of ours."""
    from dss_jax import configurables, settings

    gin_utils.parse_gin(
        flags.FLAGS.gin_file, flags.FLAGS.gin_bindings, flags.FLAGS.gin_search_paths, require_files=False
    )
    spm = settings.gin_values(["task_vocabulary.spm_path"])[0].get("task_vocabulary.spm_path")
    return configurables.model_config(family="t5"), spm


if __name__ == "__main__":
    cli.run(main, "convert")
