"""Parameter checkpoints: writing a student's params with their config.json and spiece.model,
and reading the params of any of our checkpoints (or a Hugging Face T5 directory) back.

    save_params(ckpt_dir, params, config, vocab_path=None, overwrite=False, tokenizer_files=()) -> pathlib.Path
        ckpt_dir/params/        orbax PyTree checkpoint of the (unboxed) param tree
        ckpt_dir/tokenizer.json ... a Hugging Face tokenizer's TOKENIZER_FILES, copied (when given)
        ckpt_dir/config.json    config.to_dict() (with the model family)
        ckpt_dir/spiece.model   the SentencePiece vocabulary, copied (when given)
        ckpt_dir/checksums.json the checksum of every param (integrity.py)
    load_params(path, config=None, item=None) -> (params, config, vocab_path_or_None)
    load_checkpoint(path, dtype=None) -> (StudentModel, params, vocab_path_or_None)

`load_params` accepts, besides a `save_params` directory, the orbax directory itself, a
trainer checkpoint whose tree holds the params under a `params` key at any depth (only
the params are read from disk: orbax partial restore), and a step directory holding
several orbax items (the one that contains params is found, or named with `item=`). The
stored shapes are checked against config.json before any weight is read: a config.json
of another size or depth is a `CheckpointError` naming the file and the first parameter
that disagrees, not a flax ScopeParamShapeError later. The weights read are checked
against the checksums saved with them and for NaN and infinity. A damaged or
non-checkpoint directory is a `CheckpointError` too.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from dss_jax import files
from dss_jax.checkpoints import integrity
from dss_jax.checkpoints.locate import (
    CHECKSUMS_FILE,
    CHECKSUMS_KEY,
    CONFIG_FILE,
    METADATA_ITEM,
    PARAMS_ITEM,
    PYTREE_MARKER,
    RUN_STEP_DIR,
    STATE_ITEM,
    TOKENIZER_FILES,
    VOCAB_FILE,
    CheckpointError,
    CheckpointNotFoundError,
    absolute_path,
    checkpoint_steps,
    find_vocabulary,
    no_checkpoint_error,
    read_config,
)
from dss_jax.checkpoints.outputs import staged_output_dir
from dss_jax.model import interface

# What save_params writes: `overwrite=True` replaces a directory of only these.
# A Hugging Face tokenizer a converted decoder-only checkpoint keeps beside its params.
SAVE_PARAMS_FILES = (PARAMS_ITEM, CONFIG_FILE, VOCAB_FILE, CHECKSUMS_FILE) + TOKENIZER_FILES
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def save_params(
    ckpt_dir: str | os.PathLike,
    params: Mapping[str, Any],
    config: Any,
    vocab_path: Optional[str | os.PathLike] = None,
    overwrite: bool = False,
    source: Optional[str] = None,
    tokenizer_files: Sequence[str | os.PathLike] = (),
) -> pathlib.Path:
    """Writes the params checkpoint (see the module docstring); params with NaN or
    infinity are refused before anything is written (`source`: what they were read from,
    for that message)."""
    ckpt_dir = absolute_path(ckpt_dir)  # a gs:// URL stays one (staged locally, uploaded whole)
    params = nn.meta.unbox(params)
    root_keys = interface.build(config).param_root_keys
    if not root_keys <= set(params):
        raise ValueError(
            f"save_params wants the {config.family} param tree (keys {sorted(root_keys)}), got keys {sorted(params)}"
        )
    check_params(_shapes_of(params), config, "the config given to save_params", "the params to save")
    strange = [str(f) for f in tokenizer_files if files.path(f).name not in TOKENIZER_FILES]
    if strange:
        raise ValueError(f"save_params keeps a Hugging Face tokenizer's {TOKENIZER_FILES}, not {strange}")
    if vocab_path is not None and not files.path(vocab_path).is_file():
        raise CheckpointNotFoundError(f"vocabulary {vocab_path} does not exist")
    scanned = integrity.scan(dict(params))
    integrity.check_finite(
        scanned,
        source or "the params given to save_params",
        "every loader would refuse a checkpoint of them, so nothing is written",
        "save a model that has not diverged",
    )
    with staged_output_dir(
        ckpt_dir, overwrite=overwrite, replaceable=SAVE_PARAMS_FILES, what="a params checkpoint"
    ) as staging:
        ocp.PyTreeCheckpointer().save(staging / PARAMS_ITEM, dict(params))
        (staging / CHECKSUMS_FILE).write_text(json.dumps(integrity.record({PARAMS_ITEM: scanned}), indent=1))
        (staging / CONFIG_FILE).write_text(config.to_json())
        if vocab_path is not None:
            files.copy(vocab_path, staging / VOCAB_FILE)
        for file in tokenizer_files:  # copied as they are
            files.copy(file, staging / files.path(file).name)
    return ckpt_dir


def load_params(
    path: str | os.PathLike,
    config: Optional[Any] = None,
    item: Optional[str] = None,
    config_source: Optional[str] = None,
):
    """-> (params as numpy arrays, the model config, path of spiece.model or None).

    The stored shapes are checked against the config (config.json, or `config`, described
    in messages as `config_source`) before the weights are read; the weights read are
    checked against the checksums recorded when they were saved, and for NaN and infinity
    (`integrity.verify`)."""
    path = absolute_path(path)
    if not path.is_dir():
        gone = _deleted_by_its_run(path)
        if gone is not None:
            raise gone
        what = "is a file, not a checkpoint directory" if path.exists() else "does not exist"
        raise CheckpointNotFoundError(f"checkpoint directory {path} {what}")
    orbax_dir, params_path = _locate_params(path if item is None else path / item)
    if config is None:
        config, config_source = read_config(path)
    tree = _metadata_tree(orbax_dir)
    for k in params_path:
        tree = tree[k]
    check_params(_shapes_of(tree), config, config_source or "the given config", str(orbax_dir))
    params = _restore_subtree(orbax_dir, params_path)
    recorded, recorded_in = _recorded_checksums(orbax_dir)
    integrity.verify(
        params, recorded, orbax_dir.name, str(path), recorded_in, _damaged_advice(path), prefix=params_path
    )
    return params, config, find_vocabulary(path)


def _recorded_checksums(orbax_dir: pathlib.Path) -> tuple[Optional[dict], str]:
    """(the checksums recorded when an orbax item was saved, the file they are in): a run
    step's metadata beside its state/, a `save_params` dir's checksums.json beside its
    params/; (None, "") for a checkpoint written before they were."""
    container = orbax_dir.parent
    metadata = container / METADATA_ITEM / METADATA_ITEM  # where orbax's JsonSave writes it
    if orbax_dir.name == STATE_ITEM and metadata.is_file():
        data = files.read_json_object(metadata, CheckpointError, "the metadata of a training run's checkpoint")
        return data.get(CHECKSUMS_KEY), str(metadata)
    if (container / CHECKSUMS_FILE).is_file():
        data = files.read_json_object(container / CHECKSUMS_FILE, CheckpointError, "the checksums of a checkpoint")
        return data, str(container / CHECKSUMS_FILE)
    return None, ""


def _damaged_advice(path: pathlib.Path) -> str:
    step = next((d for d in (path, path.parent) if RUN_STEP_DIR.match(d.name)), None)
    if step is not None:
        others = [s for s in checkpoint_steps(str(step.parent)) if s != int(step.name.rsplit("_", 1)[1])]
        if others:
            return f"use another step of the run {step.parent} (it has steps {others}), or copy this one again"
        return f"copy it again from where it was saved (the run {step.parent} has no other step)"
    return "copy it again from where it was saved, or save or convert it again"


def check_params(
    shapes: Mapping[tuple[str, ...], tuple[tuple[int, ...], Any]],
    config: Any,
    config_source: str,
    params_source: str,
    advice: str = "the config and the weights are from different models: use the config saved with them",
) -> None:
    """CheckpointError naming `config_source` and the first parameter of `params_source`
    whose presence, shape or dtype does not fit `config`, then `advice`. `shapes`: {path:
    (shape, dtype)}."""
    model = interface.build(config)
    expected = model.param_shapes()
    depth = model.depth_text()
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
            bad.append(f"{'/'.join(p)} has dtype {got_dtype} in {params_source}; params are floating point")
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


def load_checkpoint(path: str, dtype: Optional[str] = None):
    """(student model, params, vocab path or None) of one checkpoint dir (see
    `select_checkpoints`): ours, or a Hugging Face directory, imported on the fly. The
    vocabulary is a spiece.model or a Hugging Face tokenizer.json (`find_vocabulary`)."""
    if is_hf_checkpoint(path):
        params, config, vocab_path = interface.import_hf_checkpoint(path)
        vocab_path = vocab_path or find_vocabulary(path)  # a decoder-only model's tokenizer.json
        integrity.verify(params, None, "", path, "", "use another copy of the model")  # NaN, infinity
    else:
        params, config, vocab_path = load_params(path)
    model = interface.build(config.replace(dtype=dtype) if dtype else config)
    return model, params, vocab_path


def is_hf_checkpoint(path: str) -> bool:
    """A Hugging Face directory (config.json with a model_type, HF weight files)."""
    d = files.path(path)
    config = d / "config.json"
    if not config.is_file():
        return False
    try:
        with config.open() as f:
            is_hf = "model_type" in json.load(f)
    except (OSError, json.JSONDecodeError):
        return False
    return is_hf and any((d / name).is_file() for name in HF_WEIGHT_FILES)


# ----- reading orbax items ------------------------------------------------------------------
def _is_pytree_checkpoint(d: pathlib.Path) -> bool:
    return (d / PYTREE_MARKER).is_file()


def _metadata_tree(orbax_dir: pathlib.Path) -> Mapping:
    try:
        md = ocp.PyTreeCheckpointer().metadata(orbax_dir)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise unreadable_error(orbax_dir, e) from None
    md = getattr(md, "item_metadata", md)  # orbax >= 0.11 wraps the tree in StepMetadata
    md = getattr(md, "tree", md)
    if md is None:  # orbax logs and returns None when the item's metadata cannot be read
        raise unreadable_error(orbax_dir, "its metadata cannot be read")
    return md


def _deleted_by_its_run(path: pathlib.Path) -> Optional[CheckpointNotFoundError]:
    """The error for a run's checkpoint_<step> dir, or an orbax item in one, that is gone or
    going: its run deletes all but its latest checkpoints, also after this one was chosen.
    None when `path` is in no run's checkpoint, or is whole (then it is damaged)."""
    step = next((p for p in (path, *path.parents) if RUN_STEP_DIR.match(p.name)), None)
    if step is None:
        return None
    steps = checkpoint_steps(str(step.parent))
    number = int(step.name.rsplit("_", 1)[1])
    if path == step:  # not there at all: a typo, or pruned before it was read
        if path.exists() or not any(s > number for s in steps):
            return None
        return CheckpointNotFoundError(
            f"{step} does not exist (any more: its run keeps only its latest checkpoints, "
            f"train.keep_checkpoints); use a step it has ({steps})"
        )
    if (path / PYTREE_MARKER).exists():
        return None
    return CheckpointNotFoundError(
        f"{step} was deleted while it was being read: its run keeps only its latest checkpoints "
        f"(train.keep_checkpoints) and removed this one; use a step it has now ({steps or 'none'})"
    )


def unreadable_error(orbax_dir: str | os.PathLike, why: object) -> CheckpointError:
    """One line naming an orbax item (or checkpoint) that cannot be read, and why (or that
    its run deleted it: not damaged)."""
    gone = _deleted_by_its_run(absolute_path(orbax_dir))
    if gone is not None:  # not damaged: pruned by a run still training
        return gone
    why = str(why).strip().splitlines()[0] if str(why).strip() else type(why).__name__
    return CheckpointError(
        f"{orbax_dir}: cannot read the orbax checkpoint ({why}); it is incomplete "
        "or damaged: use another step, or copy it again"
    )


def find_params_path(tree: Any, max_depth: int = 4) -> Optional[tuple[str, ...]]:
    """Key path of a student's param tree (any family's `param_root_keys`) inside a
    (metadata or value) tree, or None."""
    if not isinstance(tree, Mapping) or max_depth < 0:
        return None
    if any(keys <= set(tree) for keys in interface.param_root_keys()):
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
            f"{path}: the orbax checkpoints {[str(s) for s in seen]} hold no model params "
            f"(a tree with keys {' or '.join(str(sorted(k)) for k in interface.param_root_keys())})"
        )
    raise no_checkpoint_error(path)


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
        raise unreadable_error(orbax_dir, e) from None
    for k in keys:
        restored = restored[k]
    return jax.tree.map(np.asarray, restored)
