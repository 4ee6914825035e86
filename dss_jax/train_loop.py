"""The training loop behind `python -m dss_jax.train` (configured with gin).

Restores the latest checkpoint of MODEL_DIR when there is one (state, step and input
position, so a restarted run continues exactly where it stopped), else starts from
INITIAL_CHECKPOINT_PATH or from scratch; checkpoints every `checkpoint_period` steps
and at the end; saves on SIGTERM (preemption) before exiting; stops on a non-finite
loss with the step named and the last good state saved.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from typing import Any, Callable, Iterator, Mapping, Optional

import gin
import jax
import numpy as np

from dss_jax.cli import UserError
from dss_jax import checkpoint_manager, input_pipeline, losses, optimizers, partitioning
from dss_jax.metrics_writer import MetricsWriter, Progress
from dss_jax.trainer import Trainer


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
    initial_checkpoint_path: Optional[str] = None,
    eval_period: int = 0,
    eval_split: str = "validation",
    eval_batches_limit: Optional[int] = None,
    checkpoint_period: int = 1000,
    keep_checkpoints: Optional[int] = None,
    async_checkpointing: bool = True,
    log_period: int = 10,
    num_microbatches: int = 1,
    seed: int = 0,
    dropout_rng: str = "threefry",
    loss_config: losses.LossConfig = losses.LossConfig(),
    optimizer_config: optimizers.OptimizerConfig = optimizers.OptimizerConfig(),
    partition_config: partitioning.PartitionConfig = partitioning.PartitionConfig(),
    batches_fn: Callable[..., Iterator[Mapping[str, np.ndarray]]] = input_pipeline.train_batches,
    eval_batches_fn: Callable[..., Iterator[Mapping[str, np.ndarray]]] = input_pipeline.eval_batches,
    eval_hook: Optional[Callable[..., Mapping[str, float]]] = None,
) -> dict[str, float]:
    """Trains until `train_steps` optimizer steps; returns the last logged metrics."""
    if model is None:
        from dss_jax.configurables import build_model, model_config

        model = build_model(model_config(checkpoint_path=initial_checkpoint_path))
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
    _check_vocab_size(model, task_name)
    local_batch_size = partitioning.host_local_batch_size(batch_size, trainer.mesh)
    if eval_hook is not None and getattr(eval_hook, "model", False) is None:
        eval_hook.model = model  # the hook decodes with the loop's own model
    ckpt = checkpoint_manager.RunCheckpointer(
        model_dir, keep=keep_checkpoints, save_period=checkpoint_period, asynchronous=async_checkpointing
    )
    state, position = _initial_state(trainer, ckpt, initial_checkpoint_path)
    step = int(state.step)
    metadata = {"model_config": _model_config_json(model), "task_name": task_name,
                "task_feature_lengths": dict(task_feature_lengths), "rationale_weight": loss_config.rationale_weight}
    if jax.process_index() == 0:
        _write_run_files(model_dir, model, task_name)
    writer = MetricsWriter(os.path.join(model_dir, "train"))
    eval_writer = MetricsWriter(os.path.join(model_dir, "validation"))
    progress = Progress(train_steps, step)

    batches = batches_fn(
        task_name=task_name,
        feature_lengths=task_feature_lengths,
        batch_size=local_batch_size,
        seed=seed,
        shard_index=jax.process_index(),
        num_shards=jax.process_count(),
        start_position=position,
        rationale_weight=loss_config.rationale_weight,
    )

    terminated = {"flag": False}
    previous_handler = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        logging.warning("SIGTERM: saving a checkpoint at the end of this step, then exiting")
        terminated["flag"] = True

    signal.signal(signal.SIGTERM, on_sigterm)

    def save(at_step: int):
        ckpt.save(at_step, state, {**metadata, "step": at_step, "input_position": position})

    last_logged: dict[str, float] = {}
    window: list[dict] = []
    window_start = time.time()
    try:
        while step < train_steps:
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
                    f"the last good state (step {step}) is saved in {checkpoint_manager.step_dir(model_dir, step)}"
                )
            step += 1
            window.append(metrics)
            if step % log_period == 0 or step == train_steps:
                last_logged = _summarise(window, time.time() - window_start)
                writer.write(step, last_logged)
                progress.report(step, last_logged)
                window, window_start = [], time.time()
            if step % checkpoint_period == 0 or step == train_steps or terminated["flag"]:
                save(step)
            if terminated["flag"]:
                ckpt.close()
                raise Preempted()
            if eval_period and step % eval_period == 0 and step < train_steps:
                evaluate(trainer, state.params, eval_batches_fn, task_name, task_feature_lengths, local_batch_size,
                         eval_split, eval_batches_limit, eval_writer, step, eval_hook)
        if eval_period:
            evaluate(trainer, state.params, eval_batches_fn, task_name, task_feature_lengths, local_batch_size,
                     eval_split, eval_batches_limit, eval_writer, step, eval_hook)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        ckpt.close()
        writer.close()
        eval_writer.close()
    return last_logged


def _initial_state(trainer: Trainer, ckpt: checkpoint_manager.RunCheckpointer, initial_checkpoint_path):
    latest = ckpt.latest_step()
    if latest is not None:
        state, meta = ckpt.restore(latest, trainer.abstract_state)
        position = int(meta.get("input_position", latest))
        logging.info("resumed from %s (step %d, input position %d)", ckpt.directory, latest, position)
        return state, position
    if initial_checkpoint_path:
        from dss_jax import checkpoints

        params, _, _ = checkpoints.load_params(initial_checkpoint_path)
        logging.info("initialised from %s", initial_checkpoint_path)
        return trainer.state_from_params(params), 0
    return trainer.init_state(), 0


def task_vocabulary_file(task_name: str) -> Optional[str]:
    """The SentencePiece model file behind a task's vocabulary, when it has one."""
    from dss_jax.data import tasks as dss_tasks

    vocab = dss_tasks.get_task(task_name).output_features["label_targets"].vocabulary
    vocab = vocab.resolve() if hasattr(vocab, "resolve") else vocab
    return getattr(vocab, "sentencepiece_model_file", None)


def _check_vocab_size(model, task_name: str) -> None:
    from dss_jax.data import tasks as dss_tasks

    vocab = dss_tasks.get_task(task_name).output_features["label_targets"].vocabulary
    cfg = getattr(model, "config", None)
    if cfg is not None and cfg.vocab_size < vocab.vocab_size:
        raise ValueError(
            f"the model's vocab_size ({cfg.vocab_size}) is smaller than the vocabulary of task "
            f"{task_name!r} ({vocab.vocab_size} ids); set model_config.overrides = {{'vocab_size': {vocab.vocab_size}}}"
        )


def _write_run_files(model_dir: str, model, task_name: str) -> None:
    """config.json (the model), spiece.model (the task's vocabulary) and config.gin in
    MODEL_DIR, so eval, infer and export rebuild everything from the directory alone."""
    import shutil

    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
        f.write(gin.config_str())
    if getattr(model, "config", None) is not None:
        with open(os.path.join(model_dir, "config.json"), "w") as f:
            f.write(model.config.to_json())
    vocab_file = task_vocabulary_file(task_name)
    if vocab_file and os.path.exists(vocab_file):
        shutil.copyfile(vocab_file, os.path.join(model_dir, "spiece.model"))


def _model_config_json(model) -> dict:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return {}
    import dataclasses

    return {k: (str(v) if not isinstance(v, (int, float, str, bool, type(None))) else v)
            for k, v in dataclasses.asdict(cfg).items()}


def _summarise(window: list[dict], seconds: float) -> dict[str, float]:
    summed = jax.tree_util.tree_map(lambda *xs: float(np.sum([np.asarray(x) for x in xs])), *window)
    out = losses.finalize_metrics(summed)
    n = len(window)
    out["loss"] = summed["loss"] / n
    out["grad_norm"] = summed["grad_norm"] / n
    out["learning_rate"] = float(np.asarray(window[-1]["learning_rate"]))
    real = summed["tokens/encoder_real"] + summed["tokens/decoder_real"]
    out["padding_efficiency"] = real / max(summed["tokens/total"], 1.0)
    out["real_tokens_per_second"] = real / max(seconds, 1e-9)
    out["steps_per_second"] = n / max(seconds, 1e-9)
    return out


def evaluate(trainer, params, eval_batches_fn, task_name, feature_lengths, batch_size, split, limit, writer, step,
             eval_hook=None) -> dict[str, float]:
    """Teacher-forced loss and token accuracy on a split, plus whatever `eval_hook`
    (decode-based metrics) returns."""
    sums = None
    batches = eval_batches_fn(
        task_name=task_name, feature_lengths=feature_lengths, batch_size=batch_size, split=split,
        shard_index=jax.process_index(), num_shards=jax.process_count(),
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
    writer.write(step, out)
    if jax.process_index() == 0:
        logging.info("eval at step %d: %s", step, json.dumps(out))
    return out
