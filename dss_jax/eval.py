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
scalars + metrics.jsonl and config.gin in EVAL_OUTPUT_DIR; a short table is printed.
MIXTURE_OR_TASK_NAME may be a SeqIO mixture of DSS tasks: each task is scored into TASK/
under the step's directory, and metrics.json holds each task's metrics (`TASK/accuracy`)
and their unweighted mean (`accuracy`).
Beam search: `--gin.DecodeSettings.method="'beam'"`; the student's rationales:
`--gin.OUTPUT_RATIONALE=True`. SPLIT (default 'test') picks the split.

EVAL_OUTPUT_DIR is checked before any decoding (dss_jax/output_paths.py): it may not be
a run, a checkpoint or in their files (a new directory such as MODEL_DIR/eval is fine),
and a step it already holds a result of (predictions.jsonl, metrics.json, a record in
metrics.jsonl) is evaluated again only with `--gin.OVERWRITE=True`, which replaces that
step's outputs and keeps one metrics record per step. CHECKPOINT_PATH and EVAL_OUTPUT_DIR
may be object-store URLs (gs://bucket/run, dss_jax/files.py), with the same rules.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Mapping, Optional, Sequence, Union

from absl import flags, logging

import gin
from dss_jax import cli, configurables, files, gin_utils, output_paths, settings
from dss_jax.data import lengths as dss_lengths
from dss_jax.data import options as dss_options

if TYPE_CHECKING:  # imported at run time only, so that `--help` needs no TensorFlow
    from dss_jax.prediction import DecodeSettings

FLAGS = flags.FLAGS
gin_utils.define_gin_flags()

CONFIG_FILE = "config.gin"  # EVAL_OUTPUT_DIR/config.gin: every gin setting of the evaluation
REQUIRED_MACROS = ("CHECKPOINT_PATH", "EVAL_OUTPUT_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS")
METRICS_JSONL = "metrics.jsonl"  # EVAL_OUTPUT_DIR/metrics.jsonl: a record per evaluated step (MetricsWriter)

# Every setting of an evaluation and the values it may take (dss_jax.settings rules),
# checked on the parsed gin config before anything is read or written.
SETTINGS: dict[str, settings.Rule] = {
    "evaluate_checkpoints.checkpoint_path": settings.text,
    "evaluate_checkpoints.output_dir": settings.text,
    "evaluate_checkpoints.task_name": settings.text,
    "evaluate_checkpoints.feature_lengths": settings.feature_lengths,
    "evaluate_checkpoints.split": settings.text,
    "evaluate_checkpoints.batch_size": settings.positive_int,
    "evaluate_checkpoints.output_rationale": settings.boolean,
    "evaluate_checkpoints.max_examples": settings.optional(settings.positive_int),  # None: all
    "evaluate_checkpoints.dtype": settings.optional(settings.text),
    "evaluate_checkpoints.allow_shorter_lengths": settings.boolean,
}


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
    overwrite: bool = False,
    allow_shorter_lengths: bool = False,
) -> dict[Optional[int], dict[str, float]]:
    """Evaluates each chosen checkpoint; returns {step: metrics} (see the module docstring).

    dtype: the compute dtype for decoding (None: the checkpoint's own).
    overwrite: evaluate again a step whose result output_dir holds, replacing it.
    allow_shorter_lengths: evaluate with TASK_FEATURE_LENGTHS shorter than the checkpoint's
    run trained with (refused otherwise: inputs and gold labels would be scored cut).
    """
    import jax
    import seqio

    from dss_jax import checkpoints
    from dss_jax.data import tasks as dss_tasks
    from dss_jax.metrics_writer import MetricsWriter
    from dss_jax.scoring import METRICS_FILE, decode_and_score, mixture_metrics, tasks_examples, write_tasks_outputs

    chosen = checkpoints.select_checkpoints(checkpoint_path, steps)
    setting = f"CHECKPOINT_PATH={checkpoint_path}"
    per_step_dirs = bool(checkpoints.checkpoint_steps(files.absolute(checkpoint_path)))
    subdirs = {step: f"step_{step}" if per_step_dirs else "" for step, _ in chosen}
    check_eval_outputs(output_dir, subdirs, checkpoint_path, overwrite)
    if task_name not in seqio.TaskRegistry.names() and task_name not in seqio.MixtureRegistry.names():
        dss_tasks.get_task(task_name)  # the error lists the registered tasks
    for name in dss_tasks.task_names(task_name):  # each task of a mixture
        dss_options.use_run_options(name, chosen[0][1], setting)
    if not allow_shorter_lengths:
        dss_lengths.check_not_shorter(
            feature_lengths,
            chosen[0][1],
            setting,
            "evaluate_checkpoints.allow_shorter_lengths",
            dss_lengths.used_features(output_rationale, dss_options.label_target(task_name)),
        )
    vocab_path = checkpoints.find_vocabulary(chosen[0][1])
    dss_tasks.use_checkpoint_vocabulary(task_name, vocab_path, setting, checkpoint=chosen[0][1])
    dss_tasks.vocabulary_of(task_name)  # a mixture's tasks share one
    first = checkpoints.load_checkpoint(chosen[0][1], dtype)  # read and verified before anything is written
    examples = tasks_examples(task_name, split, feature_lengths, max_examples)
    for name, task_examples in examples.items():
        logging.info("%s/%s: %d examples", name, split, len(task_examples))
    writer = MetricsWriter(output_dir)
    files.atomic_write(os.path.join(output_dir, CONFIG_FILE), gin.config_str())  # how these outputs were made
    results: dict[Optional[int], dict[str, float]] = {}
    try:
        for step, path in chosen:
            model, params, _ = first or checkpoints.load_checkpoint(path, dtype)
            first = None
            by_task = {
                name: decode_and_score(
                    model,
                    params,
                    task_examples,
                    batch_size=batch_size,
                    decode=decode,
                    progress=True,
                    output_rationale=output_rationale,
                )
                for name, task_examples in examples.items()
            }
            metrics = mixture_metrics(task_name, by_task)
            target_dir = os.path.join(output_dir, subdirs[step])
            if overwrite and jax.process_index() == 0:  # from here on the step reads as unfinished
                finished = os.path.join(target_dir, METRICS_FILE)
                with contextlib.suppress(FileNotFoundError):
                    files.path(finished).unlink() if files.is_remote(finished) else os.unlink(finished)
            write_tasks_outputs(task_name, by_task, target_dir, step=step, info={"split": split, "checkpoint": path})
            writer.write(step or 0, metrics, prefix=f"{split}/", replace=overwrite)
            results[step] = metrics
            logging.info("step %s: %s -> %s", step, metrics, target_dir)
    finally:
        writer.close()
    return results


def check_eval_outputs(
    output_dir: str, subdirs: Mapping[Optional[int], str], checkpoint_path: str, overwrite: bool
) -> None:
    """The refusals of output_paths for EVAL_OUTPUT_DIR, before any checkpoint is read:
    `subdirs` maps each step to evaluate to where its outputs go in it ("" or step_<N>);
    a step already evaluated there is an earlier result unless `overwrite`."""
    from dss_jax.metrics_writer import read_records
    from dss_jax.scoring import METRICS_FILE, PREDICTIONS_FILE

    results = [os.path.join(d, name) for d in subdirs.values() for name in (PREDICTIONS_FILE, METRICS_FILE)]
    setting = "--gin.OVERWRITE=True"
    output_paths.check_outputs(
        [
            output_paths.Output(
                "EVAL_OUTPUT_DIR", output_dir, directory=True, files=[METRICS_JSONL, *results], results=results
            )
        ],
        inputs={"CHECKPOINT_PATH": checkpoint_path},
        overwrite=overwrite,
        overwrite_setting=setting,
    )
    if overwrite:
        return
    log = os.path.join(output_dir, METRICS_JSONL)
    recorded = {r["step"] for r in read_records(log)}
    for step in subdirs:
        if (step or 0) in recorded:
            raise output_paths.already_holds(
                f"EVAL_OUTPUT_DIR={output_dir}", f"the metrics of step {step or 0} in {log}", setting
            )


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    from dss_jax.scoring import format_table

    results = run_configured(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
    print(format_table(results), flush=True)


def run_configured(gin_files, gin_bindings, gin_search_paths) -> dict:
    """The binary's work after its flags: parse gin, evaluate. The sweep calls this for
    each run when it runs them in one process."""
    from dss_jax.prediction import DECODE_SETTINGS

    configurables.register_for_decoding()
    gin_utils.parse_gin(gin_files, gin_bindings, gin_search_paths, REQUIRED_MACROS)
    settings.check_gin({**SETTINGS, **DECODE_SETTINGS})  # before anything is read or written
    cli.use_compilation_cache()  # what an earlier run compiled is loaded, not compiled again
    try:
        return evaluate_checkpoints()
    except (FileNotFoundError, ValueError) as e:
        logging.debug("evaluation failed", exc_info=True)
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    cli.run(main, "eval")
