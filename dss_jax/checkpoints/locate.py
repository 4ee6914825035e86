"""Where checkpoints are and what describes them: the file names, a run's step dirs, the
config.json and spiece.model that travel with a checkpoint, and `select_checkpoints`.

A checkpoint is described by one config.json: in a `save_params` / convert directory, or
once in a training run's MODEL_DIR for all of its `checkpoint_<step>/` dirs. Readers look
there and nowhere else (`describing_dir`), so a copy never borrows another run's files.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Optional, Sequence, Union

from dss_jax import files
from dss_jax.cli import UserError
from dss_jax.model import interface

PARAMS_ITEM = "params"
CONFIG_FILE = "config.json"
VOCAB_FILE = "spiece.model"
TOKENIZER_JSON = "tokenizer.json"  # a Hugging Face tokenizer's vocabulary (data/vocab.py)
# The files of a Hugging Face tokenizer that travel with a checkpoint (convert keeps them).
TOKENIZER_FILES = (TOKENIZER_JSON, "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
RUN_TASK_FILE = "task.json"
RUN_GIN_FILE = "config.gin"
CHECKSUMS_FILE = "checksums.json"  # a save_params dir's: the checksums of its params/ (integrity.py)
STEP_PREFIX = "checkpoint"  # a run's MODEL_DIR/checkpoint_<step>/
STATE_ITEM = "state"  # a run step's orbax items: the train state, and JSON metadata that
METADATA_ITEM = "metadata"  # holds the checksums of the state under CHECKSUMS_KEY
CHECKSUMS_KEY = "checksums"
PYTREE_MARKER = "_METADATA"  # written by orbax's PyTreeCheckpointHandler
ORBAX_MARKERS = (PYTREE_MARKER, "_CHECKPOINT_METADATA")
RUN_STEP_DIR = re.compile(rf"^{STEP_PREFIX}_\d+$")


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used as it is (config.json disagrees with the weights,
    damaged, not a T5 checkpoint); the message names the file and what to do."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """The checkpoint directory, its orbax item or its config.json is missing."""


def checkpoint_steps(model_dir: str | os.PathLike) -> list[int]:
    """Steps with a finished checkpoint in a run directory (local or gs://)."""
    d = files.path(model_dir)
    if not d.is_dir():
        return []
    steps = []
    for entry in d.iterdir():
        if RUN_STEP_DIR.match(entry.name) and (entry / STATE_ITEM).is_dir():
            steps.append(int(entry.name[len(STEP_PREFIX) + 1 :]))
    return sorted(steps)


def absolute_path(path: str | os.PathLike) -> pathlib.Path:
    """`path` as an absolute path object: a pathlib.Path, or an etils.epath.Path for an
    object-store URL (which pathlib would turn into a local "gs:/..." path)."""
    if files.is_remote(path):
        return files.path(files.absolute(path))
    return pathlib.Path(path).absolute()


def step_dir(model_dir: str, step: int) -> str:
    return os.path.join(model_dir, f"{STEP_PREFIX}_{step}")


def select_checkpoints(
    path: str | os.PathLike,
    steps: Union[str, int, Sequence[int]] = "latest",
    *,
    path_setting: str = "CHECKPOINT_PATH",
    steps_setting: str = "steps",
) -> list[tuple[Optional[int], str]]:
    """[(step or None, checkpoint dir)] for a checkpoint or a training run's MODEL_DIR.

    A MODEL_DIR (holding finished `checkpoint_<step>/` dirs) gives the checkpoints at
    `steps`: "latest", "all", "best" (the step its validation evaluations select:
    training/selection.py), a step or a list of steps. Any other path is one checkpoint
    (a trainer's step dir, or a `save_params` / `python -m dss_jax.convert` dir); its step
    is read from a `checkpoint_<step>` name, else None. Errors name `path_setting` and
    `steps_setting`, the caller's names for the two (a gin macro, a flag).
    """
    path = files.absolute(path)
    if not files.path(path).is_dir():
        what = "is a file, not a directory" if files.path(path).exists() else "does not exist"
        raise CheckpointNotFoundError(f"checkpoint path {path} {what} ({path_setting})")
    available = checkpoint_steps(path)
    if not available:
        if steps not in ("latest", "all"):
            raise CheckpointError(
                f"{steps_setting}={steps!r} needs a model dir with checkpoint_<step>/ dirs "
                f"(a training run's MODEL_DIR); {path} has none"
            )
        name = files.path(path).name
        return [(int(name.split("_")[1]) if RUN_STEP_DIR.match(name) else None, path)]
    if steps == "latest":
        chosen = [available[-1]]
    elif steps == "all":
        chosen = available
    elif steps == "best":
        chosen = [_best_step(path, available, steps_setting)]
    else:
        try:
            chosen = [int(steps)] if isinstance(steps, (int, str)) else [int(s) for s in steps]
        except (TypeError, ValueError):
            raise CheckpointError(
                f"{steps_setting} must be 'latest', 'all', 'best', a step or a list of steps; got {steps!r}"
            ) from None
        unknown = [s for s in chosen if s not in available]
        if unknown:
            raise CheckpointError(
                f"{path} has no checkpoint for step(s) {unknown}; it has steps {available} "
                f"(set {steps_setting} to one of them)"
            )
    return [(s, step_dir(path, s)) for s in chosen]


def _best_step(model_dir: str, available: list[int], steps_setting: str) -> int:
    from dss_jax.training import selection

    rule = selection.read_rule(model_dir) or selection.SelectionRule()
    best = selection.best_evaluation(selection.read_evaluations(model_dir, rule.metric), rule.mode)
    if best is None:
        raise CheckpointError(
            f"{steps_setting}='best': {model_dir} has no validation evaluation with {rule.metric} "
            f"({os.path.join(model_dir, selection.VALIDATION_DIR, 'metrics.jsonl')}); train with EVAL_PERIOD > 0, "
            "or choose a step"
        )
    if best.step not in available:
        raise CheckpointError(
            f"{steps_setting}='best': the best checkpoint of {model_dir} on validation ({rule.metric} "
            f"{best.value:.4g}) is step {best.step}, which was not kept (it has steps {available}); train with "
            "train.keep_best_checkpoints = True, or choose a step"
        )
    return best.step


def no_checkpoint_error(path: pathlib.Path) -> CheckpointNotFoundError:
    """The error for a directory without a checkpoint, with the fix for what it is instead."""
    steps = checkpoint_steps(str(path))
    if steps:  # callers that resolve a MODEL_DIR (select_checkpoints) never get here with one
        return CheckpointNotFoundError(
            f"{path} is a training run's MODEL_DIR, not one checkpoint: give one of its checkpoint_<step>/ dirs "
            f"(steps {steps}), e.g. {step_dir(str(path), steps[-1])}"
        )
    if RUN_STEP_DIR.match(path.name):
        return CheckpointNotFoundError(
            f"{path} holds no orbax checkpoint: the save of this step did not finish; use another step of the "
            f"run {path.parent}"
        )
    if path.is_dir() and (
        (path / "config.gin").is_file() or any(e.name.startswith("checkpoint_") for e in path.iterdir())
    ):
        return CheckpointNotFoundError(
            f"{path} holds no orbax checkpoint yet: it is a training run's MODEL_DIR without a finished "
            "checkpoint_<step>/; let the run reach its first checkpoint save, or pick another checkpoint"
        )
    return CheckpointNotFoundError(
        f"{path} holds no orbax checkpoint: give a training run's MODEL_DIR (with checkpoint_<step>/ dirs), one "
        "checkpoint_<step>/ dir, or a directory written by `python -m dss_jax.convert` (params/, config.json)"
    )


def describing_dir(path: str | os.PathLike) -> pathlib.Path:
    """The one directory whose config.json, spiece.model, task.json and config.gin describe
    the checkpoint at `path`: the checkpoint dir itself, or, for a training run's step (a
    `checkpoint_<step>/` dir without a config.json of its own), the run's MODEL_DIR directly
    above it. An orbax item given itself (a `save_params` dir's params/, a step's state/)
    stands for the checkpoint dir that holds it. Never any other ancestor: a checkpoint
    copied into another run's directory must not be read with that run's files."""
    d = absolute_path(path)
    if (d / PYTREE_MARKER).is_file() and not (d / CONFIG_FILE).is_file():
        d = d.parent
    if RUN_STEP_DIR.match(d.name) and not (d / CONFIG_FILE).is_file():
        d = d.parent
    return d


def describing_file(path: str | os.PathLike, name: str) -> Optional[pathlib.Path]:
    """`name` (config.json, spiece.model, ...) in the checkpoint's `describing_dir`, or None."""
    found = describing_dir(path) / name
    return found if found.is_file() else None


def where_described(path: str | os.PathLike) -> str:
    """The `describing_dir` of a checkpoint, said for messages."""
    d, step = describing_dir(path), absolute_path(path)
    if step != d and (step / PYTREE_MARKER).is_file():
        step = step.parent  # an orbax item given itself
    return str(d) if step == d else f"{d} (the training run's MODEL_DIR above {step})"


def find_config(path: str | os.PathLike) -> Optional[str]:
    """The config.json that describes a checkpoint (see `describing_dir`), or None."""
    found = describing_file(path, CONFIG_FILE)
    return None if found is None else str(found)


def find_vocabulary(path: str | os.PathLike) -> Optional[str]:
    """The vocabulary that travels with a checkpoint (see `describing_dir`): its
    spiece.model, else a Hugging Face tokenizer.json (decoder-only students), or None."""
    found = describing_file(path, VOCAB_FILE) or describing_file(path, TOKENIZER_JSON)
    return None if found is None else str(found)


def read_config(path: str | os.PathLike) -> tuple[object, str]:
    """(the model config (its family's class), the config.json it was read from) that describes the checkpoint at
    `path` (see `find_config`); CheckpointNotFoundError when there is none."""
    path = files.path(path)
    config_path = find_config(path)
    if config_path is None:
        raise CheckpointNotFoundError(
            f"no {CONFIG_FILE} in {where_described(path)}: put the config.json the model was trained or "
            "converted with there (a run's steps share the one in its MODEL_DIR: copy a step with it)"
        )
    data = files.read_json_object(config_path, CheckpointError, "the model config of the checkpoint")
    return _config_from_dict(data, config_path), config_path


def _config_from_dict(data: dict, source: str):
    try:
        return interface.config_from_dict(data, source=source)
    except TypeError as e:  # a field of the wrong type; from_dict's ValueErrors name the file already
        raise CheckpointError(f"{source}: not a valid model config: {e}") from None
    except ValueError as e:
        message = str(e)
        raise CheckpointError(message if source in message else f"{source}: {message}") from None
