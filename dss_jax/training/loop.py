"""The training loop behind `python -m dss_jax.train` (configured with gin).

Restores the latest checkpoint of MODEL_DIR when there is one (state, step and input
position, so a restarted run continues exactly where it stopped), else starts from
INITIAL_CHECKPOINT_PATH or from scratch; checkpoints every `checkpoint_period` steps
and at the end; saves on SIGTERM (preemption) before exiting; stops on a non-finite
loss with the step named and the last good state saved.

Before anything is written, every setting is checked (checks.py; the binary also checks
gin's bindings, `checks.check_gin_settings`, before any configurable is built) and the
run directory is locked against a second trainer (`checkpoints.RunLock`). On a
resume, the metrics of the steps after the restored checkpoint are superseded
(metrics_writer), so every step has one value.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from typing import Any, Callable, Iterator, Mapping, Optional

import jax
import numpy as np

import gin
from dss_jax import checkpoints, files, input_pipeline, losses, optimizers, partitioning, settings
from dss_jax.cli import UserError
from dss_jax.data import options as dss_options
from dss_jax.metrics_writer import MetricsWriter, Progress
from dss_jax.training import checks, selection
from dss_jax.training.step import Trainer


class NonFiniteLossError(UserError, RuntimeError):
    pass


class Preempted(SystemExit):
    """Raised after a SIGTERM-triggered save; exit code 143 like a terminated process."""

    def __init__(self):
        super().__init__(143)


@gin.configurable(denylist=["model"])
def train(
    model: Any = None,
    *,
    model_dir: str = gin.REQUIRED,
    task_name: str = gin.REQUIRED,
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
    train_steps: int = gin.REQUIRED,
    batch_size: int = gin.REQUIRED,
    batch_unit: str = "rows",
    initial_checkpoint_path: Optional[str] = None,
    eval_period: int = 0,
    eval_split: str = "validation",
    eval_batches_limit: Optional[int] = None,
    checkpoint_period: int = 1000,
    keep_checkpoints: Optional[int] = None,
    async_checkpointing: bool = True,
    log_period: int = 10,
    progress_seconds: float = 30.0,
    num_microbatches: int = 1,
    seed: int = 0,
    dropout_rng: str = "threefry",
    loss_config: losses.LossConfig = losses.LossConfig(),
    optimizer_config: optimizers.OptimizerConfig = optimizers.OptimizerConfig(),
    partition_config: partitioning.PartitionConfig = partitioning.PartitionConfig(),
    batches_fn: Callable[..., Iterator[Mapping[str, np.ndarray]]] = input_pipeline.train_batches,
    eval_batches_fn: Callable[..., Iterator[Mapping[str, np.ndarray]]] = input_pipeline.eval_batches,
    eval_hook: Optional[Callable[..., Mapping[str, float]]] = None,
    validation_metric: str = "decode/accuracy",
    validation_mode: str = "max",
    keep_best_checkpoints: bool = False,
    early_stopping_patience: Optional[int] = None,
    resume_with_other_settings: bool = False,
) -> dict[str, float]:
    """Trains until `train_steps` optimizer steps, or until validation stops improving
    (`early_stopping_patience`); returns the last logged metrics.

    validation_metric / validation_mode: what selects a checkpoint on the validation split
    (selection.py); keep_best_checkpoints: keep every checkpoint that was the best so far
    when it was evaluated, besides the `keep_checkpoints` latest (each evaluated step is
    saved); early_stopping_patience: stop after this many evaluations in a row without a
    new best. A resume with settings that change what is trained (`result_settings`:
    batch, λ, optimizer, seed, ...) is refused unless `resume_with_other_settings`.
    """
    checks.check_settings(checks.settings_of(locals()))
    trained_with = result_settings(
        task_name,
        task_feature_lengths,
        batch_size,
        batch_unit,
        seed,
        dropout_rng,
        initial_checkpoint_path,
        loss_config,
        optimizer_config,
        train_steps,
    )
    checks.check_selection(eval_period, eval_hook, validation_metric, keep_best_checkpoints, early_stopping_patience)
    initial_checkpoint_path = checks.check_paths(model_dir, initial_checkpoint_path)
    if model is None:
        from dss_jax.configurables import build_model, model_config

        model = build_model(model_config(checkpoint_path=initial_checkpoint_path))
    checks.check_task(task_name)
    checks.check_task_options(task_name)
    checks.check_mesh(partition_config)
    if initial_checkpoint_path:
        _use_initial_vocabulary(task_name, initial_checkpoint_path)
    if batches_fn is input_pipeline.train_batches:  # the examples that pipeline reads
        checks.check_training_examples(task_name, loss_config.rationale_weight)
    with _lock_run_dir(model_dir):  # released on every way out, an exception included
        trainer = Trainer(
            model,
            loss_config=loss_config,
            optimizer_config=optimizer_config,
            total_steps=train_steps,
            partition_config=partition_config,
            num_microbatches=num_microbatches,
            seed=seed,
            dropout_rng=dropout_rng,
        )
        _check_vocab_size(model, task_name, initial_checkpoint_path)
        logging.info(
            "%s",
            partitioning.describe_layout(
                trainer.mesh, partition_config.rules, trainer.abstract_params, trainer.params_sharding
            ),
        )
        if batch_unit == "examples":  # BATCH_SIZE examples per step, packed into a fixed number of rows
            local_examples, row_multiple = _local_examples(batch_size, num_microbatches, trainer.mesh)
            batch_args = {"batch_size": local_examples, "batch_unit": "examples", "row_multiple": row_multiple}
            local_batch_size = row_multiple * max(1, -(-local_examples // row_multiple))  # eval rows: ~examples
        else:
            local_batch_size = _local_batch_size(batch_size, num_microbatches, trainer.mesh)
            batch_args = {"batch_size": local_batch_size}
        if eval_hook is not None and getattr(eval_hook, "model", False) is None:
            eval_hook.model = model  # the hook decodes with the loop's own model
        rule = selection.SelectionRule(validation_metric, validation_mode, early_stopping_patience)
        tracker = selection.Tracker(rule)
        ckpt = checkpoints.RunCheckpointer(
            model_dir,
            keep=keep_checkpoints,
            keep_steps=tracker.best_steps if keep_best_checkpoints else None,
            save_period=checkpoint_period,
            asynchronous=async_checkpointing,
        )
        state, position, seen = _initial_state(
            trainer, ckpt, initial_checkpoint_path, model_dir, trained_with, resume_with_other_settings
        )
        step = int(state.step)
        if step >= train_steps and step:
            logging.warning(
                "nothing left to train: %s is at step %d and TRAIN_STEPS = %d; raise TRAIN_STEPS to train on",
                model_dir,
                step,
                train_steps,
            )
        # The input pipeline is built before the run's files are written, so a task or
        # lengths it cannot read stop a start that leaves nothing behind.
        batches = batches_fn(
            task_name=task_name,
            feature_lengths=task_feature_lengths,
            **batch_args,
            seed=seed,
            shard_index=jax.process_index(),
            num_shards=jax.process_count(),
            start_position=position,
            rationale_weight=loss_config.rationale_weight,
            layout=model.batch_layout,
        )
        if jax.process_index() == 0:
            _write_run_files(model_dir, model, task_name, resumed=step > 0, at_step=step)
            if eval_period:
                _write_selection_rule(model_dir, rule, resumed=step > 0)
        # Steps after the restored one are recomputed: their old records are superseded.
        writer = MetricsWriter(os.path.join(model_dir, "train"), resume_step=step)
        eval_writer = MetricsWriter(os.path.join(model_dir, selection.VALIDATION_DIR), resume_step=step)
        for evaluation in selection.read_evaluations(model_dir, rule.metric):  # the evaluations kept
            tracker.add(evaluation)
        selecting = bool(eval_period) and (keep_best_checkpoints or early_stopping_patience is not None)
        progress = Progress(train_steps, step, period_seconds=progress_seconds)
        start = (
            f"resuming at step {step}"
            if step
            else f"from {initial_checkpoint_path}"
            if initial_checkpoint_path
            else "from scratch"
        )
        logging.info(
            "training %s for %d steps (%s) in %s: checkpoints, config, train/ and validation/ metrics "
            "(metrics.jsonl, TensorBoard)",
            task_name,
            train_steps,
            start,
            model_dir,
        )

        terminated = {"flag": False}
        previous_handler = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum, frame):
            logging.warning("SIGTERM: saving a checkpoint at the end of this step, then exiting")
            terminated["flag"] = True

        signal.signal(signal.SIGTERM, on_sigterm)

        def evaluate_now():
            """Scores the validation split at this step (once) and counts it for selection."""
            if step in tracker.evaluated:
                return
            if selecting:
                save(step)  # the checkpoint a selection may choose
            out = validation_loss(
                trainer,
                state.params,
                eval_batches_fn,
                task_name,
                task_feature_lengths,
                local_batch_size,
                eval_split,
                eval_batches_limit,
                eval_writer,
                step,
                eval_hook,
                extra=seen_record(),
            )
            if selecting and rule.metric not in out:
                raise settings.SettingError(
                    f"train.validation_metric={rule.metric!r} is not among the validation metrics "
                    f"({', '.join(sorted(out)) or 'none'}); bind one of them"
                )
            evaluation = selection.evaluations_of([{"step": step, **out}], rule.metric)[0]
            if tracker.add(evaluation) and selecting:
                logging.info("step %d: a new best %s on %s: %.4g", step, rule.metric, eval_split, evaluation.value)

        def seen_record() -> dict[str, float]:
            return {selection.SEEN_EXAMPLES: seen["examples"], selection.SEEN_TOKENS: seen["tokens"]}

        def save(at_step: int):
            ckpt.save(
                at_step,
                state,
                {
                    "step": at_step,
                    "input_position": position,
                    "examples_seen": seen["examples"],
                    "real_tokens_seen": seen["tokens"],
                    "settings": trained_with,
                },
            )
            logging.info("step %d: checkpoint -> %s", at_step, checkpoints.step_dir(model_dir, at_step))

        last_logged: dict[str, float] = {}
        window: list[dict] = []
        window_start = time.time()
        try:
            if eval_period and step and step % eval_period == 0 and step < train_steps:
                evaluate_now()  # a run stopped between its save and its evaluation
            if tracker.should_stop:
                logging.info(
                    "nothing left to train: %s stopped early at step %d (no better %s in %d evaluations after "
                    "step %d); raise train.early_stopping_patience to train on",
                    model_dir,
                    step,
                    rule.metric,
                    tracker.since_best,
                    tracker.best.step,
                )
            while step < train_steps and not tracker.should_stop:
                try:
                    local = next(batches)
                except StopIteration:
                    raise RuntimeError(
                        f"the training data of {task_name!r} ran out at step {step}; "
                        "the input pipeline should repeat (check the task's split and num_epochs)"
                    ) from None
                state, metrics = trainer.train_step(state, trainer.global_batch(local))
                position += 1
                if bool(metrics["nonfinite"]):
                    save(step)
                    ckpt.wait()
                    raise NonFiniteLossError(
                        f"non-finite loss or gradients at step {step + 1} (loss={float(metrics['loss'])}); "
                        f"the last good state (step {step}) is saved in {checkpoints.step_dir(model_dir, step)}"
                    )
                step += 1
                seen["examples"] += float(metrics["batch/examples"])
                seen["tokens"] += float(metrics["tokens/encoder_real"]) + float(metrics["tokens/decoder_real"])
                window.append(metrics)
                if step % log_period == 0 or step == train_steps:
                    last_logged = _summarise(window, time.time() - window_start)
                    writer.write(step, {**last_logged, **seen_record()})
                    progress.report(step, last_logged)
                    window, window_start = [], time.time()
                elif progress.due():  # a long log_period still shows the run moving
                    progress.report(step, _summarise(window, time.time() - window_start))
                if step % checkpoint_period == 0 or step == train_steps or terminated["flag"]:
                    save(step)
                if terminated["flag"]:
                    ckpt.close()
                    raise Preempted()
                if eval_period and step % eval_period == 0 and step < train_steps:
                    evaluate_now()
                    if tracker.should_stop:
                        logging.info(
                            "step %d: no better %s in %d evaluations after step %d: stopping early",
                            step,
                            rule.metric,
                            tracker.since_best,
                            tracker.best.step,
                        )
            if eval_period and not tracker.should_stop:
                evaluate_now()
            if selecting and tracker.best is not None and jax.process_index() == 0:
                logging.info(
                    "the best checkpoint on %s: step %d (%s %.4g) -> %s",
                    eval_split,
                    tracker.best.step,
                    rule.metric,
                    tracker.best.value,
                    checkpoints.step_dir(model_dir, tracker.best.step),
                )
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
            ckpt.close()
            writer.close()
            eval_writer.close()
        return last_logged


def _local_batch_size(batch_size: int, num_microbatches: int, mesh) -> int:
    try:
        local = partitioning.host_local_batch_size(batch_size, mesh)
    except ValueError as e:
        raise settings.SettingError(f"{e}; set --gin.BATCH_SIZE to a multiple of it") from None
    if local % num_microbatches:
        raise settings.SettingError(
            f"BATCH_SIZE={batch_size} ({local} rows per process) is not divisible by "
            f"train.num_microbatches={num_microbatches}; change one of them"
        )
    return local


def _local_examples(batch_size: int, num_microbatches: int, mesh) -> tuple[int, int]:
    """A batch in examples: (this process's examples per step, the multiple its rows per
    step must be: every data-parallel device and microbatch gets whole rows)."""
    processes = jax.process_count()
    if batch_size % processes:
        raise settings.SettingError(
            f"BATCH_SIZE={batch_size} examples must be divisible by the number of processes "
            f"({processes}); set --gin.BATCH_SIZE to a multiple of it"
        )
    data = mesh.shape["data"]
    rows_multiple = math.lcm(num_microbatches, data // math.gcd(data, processes))
    return batch_size // processes, rows_multiple


@contextlib.contextmanager
def _lock_run_dir(model_dir: str):
    """Process 0 holds MODEL_DIR's lock (checkpoints.RunLock) while the body runs;
    on a multi-host run every process learns whether it could, so that all stop together
    when it could not."""
    lock = checkpoints.RunLock(model_dir)
    error = None
    if jax.process_index() == 0:
        try:
            lock.acquire()
        except checkpoints.RunLockedError as e:
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        refused = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
        if int(refused) and error is None:
            raise checkpoints.RunLockedError(
                f"{model_dir} is in use by another trainer (process 0 could not lock it; see its log)"
            )
    if error is not None:
        raise error
    try:
        yield
    finally:
        lock.release()  # a no-op where this process does not hold it


def result_settings(
    task_name,
    task_feature_lengths,
    batch_size,
    batch_unit,
    seed,
    dropout_rng,
    initial_checkpoint_path,
    loss_config,
    optimizer_config,
    train_steps,
) -> dict:
    """The settings that change what a run trains (recorded in every checkpoint's metadata;
    a resume with others is refused). TRAIN_STEPS is one of them when the learning rate
    decays over the run's length; the periods, the patience and the model's run-time
    fields (dtype, dropout, remat) are not."""
    import dataclasses

    out = {
        "task": task_name,
        "task_feature_lengths": dict(task_feature_lengths),
        "batch_size": batch_size,
        "batch_unit": batch_unit,
        "seed": seed,
        "dropout_rng": dropout_rng,
        "initial_checkpoint_path": files.absolute(initial_checkpoint_path) if initial_checkpoint_path else None,
        "loss": dataclasses.asdict(loss_config),
        "optimizer": dataclasses.asdict(optimizer_config),
    }
    if optimizer_config.schedule_name in ("linear", "cosine") and optimizer_config.decay_steps is None:
        out["train_steps"] = train_steps  # the schedule decays to its end over TRAIN_STEPS
    return json.loads(json.dumps(out))  # as the metadata reads back (tuples as lists)


def _changed_settings(recorded: Mapping, now: Mapping, prefix: str = "") -> list[tuple[str, Any, Any]]:
    out = []
    for key in sorted(set(recorded) | set(now)):
        a, b = recorded.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed_settings(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def _check_resumed_settings(ckpt, step: int, trained_with: dict, allow: bool) -> None:
    """A resume trains on with the settings the run's checkpoints were trained with
    (their metadata; checkpoints from before it was recorded are not checked)."""
    recorded = ckpt.read_metadata(step).get("settings")
    if recorded is None:
        return
    changed = _changed_settings(recorded, trained_with)
    if not changed:
        return
    was = ", ".join(f"{k}={a!r}" for k, a, _ in changed)
    now = ", ".join(f"{k}={b!r}" for k, _, b in changed)
    if allow:
        logging.warning("resuming %s at step %d with other settings (was %s; now %s)", ckpt.directory, step, was, now)
        return
    raise settings.SettingError(
        f"MODEL_DIR {ckpt.directory} was trained to step {step} with other settings "
        f"({checkpoints.step_dir(ckpt.directory, step)}: {was}; now {now}): resume with the run's settings, "
        "train in a new MODEL_DIR, or bind train.resume_with_other_settings = True to train on with these "
        "(every checkpoint records the settings it was trained with)"
    )


def _initial_state(
    trainer: Trainer,
    ckpt: checkpoints.RunCheckpointer,
    initial_checkpoint_path,
    model_dir: str,
    trained_with: dict,
    resume_with_other_settings: bool = False,
):
    """(train state, input position, {"examples", "tokens"} trained on so far)."""
    latest = ckpt.latest_step()
    if latest is not None:
        _check_resumed_model(ckpt.directory, getattr(trainer.model, "config", None))
        _check_resumed_settings(ckpt, latest, trained_with, resume_with_other_settings)
        state, meta = ckpt.restore(latest, trainer.abstract_state)
        position = int(meta.get("input_position", latest))
        logging.info("resumed from %s (step %d, input position %d)", ckpt.directory, latest, position)
        if "real_tokens_seen" in meta:
            seen = {"examples": float(meta["examples_seen"]), "tokens": float(meta["real_tokens_seen"])}
        else:  # a checkpoint written before they were recorded: its train records' sums
            seen = selection.seen_from_train_records(os.path.join(model_dir, "train", "metrics.jsonl"), latest)
        return state, position, seen
    if initial_checkpoint_path:
        params, _, _ = checkpoints.load_params(initial_checkpoint_path)
        logging.info("initialised from %s", initial_checkpoint_path)
        return trainer.state_from_params(params), 0, {"examples": 0.0, "tokens": 0.0}
    return trainer.init_state(), 0, {"examples": 0.0, "tokens": 0.0}


def _write_selection_rule(model_dir: str, rule: selection.SelectionRule, resumed: bool) -> None:
    """MODEL_DIR/validation/selection.json; a resume may change the patience, not what
    selects (its earlier evaluations were kept by that rule)."""
    recorded = selection.read_rule(model_dir)
    if resumed and recorded is not None and (recorded.metric, recorded.mode) != (rule.metric, rule.mode):
        raise settings.SettingError(
            f"MODEL_DIR {model_dir} selects checkpoints on {recorded.mode} {recorded.metric} "
            f"({os.path.join(model_dir, selection.VALIDATION_DIR, selection.SELECTION_FILE)}); now "
            f"{rule.mode} {rule.metric}: resume with train.validation_metric and train.validation_mode as they "
            "were, or train in a new MODEL_DIR"
        )
    selection.write_rule(model_dir, rule)


def _check_resumed_model(model_dir: str, config) -> None:
    """A run resumes with the model its checkpoints hold (MODEL_DIR/config.json): another
    architecture is refused in one line naming the fields, before any weight is read; only
    the run-time fields (dtype, dropout, remat) may change on a resume."""
    import dataclasses

    from dss_jax.configurables import RUNTIME_FIELDS

    path = os.path.join(model_dir, checkpoints.CONFIG_FILE)
    if config is None or not files.path(path).is_file():
        return
    trained, _ = checkpoints.read_config(model_dir)
    if trained.family != config.family:
        raise settings.SettingError(
            f"MODEL_DIR {model_dir} holds checkpoints of a {trained.family!r} model ({path}); now a "
            f"{config.family!r} model: resume with the run's model family, or train in a new MODEL_DIR"
        )
    changed = [
        f.name
        for f in dataclasses.fields(config)
        if f.name not in RUNTIME_FIELDS and getattr(config, f.name) != getattr(trained, f.name)
    ]
    if changed:
        raise settings.SettingError(
            f"MODEL_DIR {model_dir} holds checkpoints of another model ({path}: "
            f"{', '.join(f'{k}={getattr(trained, k)!r}' for k in changed)}; now "
            f"{', '.join(f'{k}={getattr(config, k)!r}' for k in changed)}): resume with the run's model "
            "settings, or train in a new MODEL_DIR"
        )


def task_vocabulary_file(task_name: str) -> Optional[str]:
    """The file behind a task's vocabulary (spiece.model or tokenizer.json), when it has one."""
    from dss_jax.data import tasks as dss_tasks
    from dss_jax.data import vocab

    return vocab.vocabulary_file(dss_tasks.vocabulary_of(task_name))


def _use_initial_vocabulary(task_name: str, initial_checkpoint_path: str) -> None:
    """Finetuning a pretrained checkpoint tokenizes with the checkpoint's own spiece.model
    (convert stores it): a vocabulary trained anew would feed its embeddings other token
    ids. Another vocabulary only when `task_vocabulary.spm_path` says so explicitly."""
    from dss_jax.data import tasks as dss_tasks

    vocab_path = checkpoints.find_vocabulary(initial_checkpoint_path)
    if vocab_path is None and dss_tasks.explicit_vocabulary() is None:
        raise settings.SettingError(
            f"INITIAL_CHECKPOINT_PATH {initial_checkpoint_path} has no spiece.model or tokenizer.json, so the "
            "vocabulary its embeddings were trained with is unknown: bind --gin.task_vocabulary.spm_path=\"'PATH'\" "
            "to it (convert keeps a Hugging Face checkpoint's spiece.model or tokenizer.json beside its config.json)"
        )
    dss_tasks.use_checkpoint_vocabulary(task_name, vocab_path, "INITIAL_CHECKPOINT_PATH")


def _check_vocab_size(model, task_name: str, initial_checkpoint_path: Optional[str] = None) -> None:
    from dss_jax.data import tasks as dss_tasks

    vocab = dss_tasks.vocabulary_of(task_name)  # one for all the tasks of a mixture
    cfg = getattr(model, "config", None)
    if cfg is None:
        return
    eos = model.decode_token_ids()["eos_id"]
    if vocab.eos_id is not None and vocab.eos_id != eos:
        raise settings.SettingError(
            f"the vocabulary of task {task_name!r} ends texts with id {vocab.eos_id}, but the model stops decoding "
            f"at eos_token_id={eos}: set {type(cfg).__name__}.eos_token_id = {vocab.eos_id}, or use the "
            "checkpoint's own vocabulary"
        )
    if cfg.vocab_size >= vocab.vocab_size:
        return
    if initial_checkpoint_path:
        raise settings.SettingError(
            f"the vocabulary of task {task_name!r} ({dss_tasks.explicit_vocabulary() or 'trained for the task'}: "
            f"{vocab.vocab_size} ids) is larger than the {cfg.vocab_size} embeddings of INITIAL_CHECKPOINT_PATH "
            f"{initial_checkpoint_path}: use the checkpoint's own spiece.model (unbind task_vocabulary.spm_path)"
        )
    raise settings.SettingError(
        f"the model's vocab_size ({cfg.vocab_size}) is smaller than the vocabulary of task "
        f"{task_name!r} ({vocab.vocab_size} ids); set {type(cfg).__name__}.vocab_size = {vocab.vocab_size}"
    )


def _write_run_files(model_dir: str, model, task_name: str, resumed: bool = False, at_step: int = 0) -> None:
    """The run's config.json, spiece.model, task.json and config.gin (checkpoints.run), so
    eval, infer and export rebuild everything from MODEL_DIR alone (a resume at `at_step`
    with another config.gin keeps the earlier one). A run resumed with other task options,
    or with another vocabulary than its checkpoints were trained with (whose spiece.model
    it would replace), is refused."""
    import dataclasses

    options = dataclasses.asdict(dss_options.current_options(task_name))
    recorded = checkpoints.run_task(model_dir)
    # Only checkpoints were trained with the recorded options: a start that failed before
    # its first one (and wrote task.json) does not bind its corrected rerun.
    if (
        resumed
        and recorded is not None
        and recorded[1] is not None
        and (recorded[1], recorded[2]) != (task_name, options)
    ):
        changed = sorted(k for k in set(options) | set(recorded[2]) if options.get(k) != recorded[2].get(k))
        raise settings.SettingError(
            f"MODEL_DIR {model_dir} was trained on {recorded[1]!r} with other task options ({recorded[0]}: "
            f"{', '.join(f'{k}={recorded[2].get(k)!r}' for k in changed) or 'the task'}; now "
            f"{task_name!r}, {', '.join(f'{k}={options.get(k)!r}' for k in changed)}): resume with the run's "
            "settings, or train in a new MODEL_DIR"
        )
    vocab_file = task_vocabulary_file(task_name)
    trained_with = checkpoints.find_vocabulary(model_dir)
    if resumed and vocab_file and trained_with and not _same_pieces(vocab_file, trained_with):
        raise settings.SettingError(
            f"MODEL_DIR {model_dir} was trained with the vocabulary {trained_with}, and task {task_name!r} now "
            f"tokenizes with another ({vocab_file}): resume with the run's settings (e.g. its "
            "INITIAL_CHECKPOINT_PATH), or train in a new MODEL_DIR"
        )
    checkpoints.write_run_files(
        model_dir,
        getattr(model, "config", None),
        task_name,
        options,
        vocab_file=vocab_file,
        gin_config=gin.config_str(),
        resumed_at=at_step if resumed else None,
    )


def _same_pieces(a: str, b: str) -> bool:
    """Whether two vocabulary files map the same ids to the same pieces (the same
    SentencePiece model written twice may differ in bytes; tokenizer.json files compare
    by bytes). Either may be on an object store: read as bytes."""
    import sentencepiece as spm

    a_bytes, b_bytes = files.path(a).read_bytes(), files.path(b).read_bytes()
    if a_bytes == b_bytes:
        return True
    if checkpoints.TOKENIZER_JSON in (files.path(a).name, files.path(b).name):
        return False
    x, y = spm.SentencePieceProcessor(model_proto=a_bytes), spm.SentencePieceProcessor(model_proto=b_bytes)
    return x.get_piece_size() == y.get_piece_size() and all(
        x.id_to_piece(i) == y.id_to_piece(i) for i in range(x.get_piece_size())
    )


def _summarise(window: list[dict], seconds: float) -> dict[str, float]:
    summed = jax.tree_util.tree_map(lambda *xs: float(np.sum([np.asarray(x) for x in xs])), *window)
    out = losses.finalize_metrics(summed)
    n = len(window)
    out["loss"] = summed["loss"] / n
    out["grad_norm"] = summed["grad_norm"] / n
    out["learning_rate"] = float(np.asarray(window[-1]["learning_rate"]))
    real = summed["tokens/encoder_real"] + summed["tokens/decoder_real"]
    out["padding_efficiency"] = real / max(summed["tokens/total"], 1.0)
    # What each step cost and covered, comparable across batch units and methods.
    out["examples_per_step"] = summed["batch/examples"] / n
    out["rows_per_step"] = summed["batch/rows"] / n
    out["real_tokens_per_step"] = real / n
    out["real_tokens_per_second"] = real / max(seconds, 1e-9)
    out["steps_per_second"] = n / max(seconds, 1e-9)
    return out


def validation_loss(
    trainer,
    params,
    eval_batches_fn,
    task_name,
    feature_lengths,
    batch_size,
    split,
    limit,
    writer,
    step,
    eval_hook=None,
    extra: Optional[Mapping[str, float]] = None,
) -> dict[str, float]:
    """Teacher-forced loss and token accuracy on a split, plus whatever `eval_hook`
    (decode-based metrics) returns; `extra` is written with them (what was trained on)."""
    sums = None
    batches = eval_batches_fn(
        task_name=task_name,
        feature_lengths=feature_lengths,
        batch_size=batch_size,
        split=split,
        shard_index=jax.process_index(),
        num_shards=jax.process_count(),
        layout=trainer.model.batch_layout,
    )
    for i, local in enumerate(batches):
        if limit is not None and i >= limit:
            break
        m = trainer.eval_step(params, trainer.global_batch(local))
        m = {k: float(v) for k, v in m.items()}
        sums = m if sums is None else {k: sums[k] + m[k] for k in sums}
    if sums is None:
        logging.warning("evaluation split %r of %s is empty", split, task_name)
        return {}
    out = losses.finalize_metrics(sums)
    if eval_hook is not None:
        out.update(eval_hook(params=params, step=step))
    writer.write(step, {**out, **(extra or {})})
    if jax.process_index() == 0:
        logging.info("eval at step %d: %s", step, json.dumps(out))
    return out
