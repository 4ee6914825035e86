r"""Evaluates a student checkpoint by decoding a task split: the t5x eval binary's interface.

    python -m dss_jax.eval \
      --gin_file=runs/eval.gin --gin_file=tasks/svamp.gin \
      --gin.CHECKPOINT_PATH="'/tmp/svamp_small'" --gin.EVAL_OUTPUT_DIR="'/tmp/svamp_eval'"

CHECKPOINT_PATH is one checkpoint (a trainer's `MODEL_DIR/checkpoint_<step>`, a dir
written by `python -m dss_jax.convert` / `checkpoints.save_params`, or a Hugging Face T5
dir, imported on the fly) or a training run's MODEL_DIR, evaluated at
`--gin.STEPS="'latest'"` (default), `"'best'"` (the checkpoint its validation evaluations
select), `"'all'"` or `[1000, 2000]`; each step's outputs then go to
EVAL_OUTPUT_DIR/step_<step>/. Outputs: predictions.jsonl (id, input, target, prediction,
rationale when asked, teacher_label when known, correct), metrics.json, and TensorBoard
scalars + metrics.jsonl and config.gin in EVAL_OUTPUT_DIR; a short table is printed. Beam search:
`--gin.DecodeSettings.method="'beam'"`; the student's rationales:
`--gin.OUTPUT_RATIONALE=True`. SPLIT (default 'test') picks the split.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Mapping, Optional, Sequence, Union

from absl import flags, logging

import gin
from dss_jax import cli, configurables, files, gin_utils
from dss_jax.data import options as dss_options

if TYPE_CHECKING:  # imported at run time only, so that `--help` needs no TensorFlow
    from dss_jax.prediction import DecodeSettings

FLAGS = flags.FLAGS
gin_utils.define_gin_flags()

CONFIG_FILE = "config.gin"  # EVAL_OUTPUT_DIR/config.gin: every gin setting of the evaluation
REQUIRED_MACROS = ("CHECKPOINT_PATH", "EVAL_OUTPUT_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS")


@gin.configurable
def evaluate_checkpoints(
    *,
    checkpoint_path: str = gin.REQUIRED,
    output_dir: str = gin.REQUIRED,
    task_name: str = gin.REQUIRED,
    feature_lengths: Mapping[str, int] = gin.REQUIRED,
    split: str = "test",
    steps: Union[str, int, Sequence[int]] = "latest",
    batch_size: int = 32,
    decode: Optional[DecodeSettings] = None,
    output_rationale: bool = False,
    max_examples: Optional[int] = None,
    dtype: Optional[str] = None,
) -> dict[Optional[int], dict[str, float]]:
    """Evaluates each chosen checkpoint; returns {step: metrics} (see the module docstring).

    dtype: the compute dtype for decoding (None: the checkpoint's own).
    """
    from dss_jax import checkpoints
    from dss_jax.data import tasks as dss_tasks
    from dss_jax.metrics_writer import MetricsWriter
    from dss_jax.scoring import decode_and_score, load_examples, write_outputs

    chosen = checkpoints.select_checkpoints(checkpoint_path, steps)
    dss_options.use_run_options(task_name, chosen[0][1], f"CHECKPOINT_PATH={checkpoint_path}")
    per_step_dirs = bool(checkpoints.checkpoint_steps(os.path.abspath(os.path.expanduser(checkpoint_path))))
    examples = None
    writer = MetricsWriter(output_dir)
    files.atomic_write(os.path.join(output_dir, CONFIG_FILE), gin.config_str())  # how these outputs were made
    results: dict[Optional[int], dict[str, float]] = {}
    try:
        for step, path in chosen:
            model, params, vocab_path = checkpoints.load_checkpoint(path, dtype)
            if examples is None:
                dss_tasks.use_checkpoint_vocabulary(task_name, vocab_path, "CHECKPOINT_PATH")
                examples = load_examples(task_name, split, feature_lengths, max_examples)
                logging.info("%s/%s: %d examples", task_name, split, len(examples))
            result = decode_and_score(
                model,
                params,
                examples,
                batch_size=batch_size,
                decode=decode,
                progress=True,
                output_rationale=output_rationale,
            )
            target_dir = os.path.join(output_dir, f"step_{step}") if per_step_dirs else output_dir
            write_outputs(result, target_dir, step=step, info={"task": task_name, "split": split, "checkpoint": path})
            writer.write(step or 0, result.metrics, prefix=f"{split}/")
            results[step] = result.metrics
            logging.info("step %s: %s -> %s", step, result.metrics, target_dir)
    finally:
        writer.close()
    return results


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    from dss_jax.scoring import format_table

    results = run_configured(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
    print(format_table(results), flush=True)


def run_configured(gin_files, gin_bindings, gin_search_paths) -> dict:
    """The binary's work after its flags: parse gin, evaluate. The sweep calls this for
    each run when it runs them in one process."""
    configurables.register_for_decoding()
    gin_utils.parse_gin(gin_files, gin_bindings, gin_search_paths, REQUIRED_MACROS)
    cli.use_compilation_cache()  # what an earlier run compiled is loaded, not compiled again
    try:
        return evaluate_checkpoints()
    except (FileNotFoundError, ValueError) as e:
        logging.debug("evaluation failed", exc_info=True)
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    cli.run(main, "eval")
