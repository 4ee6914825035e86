"""Parameter checkpoints: an orbax PyTree of the T5 params, its config.json and spiece.model.

API
---
    save_params(ckpt_dir, params, config, vocab_path=None, overwrite=False) -> pathlib.Path
        ckpt_dir/params/        orbax PyTree checkpoint of the (unboxed) param tree
        ckpt_dir/config.json    T5Config.to_dict()
        ckpt_dir/spiece.model   the SentencePiece vocabulary, copied (when given)
    load_params(path, config=None, item=None) -> (params, T5Config, vocab_path_or_None)

`load_params` accepts, besides a `save_params` directory:
  * the orbax directory itself (`ckpt_dir/params`);
  * a trainer checkpoint whose tree holds the params under a `params` key at any depth
    (a flax TrainState, {"params": ...} variables, {"state": {"params": ...}} ...); only the
    params are read from disk (orbax partial restore);
  * a step directory holding several orbax items (e.g. `state/`, `dataset/`): the item that
    contains params is found, or named with `item=`.
config.json and spiece.model are looked up in `path` and up to three parent directories
(a trainer writes them once in its model dir), unless `config` is given; a trainer's step
dir without one is read with the model config its metadata item holds.

    select_checkpoints(path, steps="latest") -> [(step or None, checkpoint dir)]
        A training run's MODEL_DIR at "latest", "all", a step or a list of steps; any
        other path is one checkpoint. Every binary that takes a checkpoint (eval, infer,
        annotate, export) resolves it here, so a MODEL_DIR works the same everywhere.

    load_checkpoint(path, dtype=None) -> (T5 model, params, vocab_path_or_None)
        One checkpoint dir ready to run: ours, or a Hugging Face T5 directory (config.json
        with a model_type and HF weights) imported on the fly. eval, infer and annotate's
        student backend load their students here.

Every loader of a dss_jax checkpoint goes through `load_params` (eval, infer, the student
teacher backend, export, INITIAL_CHECKPOINT_PATH in training), and it checks the stored
shapes against config.json before reading any weights: a config.json of another size or
depth is a `CheckpointError` naming the file and the first parameter that disagrees, not a
flax ScopeParamShapeError later. A damaged or non-checkpoint directory is one too.

Writing: `save_params` and `hf_convert.export_hf_checkpoint` write through
`staged_output_dir`: a new directory beside the target, renamed into place when complete,
so a crash leaves no half-written output. A non-empty target is refused unless
`overwrite`, and one that holds a training run or a checkpoint is refused always. Both
are meant to be called from one process (the convert and export binaries).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import pathlib
import re
import secrets
import shutil
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from dss_jax import files
from dss_jax.cli import UserError
from dss_jax.model.config import T5Config

PARAMS_ITEM = "params"
CONFIG_FILE = "config.json"
VOCAB_FILE = "spiece.model"
RUN_TASK_FILE = "task.json"
_PYTREE_MARKER = "_METADATA"  # written by orbax's PyTreeCheckpointHandler
_T5_TOP_KEYS = {"encoder", "decoder", "token_embedder"}
_SEARCH_PARENTS = 3
_RUN_STEP_DIR = re.compile(r"^checkpoint_\d+$")  # checkpoint_manager.STEP_PREFIX + "_<step>"
_ORBAX_MARKERS = (_PYTREE_MARKER, "_CHECKPOINT_METADATA")
# What save_params writes: `overwrite=True` replaces a directory of only these.
SAVE_PARAMS_FILES = (PARAMS_ITEM, CONFIG_FILE, VOCAB_FILE)


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used as it is (config.json disagrees with the weights,
    damaged, not a T5 checkpoint); the message names the file and what to do."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """The checkpoint directory, its orbax item or its config.json is missing."""


class OutputDirError(UserError, FileExistsError):
    """An output directory that would lose what it holds; the message says what to do."""


def save_params(
    ckpt_dir: str | os.PathLike,
    params: Mapping[str, Any],
    config: T5Config,
    vocab_path: Optional[str | os.PathLike] = None,
    overwrite: bool = False,
) -> pathlib.Path:
    ckpt_dir = pathlib.Path(ckpt_dir).absolute()
    params = nn.meta.unbox(params)
    if not _T5_TOP_KEYS <= set(params):
        raise ValueError(
            f"save_params wants the T5 param tree (keys {sorted(_T5_TOP_KEYS)}), got keys {sorted(params)}"
        )
    check_params(_shapes_of(params), config, "the config given to save_params", "the params to save")
    if vocab_path is not None and not pathlib.Path(vocab_path).is_file():
        raise CheckpointNotFoundError(f"vocabulary {vocab_path} does not exist")
    with staged_output_dir(
        ckpt_dir, overwrite=overwrite, replaceable=SAVE_PARAMS_FILES, what="a params checkpoint"
    ) as staging:
        ocp.PyTreeCheckpointer().save(staging / PARAMS_ITEM, dict(params))
        (staging / CONFIG_FILE).write_text(config.to_json())
        if vocab_path is not None:
            shutil.copyfile(vocab_path, staging / VOCAB_FILE)
    return ckpt_dir


def load_params(
    path: str | os.PathLike,
    config: Optional[T5Config] = None,
    item: Optional[str] = None,
    config_source: Optional[str] = None,
):
    """-> (params as numpy arrays, T5Config, path of spiece.model or None).

    The stored shapes are checked against the config (config.json, or `config`, described
    in messages as `config_source`) before the weights are read."""
    path = pathlib.Path(path).absolute()
    if not path.is_dir():
        what = "is a file, not a checkpoint directory" if path.exists() else "does not exist"
        raise CheckpointNotFoundError(f"checkpoint directory {path} {what}")
    orbax_dir, params_path = _locate_params(path if item is None else path / item)
    if config is None:
        config, config_source = _find_config(path)
    tree = _metadata_tree(orbax_dir)
    for k in params_path:
        tree = tree[k]
    check_params(_shapes_of(tree), config, config_source or "the given config", str(orbax_dir))
    params = _restore_subtree(orbax_dir, params_path)
    vocab = _find_upwards(path, VOCAB_FILE)
    return params, config, (str(vocab) if vocab else None)


def check_params(
    shapes: Mapping[tuple[str, ...], tuple[tuple[int, ...], Any]],
    config: T5Config,
    config_source: str,
    params_source: str,
) -> None:
    """CheckpointError naming `config_source` and the first parameter of `params_source`
    whose presence, shape or dtype does not fit `config`. `shapes`: {path: (shape, dtype)}."""
    from dss_jax.model import hf_convert

    expected = hf_convert.param_shapes(config)
    depth = f"num_encoder_layers={config.num_encoder_layers}, num_decoder_layers={config.num_decoder_layers}"
    advice = "the config and the weights are from different models: use the config saved with them"
    missing = [p for p in expected if p not in shapes]
    if missing:
        raise CheckpointError(
            f"{config_source} ({depth}) calls for the parameter {'/'.join(missing[0])}, "
            f"which {params_source} lacks ({len(missing)} missing): {advice}"
        )
    unexpected = sorted(p for p in shapes if p not in expected)
    if unexpected:
        raise CheckpointError(
            f"{params_source} holds the parameter {'/'.join(unexpected[0])}, which "
            f"{config_source} ({depth}) has no place for ({len(unexpected)} such): {advice}"
        )
    bad = []
    for p, (shape, dims) in expected.items():
        got_shape, got_dtype = shapes[p]
        if tuple(got_shape) != shape:
            bad.append(
                f"{'/'.join(p)} is {list(got_shape)} in {params_source}, but {config_source} implies "
                f"{list(shape)} ({', '.join(dict.fromkeys(dims))})"
            )
        elif got_dtype is not None and not jax.numpy.issubdtype(got_dtype, jax.numpy.floating):
            bad.append(f"{'/'.join(p)} has dtype {got_dtype} in {params_source}; T5 params are floating point")
    if bad:
        more = f" ({len(bad) - 1} more parameters disagree too)" if len(bad) > 1 else ""
        raise CheckpointError(f"{bad[0]}{more}: {advice}")


def _shapes_of(tree: Mapping) -> dict[tuple[str, ...], tuple[tuple[int, ...], Any]]:
    """{path: (shape, dtype)} of a param tree's leaves: arrays, or orbax's metadata of them."""
    out = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        path = tuple(str(getattr(k, "key", k)) for k in keys)
        out[path] = (tuple(getattr(leaf, "shape", np.shape(leaf))), getattr(leaf, "dtype", None))
    return out


# ----- a training run's checkpoints --------------------------------------------------------
def select_checkpoints(
    path: str | os.PathLike,
    steps: Union[str, int, Sequence[int]] = "latest",
    *,
    path_setting: str = "CHECKPOINT_PATH",
    steps_setting: str = "steps",
) -> list[tuple[Optional[int], str]]:
    """[(step or None, checkpoint dir)] for a checkpoint or a training run's MODEL_DIR.

    A MODEL_DIR (holding finished `checkpoint_<step>/` dirs) gives the checkpoints at
    `steps`: "latest", "all", a step or a list of steps. Any other path is one checkpoint
    (a trainer's step dir, or a `save_params` / `python -m dss_jax.convert` dir); its step
    is read from a `checkpoint_<step>` name, else None. Errors name `path_setting` and
    `steps_setting`, the caller's names for the two (a gin macro, a flag).
    """
    from dss_jax import checkpoint_manager

    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        what = "is a file, not a directory" if os.path.exists(path) else "does not exist"
        raise CheckpointNotFoundError(f"checkpoint path {path} {what} ({path_setting})")
    available = checkpoint_manager.checkpoint_steps(path)
    if not available:
        if steps not in ("latest", "all"):
            raise CheckpointError(
                f"{steps_setting}={steps!r} needs a model dir with checkpoint_<step>/ dirs "
                f"(a training run's MODEL_DIR); {path} has none"
            )
        name = os.path.basename(path)
        return [(int(name.split("_")[1]) if _RUN_STEP_DIR.match(name) else None, path)]
    if steps == "latest":
        chosen = [available[-1]]
    elif steps == "all":
        chosen = available
    else:
        try:
            chosen = [int(steps)] if isinstance(steps, (int, str)) else [int(s) for s in steps]
        except (TypeError, ValueError):
            raise CheckpointError(
                f"{steps_setting} must be 'latest', 'all', a step or a list of steps; got {steps!r}"
            ) from None
        unknown = [s for s in chosen if s not in available]
        if unknown:
            raise CheckpointError(
                f"{path} has no checkpoint for step(s) {unknown}; it has steps {available} "
                f"(set {steps_setting} to one of them)"
            )
    return [(s, checkpoint_manager.step_dir(path, s)) for s in chosen]


def _no_checkpoint(path: pathlib.Path) -> CheckpointNotFoundError:
    """The error for a directory without a checkpoint, with the fix for what it is instead."""
    from dss_jax import checkpoint_manager

    steps = checkpoint_manager.checkpoint_steps(str(path))
    if steps:  # callers that resolve a MODEL_DIR (select_checkpoints) never get here with one
        return CheckpointNotFoundError(
            f"{path} is a training run's MODEL_DIR, not one checkpoint: give one of its checkpoint_<step>/ dirs "
            f"(steps {steps}), e.g. {checkpoint_manager.step_dir(str(path), steps[-1])}"
        )
    if _RUN_STEP_DIR.match(path.name):
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


# ----- writing a directory safely -----------------------------------------------------------
def holds_run_or_checkpoint(d: pathlib.Path, ignore: Sequence[str] = ()) -> Optional[str]:
    """What in `d` is a training run or a checkpoint (`checkpoint_<step>/`, an orbax item),
    e.g. "a training run's checkpoint_5/", or None. Entries matching `ignore` are skipped."""
    if any((d / m).exists() for m in _ORBAX_MARKERS):
        return "an orbax checkpoint"
    for entry in sorted(d.iterdir()):
        if any(fnmatch.fnmatch(entry.name, pattern) for pattern in ignore):
            continue
        if entry.is_dir() and _RUN_STEP_DIR.match(entry.name):
            return f"a training run's {entry.name}/"
        if entry.is_dir() and any((entry / m).exists() for m in _ORBAX_MARKERS):
            return f"the orbax checkpoint {entry.name}/"
    return None


def check_output_dir(target: str | os.PathLike, *, overwrite: bool, replaceable: Sequence[str], what: str) -> bool:
    """OutputDirError unless `target` may receive `what`: it is new or empty, or (with
    `overwrite`) holds only entries matching `replaceable`. A run or a checkpoint (other
    than a `replaceable` one) is never written over. -> whether `target` has entries."""
    target = pathlib.Path(target)
    if not target.exists():
        return False
    if not target.is_dir():
        raise OutputDirError(f"{target} is a file; the output must be a directory")
    entries = sorted(e.name for e in target.iterdir())
    if not entries:
        return False
    held = holds_run_or_checkpoint(target, ignore=replaceable)
    if held:
        raise OutputDirError(
            f"{target} holds {held}: writing {what} there would replace its files "
            "(config.json, spiece.model); pick a new or empty output directory"
        )
    listing = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
    if not overwrite:
        raise OutputDirError(
            f"{target} is not empty ({listing}); pass --overwrite (overwrite=True) to "
            f"replace it with {what}, or pick a new directory"
        )
    foreign = [e for e in entries if not any(fnmatch.fnmatch(e, p) for p in replaceable)]
    if foreign:
        raise OutputDirError(
            f"{target} holds {', '.join(foreign[:5])}, which {what} does not consist of; "
            "--overwrite replaces only such an output whole: move them or pick another directory"
        )
    return True


@contextlib.contextmanager
def staged_output_dir(
    target: str | os.PathLike, *, overwrite: bool, replaceable: Sequence[str], what: str
) -> Iterator[pathlib.Path]:
    """Yields an empty directory beside `target` to write `what` into; when the block ends
    without an error it becomes `target` (by rename, so readers never see half of it), and
    a replaced old `target` is deleted only after that. On an error the staging directory
    is removed and `target` is untouched. Refusals: see `check_output_dir`."""
    target = pathlib.Path(target).absolute()
    replace = check_output_dir(target, overwrite=overwrite, replaceable=replaceable, what=what)
    target.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    staging = target.parent / f".{target.name}.partial-{token}"
    staging.mkdir()
    try:
        yield staging
        if replace:
            old = target.parent / f".{target.name}.replaced-{token}"
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old)
        else:
            os.replace(staging, target)  # onto a missing or empty directory
    finally:
        if staging.exists():
            shutil.rmtree(staging)


# ----- loading a model to run ---------------------------------------------------------------


def _is_hf_checkpoint(path: str) -> bool:
    """A Hugging Face T5 directory (config.json with a model_type, HF weight files)."""
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    try:
        with open(config) as f:
            is_hf = "model_type" in json.load(f)
    except (OSError, json.JSONDecodeError):
        return False
    return is_hf and any(os.path.isfile(os.path.join(path, name)) for name in HF_WEIGHT_FILES)


HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def load_checkpoint(path: str, dtype: Optional[str] = None):
    """(T5 model, params, vocab path or None) of one checkpoint dir (see
    `select_checkpoints`): ours, or a Hugging Face T5 directory, imported on the fly."""
    from dss_jax import checkpoint_manager
    from dss_jax.model.t5 import T5

    if _is_hf_checkpoint(path):
        from dss_jax.model import hf_convert

        params, config, vocab_path = hf_convert.import_hf_checkpoint(path)
    else:
        try:
            params, config, vocab_path = load_params(path)
        except FileNotFoundError as e:
            metadata = os.path.isdir(os.path.join(path, "metadata"))
            model_config = checkpoint_manager.read_metadata(path).get("model_config") if metadata else None
            if not model_config or CONFIG_FILE not in str(e):
                raise
            # A run dir without config.json: the trainer keeps the model config in the metadata too.
            params, config, vocab_path = load_params(
                path,
                config=T5Config.from_dict(model_config, source=f"{path}/metadata"),
                config_source=f"the model config in {path}/metadata",
            )
    if dtype:
        config = config.replace(dtype=dtype)
    return T5(config), params, vocab_path


# ----- helpers ------------------------------------------------------------------------------
def _is_pytree_checkpoint(d: pathlib.Path) -> bool:
    return (d / _PYTREE_MARKER).is_file()


def _metadata_tree(orbax_dir: pathlib.Path) -> Mapping:
    try:
        md = ocp.PyTreeCheckpointer().metadata(orbax_dir)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _unreadable(orbax_dir, e) from None
    md = getattr(md, "item_metadata", md)  # orbax >= 0.11 wraps the tree in StepMetadata
    md = getattr(md, "tree", md)
    if md is None:  # orbax logs and returns None when the item's metadata cannot be read
        raise _unreadable(orbax_dir, "its metadata cannot be read")
    return md


def _unreadable(orbax_dir: pathlib.Path, why: object) -> CheckpointError:
    why = str(why).strip().splitlines()[0] if str(why).strip() else type(why).__name__
    return CheckpointError(
        f"{orbax_dir}: cannot read the orbax checkpoint ({why}); it is incomplete "
        "or damaged: use another step, or copy it again"
    )


def find_params_path(tree: Any, max_depth: int = 4) -> Optional[tuple[str, ...]]:
    """Key path of the T5 param tree inside a (metadata or value) tree, or None."""
    if not isinstance(tree, Mapping) or max_depth < 0:
        return None
    if _T5_TOP_KEYS <= set(tree):
        return ()
    keys = sorted(tree, key=lambda k: (k != PARAMS_ITEM, str(k)))  # prefer `params`
    for key in keys:
        sub = find_params_path(tree[key], max_depth - 1)
        if sub is not None:
            return (key,) + sub
    return None


def _locate_params(path: pathlib.Path) -> tuple[pathlib.Path, tuple[str, ...]]:
    candidates = [path / PARAMS_ITEM, path]
    if path.is_dir():
        candidates += sorted(d for d in path.iterdir() if d.is_dir() and d.name != PARAMS_ITEM)
    seen = []
    for d in candidates:
        if not _is_pytree_checkpoint(d):
            continue
        seen.append(d)
        keys = find_params_path(_metadata_tree(d))
        if keys is not None:
            return d, keys
    if seen:
        raise CheckpointError(
            f"{path}: the orbax checkpoints {[str(s) for s in seen]} hold no T5 params "
            f"(a tree with keys {sorted(_T5_TOP_KEYS)})"
        )
    raise _no_checkpoint(path)


def _restore_subtree(orbax_dir: pathlib.Path, keys: tuple[str, ...]) -> dict:
    tree = _metadata_tree(orbax_dir)
    sub = tree
    for k in keys:
        sub = sub[k]
    # Rebuild only the branch that leads to the params, so the rest (optimizer state) stays on disk.
    item: Any = sub
    for k in reversed(keys):
        item = {k: item}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            orbax_dir,
            args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=bool(keys)),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _unreadable(orbax_dir, e) from None
    for k in keys:
        restored = restored[k]
    return jax.tree.map(np.asarray, restored)


def write_run_task(model_dir: str | os.PathLike, task_name: str, options: Mapping[str, Any]) -> None:
    """MODEL_DIR/task.json: the task and task options a run trains with, so eval, infer and
    annotate's student backend decode and score its checkpoints the way it was trained."""
    text = json.dumps({"task": task_name, "options": dict(options)}, indent=2, sort_keys=True) + "\n"
    files.atomic_write(pathlib.Path(model_dir) / RUN_TASK_FILE, text)


def run_task(path: str | os.PathLike) -> Optional[tuple[str, Optional[str], dict]]:
    """(the file, the task, the task options) a checkpoint's run was trained with, or None
    for a checkpoint that is no run's (a converted T5). Runs from before task.json existed
    are read from config.gin, for the one option that changes how a student answers."""
    found = _find_upwards(pathlib.Path(path), RUN_TASK_FILE)
    if found is not None:
        try:
            data = json.loads(found.read_text())
            return str(found), data["task"], dict(data["options"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{found}: not a task record written by the train binary ({e})") from None
    gin_file = _find_upwards(pathlib.Path(path), "config.gin")
    if gin_file is None:
        return None
    targets = re.findall(r"(?m)^(?:[\w.]+/)?task_options\.label_target\s*=\s*['\"](\w+)['\"]", gin_file.read_text())
    return str(gin_file), None, ({"label_target": targets[-1]} if targets else {})


def find_config(path: str | os.PathLike) -> Optional[str]:
    """The config.json that describes a checkpoint (in it, or in the training run's
    MODEL_DIR above a `checkpoint_<step>` dir: up to three parents), or None."""
    found = _find_upwards(pathlib.Path(path), CONFIG_FILE)
    return None if found is None else str(found)


def find_vocabulary(path: str | os.PathLike) -> Optional[str]:
    """The spiece.model that travels with a checkpoint (in it or up to three parents), or None."""
    found = _find_upwards(pathlib.Path(path), VOCAB_FILE)
    return None if found is None else str(found)


def _find_upwards(path: pathlib.Path, name: str) -> Optional[pathlib.Path]:
    d = path
    for _ in range(_SEARCH_PARENTS + 1):
        if (d / name).is_file():
            return d / name
        if d.parent == d:
            break
        d = d.parent
    return None


def _find_config(path: pathlib.Path) -> tuple[T5Config, str]:
    config_path = _find_upwards(path, CONFIG_FILE)
    if config_path is None:
        found = _config_from_run_metadata(path)
        if found is not None:
            return found
        raise CheckpointNotFoundError(
            f"no {CONFIG_FILE} in {path} or its {_SEARCH_PARENTS} parent directories: put the config.json "
            "the model was trained or converted with next to the checkpoint (or pass config= to load_params)"
        )
    data = files.read_json_object(config_path, CheckpointError, "the T5Config of the checkpoint")
    return _config_from_dict(data, str(config_path)), str(config_path)


def _config_from_run_metadata(step_dir: pathlib.Path) -> Optional[tuple[T5Config, str]]:
    """(config, its description) from a trainer's step dir, whose metadata item keeps the
    model config too (see checkpoint_manager): a run whose config.json is gone still loads."""
    from dss_jax import checkpoint_manager

    if not (step_dir / "metadata").is_dir():
        return None
    try:
        model_config = checkpoint_manager.read_metadata(str(step_dir)).get("model_config")
    except (OSError, ValueError, AttributeError):  # unreadable: report the missing config.json instead
        return None
    if not isinstance(model_config, dict):
        return None
    source = f"{step_dir}/metadata"
    return _config_from_dict(model_config, source), f"the model config in {source}"


def _config_from_dict(data: dict, source: str) -> T5Config:
    try:
        return T5Config.from_dict(data, source=source)
    except TypeError as e:  # a field of the wrong type; from_dict's ValueErrors name the file already
        raise CheckpointError(f"{source}: not a valid T5Config: {e}") from None
    except ValueError as e:
        message = str(e)
        raise CheckpointError(message if source in message else f"{source}: {message}") from None
