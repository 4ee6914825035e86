"""A train run's settings, checked before anything is written: every value against its
rule (`SETTINGS`, reported under the t5x macro a user typed, `MACROS`), MODEL_DIR and
INITIAL_CHECKPOINT_PATH, the task, its options, the mesh, and the training examples (how
many, how many with a rationale). The train binary runs `check_gin_settings` on the
parsed gin config before any configurable is built; `train()` runs the rest on its
arguments.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

from dss_jax import checkpoints, files, input_pipeline, optimizers, partitioning, prediction, settings
from dss_jax.data import options as dss_options
from dss_jax.training import selection
from dss_jax.training.step import DROPOUT_RNGS


def _teacher_sample(v):
    return None if v == "all" or not settings.nonnegative_int(v) else "must be a sample index >= 0 or 'all'"


def _partition_rules(v):
    if isinstance(v, str):
        return settings.one_of(sorted(partitioning.RULE_SETS))(v)
    ok = isinstance(v, (list, tuple)) and all(isinstance(r, (list, tuple)) and len(r) == 2 for r in v)
    return None if ok else "must be a rule set name or a tuple of (logical_axis, mesh_axis) pairs"


# Every setting of a train run, as `Configurable.parameter` (what a gin binding names).
SETTINGS: dict[str, settings.Rule] = {
    "train.model_dir": settings.text,
    "train.task_name": settings.text,
    "train.task_feature_lengths": settings.feature_lengths,
    "train.train_steps": settings.positive_int,
    "train.batch_size": settings.positive_int,
    "train.initial_checkpoint_path": settings.optional(settings.text),
    "train.eval_period": settings.nonnegative_int,  # 0: no evaluation
    "train.eval_split": settings.text,
    "train.validation_metric": settings.text,
    "train.validation_mode": settings.one_of(selection.MODES),
    "train.keep_best_checkpoints": settings.boolean,
    "train.early_stopping_patience": settings.optional(settings.positive_int),
    "train.resume_with_other_settings": settings.boolean,
    "train.eval_batches_limit": settings.optional(settings.positive_int),
    "train.checkpoint_period": settings.positive_int,
    "train.keep_checkpoints": settings.optional(settings.positive_int),
    "train.async_checkpointing": settings.boolean,
    "train.log_period": settings.positive_int,
    "train.progress_seconds": settings.number(0),  # a progress line at least this often (0: every step)
    "train.num_microbatches": settings.positive_int,
    "train.batch_unit": settings.one_of(input_pipeline.BATCH_UNITS),
    "train_batches.max_rows": settings.optional(settings.positive_int),
    "train.seed": settings.integer,
    "train.dropout_rng": settings.one_of(DROPOUT_RNGS),
    "LossConfig.rationale_weight": settings.number(0),
    "LossConfig.z_loss": settings.number(0),
    "LossConfig.label_smoothing": settings.number(0, 1, open_high=True),
    "LossConfig.normalization": settings.one_of(("token", "sequence")),
    "PartitionConfig.num_partitions": settings.positive_int,
    "PartitionConfig.rules": _partition_rules,
    **{f"OptimizerConfig.{k}": rule for k, rule in optimizers.SETTINGS.items()},
    # Read by the input pipeline, which the binary configures through gin only.
    "DssFeatureConverter.pack_encoder_length": settings.optional(settings.positive_int),
    "DssFeatureConverter.pack_decoder_length": settings.optional(settings.positive_int),
    "DssFeatureConverter.max_open_rows": settings.positive_int,
    "train_batches.num_input_shards": settings.optional(settings.positive_int),
    # The decoding evaluation of runs/train.gin's eval hook.
    "make_train_eval_hook.task_name": settings.text,
    "make_train_eval_hook.feature_lengths": settings.feature_lengths,
    "make_train_eval_hook.batch_size": settings.positive_int,
    "make_train_eval_hook.split": settings.text,
    "make_train_eval_hook.max_examples": settings.optional(settings.positive_int),  # None: all
    "make_train_eval_hook.output_rationale": settings.boolean,
    **prediction.DECODE_SETTINGS,
    # The DSS tasks' options (data/options.py), unscoped; check_task_options reads them all.
    "task_options.label_source": settings.one_of(dss_options.LABEL_SOURCES),
    "task_options.teacher_sample": _teacher_sample,
    "task_options.train_fraction": settings.number(0, 1, open_low=True),
    "task_options.seed": settings.integer,
    "task_options.validation_fraction": settings.number(0, 1, open_low=True, open_high=True),
    "task_options.validation_seed": settings.integer,
    "task_options.label_target": settings.one_of(dss_options.LABEL_TARGETS),
}

# The t5x macros the shipped gin files bind these settings to: what a user types.
MACROS = {
    "train.model_dir": "MODEL_DIR",
    "train.task_name": "MIXTURE_OR_TASK_NAME",
    "train.task_feature_lengths": "TASK_FEATURE_LENGTHS",
    "train.train_steps": "TRAIN_STEPS",
    "train.batch_size": "BATCH_SIZE",
    "train.initial_checkpoint_path": "INITIAL_CHECKPOINT_PATH",
    "train.eval_period": "EVAL_PERIOD",
    "LossConfig.rationale_weight": "RATIONALE_WEIGHT",
    "PartitionConfig.num_partitions": "NUM_PARTITIONS",
    "task_options.label_source": "LABEL_SOURCE",
}


def check_settings(values: Mapping[str, Any], macros: Mapping[str, str] = MACROS) -> None:
    """SettingError naming the first of `values` (`Configurable.param` -> value) that breaks its rule."""
    settings.check(values, SETTINGS, macros)


def check_gin_settings() -> None:
    """check_settings over what the parsed gin config binds, before any configurable is
    built: a bad value is reported as the setting, not from inside what it would build."""
    values, macros = settings.gin_values(SETTINGS)
    check_settings(values, macros)


def settings_of(args: Mapping[str, Any]) -> dict[str, Any]:
    """train()'s own arguments and its config objects' fields, as SETTINGS names them."""
    import dataclasses

    values = {f"train.{k}": v for k, v in args.items() if f"train.{k}" in SETTINGS}
    for arg, prefix in (
        ("loss_config", "LossConfig"),
        ("optimizer_config", "OptimizerConfig"),
        ("partition_config", "PartitionConfig"),
    ):
        cfg = args.get(arg)
        if dataclasses.is_dataclass(cfg):
            values.update({f"{prefix}.{f.name}": getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
    return values


def check_selection(eval_period: int, eval_hook, metric: str, keep_best: bool, patience: Optional[int]) -> None:
    """Selecting checkpoints on validation needs evaluations, and decode metrics a decoding
    eval hook (runs/train.gin's)."""
    wanted = [name for name, on in (("keep_best_checkpoints", keep_best), ("early_stopping_patience", patience)) if on]
    if not wanted:
        return
    if not eval_period:
        raise settings.SettingError(
            f"train.{wanted[0]} selects checkpoints on the validation split, which EVAL_PERIOD = 0 never "
            "evaluates: set --gin.EVAL_PERIOD to how often to evaluate (e.g. 200)"
        )
    if metric.startswith("decode/") and eval_hook is None:
        raise settings.SettingError(
            f"train.validation_metric={metric!r} is a decoding metric, and train.eval_hook is None: bind "
            "train.eval_hook = @make_train_eval_hook() (runs/train.gin does), or select on a teacher-forced "
            "metric such as 'label/loss' with train.validation_mode = 'min'"
        )


def check_paths(model_dir: str, initial_checkpoint_path: Optional[str]) -> Optional[str]:
    """MODEL_DIR must be (or become) a writable directory; INITIAL_CHECKPOINT_PATH must be a
    checkpoint directory, or a training run's MODEL_DIR (its latest checkpoint). Checked
    before the first write; returns the checkpoint dir to start from. Either may be a
    gs:// URL: an object store has no permissions to look at before writing (a bucket
    that refuses writes fails the first write, naming the object)."""
    if files.is_remote(model_dir):
        target = files.path(model_dir)
        if target.is_file():  # an object of that name; a prefix with objects under it is a directory
            raise settings.SettingError(f"MODEL_DIR {model_dir} is a file, not a directory; choose a directory path")
    else:
        _check_local_model_dir(model_dir)
    if not initial_checkpoint_path:
        return None
    # A converted checkpoint, a run's checkpoint_<step> dir, or a run's MODEL_DIR (its latest).
    if not files.path(initial_checkpoint_path).is_dir():
        raise settings.SettingError(
            f"INITIAL_CHECKPOINT_PATH {initial_checkpoint_path} does not exist or is not a "
            "directory; give a checkpoint written by `python -m dss_jax.convert` or a "
            "training run (its MODEL_DIR or one of its checkpoint_<step> dirs)"
        )
    try:
        ((_, resolved),) = checkpoints.select_checkpoints(
            initial_checkpoint_path, "latest", path_setting="INITIAL_CHECKPOINT_PATH"
        )
    except checkpoints.CheckpointError as e:
        raise settings.SettingError(str(e)) from None
    if checkpoints.find_config(resolved) is None:
        raise settings.SettingError(
            f"INITIAL_CHECKPOINT_PATH {initial_checkpoint_path} has no config.json (in it or "
            "its training run's MODEL_DIR); give a checkpoint written by "
            "`python -m dss_jax.convert` or a training run"
        )
    return resolved


def _check_local_model_dir(model_dir: str) -> None:
    path = os.path.abspath(model_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise settings.SettingError(f"MODEL_DIR {model_dir} is a file, not a directory; choose a directory path")
    existing = path
    while not os.path.exists(existing):  # the nearest folder that exists is where it gets created
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise settings.SettingError(
            f"MODEL_DIR {model_dir} is not writable ({existing} does not allow writing); "
            "choose a directory you can write to, or fix its permissions"
        )


def check_task_options(task_name: str) -> None:
    """The task's options as gin binds them (each task's, for a mixture: they must agree on
    the label target), scoped bindings (`TASK/task_options.NAME`) included: one that
    TaskOptions refuses is named with its binding."""
    from dss_jax.data import tasks as dss_tasks

    for name in dss_tasks.task_names(task_name):
        _check_options_of(name)
    dss_options.label_target(task_name)


def _check_options_of(task_name: str) -> None:
    try:
        dss_options.current_options(task_name)
    except (ValueError, TypeError) as e:
        text = " ".join(str(e).split("\n")[0].split())
        name = text.split(" ")[0]
        raise settings.SettingError(
            f"task_options.{text} (task {task_name!r}); set it with --gin.task_options.{name}=... "
            f"(or --gin.{task_name}/task_options.{name}=... for this task only)"
        ) from None


def check_training_examples(task_name: str, rationale_weight: float) -> None:
    """The training examples a task registered from teacher caches gives with its options:
    how many, and how many have a teacher rationale, logged; none at all, or none with a
    rationale when λ (RATIONALE_WEIGHT) > 0, is an error naming what to change (Distilling
    Step-by-Step on empty rationale targets would train the explain: task to say nothing)."""
    from dss_jax.data import tasks as dss_tasks

    for name in dss_tasks.task_names(task_name):  # each task of a mixture
        _check_training_examples_of(name, rationale_weight)


def _check_training_examples_of(task_name: str, rationale_weight: float) -> None:
    import logging

    from dss_jax.data import paired
    from dss_jax.data import tasks as dss_tasks

    if not dss_tasks.is_cache_task(task_name):
        return
    options = dss_options.current_options(task_name)
    try:
        records = dss_tasks.split_records(task_name, dss_tasks.TRAIN, options)
    except FileNotFoundError as e:  # a cache file named by the task's registration
        raise settings.SettingError(f"MIXTURE_OR_TASK_NAME {task_name!r}: {e}") from None
    examples, dropped = paired.training_examples(records, options)
    with_rationale = sum(1 for ex in examples if ex["rationale_targets"].strip())
    if not examples:
        raise settings.SettingError(
            f"MIXTURE_OR_TASK_NAME {task_name!r} has no training examples: {_why_none(len(records), options)}"
        )
    logging.info(
        "%s/train: %d training examples from %d records (%d left out: no usable label or teacher sample), "
        "%d of them with a teacher rationale (LABEL_SOURCE=%r)",
        task_name,
        len(examples),
        len(records),
        dropped,
        with_rationale,
        options.label_source,
    )
    if rationale_weight > 0 and not with_rationale:
        raise settings.SettingError(
            f"RATIONALE_WEIGHT (LossConfig.rationale_weight) is {rationale_weight}, but none of the "
            f"{len(examples)} training examples of {task_name!r} has a teacher rationale (no record has a parsed "
            f"sample at task_options.teacher_sample={options.teacher_sample!r}; e.g. annotate --keep=correct "
            "against a teacher that was never right): set --gin.RATIONALE_WEIGHT=0 to train without the "
            "rationale task, or annotate the train records with a teacher whose samples parse"
        )
    if rationale_weight > 0 and with_rationale < len(examples):
        logging.warning(
            "%s/train: %d of %d training examples have no teacher rationale; their explain: target is empty "
            "(as the reference trains them)",
            task_name,
            len(examples) - with_rationale,
            len(examples),
        )


def _why_none(num_records: int, options) -> str:
    if not num_records:
        return "its train split has no records (check its train cache, and task_options.train_fraction)"
    if options.label_source == "teacher":
        return (
            f"none of its {num_records} train records has a parsed teacher sample (task_options.teacher_sample="
            f"{options.teacher_sample!r}): annotate them with a teacher whose samples parse, or train on the gold "
            "labels with --gin.LABEL_SOURCE=\"'gt'\""
        )
    if options.label_source == "gt":
        return (
            f"none of its {num_records} train records has a gold label: train on the teacher's labels with "
            "--gin.LABEL_SOURCE=\"'teacher'\" (or 'gt_else_teacher')"
        )
    return f"none of its {num_records} train records has a gold label or a parsed teacher sample"


def check_mesh(partition_config) -> None:
    """The mesh must divide the devices: `num_partitions` devices per model replica."""
    import jax

    devices, partitions = jax.device_count(), partition_config.num_partitions
    if devices % partitions:
        _, macros = settings.gin_values(["PartitionConfig.num_partitions"])
        macro = macros.get("PartitionConfig.num_partitions")
        where = f"{macro} (PartitionConfig.num_partitions)" if macro else "PartitionConfig.num_partitions"
        raise settings.SettingError(
            f"{where} = {partitions} must divide the number of devices ({devices}): each model replica takes "
            f"{partitions} devices; set --gin.{macro or 'PartitionConfig.num_partitions'}= to a divisor of "
            f"{devices}, or run on a multiple of {partitions} devices"
        )


def check_task(task_name: str) -> None:
    """MIXTURE_OR_TASK_NAME names a registered task, or a SeqIO mixture of DSS tasks (each
    example of which carries its label and its rationale); one that mixes in another kind
    of task is refused naming it."""
    import seqio

    from dss_jax.data import tasks as dss_tasks

    if task_name in seqio.TaskRegistry.names():
        return
    if task_name in seqio.MixtureRegistry.names():
        for name in dss_tasks.task_names(task_name):
            if name not in dss_tasks.REGISTERED:
                raise settings.SettingError(
                    f"MIXTURE_OR_TASK_NAME {task_name!r}: its task {name!r} is not a DSS task (registered through "
                    "dss_jax.data.tasks, e.g. register_cache_task), so its examples have no label and rationale to "
                    "train: leave it out of the mixture"
                )
        return
    known = ", ".join(sorted(dss_tasks.REGISTERED)) or "none"
    raise settings.SettingError(
        f"MIXTURE_OR_TASK_NAME {task_name!r} is not a registered task or mixture (DSS tasks: {known}); "
        "include the task's gin file, e.g. --gin_file=tasks/svamp.gin"
    )
