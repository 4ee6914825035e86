r"""Trains a T5 student with Distilling Step-by-Step: the t5x train binary's interface.

    python -m dss_jax.train \
      --gin_file=runs/train.gin --gin_file=models/small.gin --gin_file=tasks/svamp.gin \
      --gin.MODEL_DIR="'/tmp/svamp_small'" --gin.TRAIN_STEPS=10000 --gin.BATCH_SIZE=64 \
      --gin.RATIONALE_WEIGHT=1.0 --gin.LABEL_SOURCE="'teacher'"

Multi-host GPU (one process per host or per GPU), as t5x:
    --multiprocess_gpu --coordinator_address=HOST:PORT --process_count=N --process_index=I
On TPU pods every worker runs the same command; JAX finds its peers itself.
"""

from __future__ import annotations

from absl import flags, logging

from dss_jax import cli, gin_utils

FLAGS = flags.FLAGS
gin_utils.define_gin_flags()
flags.DEFINE_bool("multiprocess_gpu", False, "Initialise JAX's distributed runtime from the flags below.")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0's coordinator.")
flags.DEFINE_integer("process_count", None, "Number of processes in the job.")
flags.DEFINE_integer("process_index", None, "This process's index, 0-based.")

REQUIRED_MACROS = ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS", "BATCH_SIZE")


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    run_configured(
        FLAGS.gin_file,
        FLAGS.gin_bindings,
        FLAGS.gin_search_paths,
        distributed=dict(
            multiprocess_gpu=FLAGS.multiprocess_gpu,
            coordinator_address=FLAGS.coordinator_address,
            process_count=FLAGS.process_count,
            process_index=FLAGS.process_index,
        ),
    )


def run_configured(gin_files, gin_bindings, gin_search_paths, distributed=None) -> dict:
    """The binary's work after its flags: parse gin, check every setting, train. The sweep
    calls this for each run when it runs them in one process."""
    from dss_jax import configurables, partitioning  # noqa: F401  (registers configurables)
    from dss_jax.training import checks, loop

    gin_utils.parse_gin(gin_files, gin_bindings, gin_search_paths, REQUIRED_MACROS)
    checks.check_gin_settings()  # every setting's value, before anything is built or written
    cli.use_compilation_cache()  # what an earlier run compiled is loaded, not compiled again
    partitioning.initialize_distributed(**(distributed or {}))
    metrics = loop.train()
    logging.info("final metrics: %s", metrics)
    return metrics


if __name__ == "__main__":
    cli.run(main, "train")
