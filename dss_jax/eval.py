r"""Evaluates a student checkpoint by decoding a task split: the t5x eval binary's interface.

    python -m dss_jax.eval \
      --gin_file=runs/eval.gin --gin_file=tasks/svamp.gin \
      --gin.CHECKPOINT_PATH="'/tmp/svamp_small'" --gin.EVAL_OUTPUT_DIR="'/tmp/svamp_eval'"

CHECKPOINT_PATH is one checkpoint (a trainer's `MODEL_DIR/checkpoint_<step>`, or a dir
written by `python -m dss_jax.convert` / `checkpoints.save_params`) or a training run's
MODEL_DIR, evaluated at `--gin.STEPS="'latest'"` (default), `"'all'"` or `[1000, 2000]`;
each step's outputs then go to EVAL_OUTPUT_DIR/step_<step>/. Outputs: predictions.jsonl
(id, input, target, prediction, rationale when asked, teacher_label when known, correct),
metrics.json, and TensorBoard scalars + metrics.jsonl in EVAL_OUTPUT_DIR; a short table
is printed. Beam search: `--gin.DecodeSettings.method="'beam'"`; the student's
rationales: `--gin.OUTPUT_RATIONALE=True`. SPLIT (default 'test') picks the split.
"""

from __future__ import annotations

from absl import flags, logging

from dss_jax import gin_utils
from dss_jax.evaluation import evaluate_checkpoints, format_table

FLAGS = flags.FLAGS
if "gin_file" not in FLAGS:  # another binary's module may have defined them in this process
    gin_utils.define_gin_flags()

REQUIRED_MACROS = ("CHECKPOINT_PATH", "EVAL_OUTPUT_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS")


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    from dss_jax import configurables  # noqa: F401  (model_config bindings in shared gin files)

    gin_utils.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths, REQUIRED_MACROS)
    try:
        results = evaluate_checkpoints()
    except (FileNotFoundError, ValueError) as e:
        logging.debug("evaluation failed", exc_info=True)
        raise SystemExit(f"error: {e}") from None
    print(format_table(results), flush=True)


if __name__ == "__main__":
    gin_utils.run(main)
