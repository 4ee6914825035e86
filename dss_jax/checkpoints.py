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
(a trainer writes them once in its model dir), unless `config` is given.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from dss_jax.model.config import T5Config

PARAMS_ITEM = "params"
CONFIG_FILE = "config.json"
VOCAB_FILE = "spiece.model"
_PYTREE_MARKER = "_METADATA"  # written by orbax's PyTreeCheckpointHandler
_T5_TOP_KEYS = {"encoder", "decoder", "token_embedder"}
_SEARCH_PARENTS = 3


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
        raise ValueError(f"save_params wants the T5 param tree (keys {sorted(_T5_TOP_KEYS)}), "
                         f"got keys {sorted(params)}")
    target = ckpt_dir / PARAMS_ITEM
    if target.exists():
        if not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
        if jax.process_index() == 0:
            shutil.rmtree(target)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ocp.PyTreeCheckpointer().save(target, dict(params))
    if jax.process_index() == 0:
        (ckpt_dir / CONFIG_FILE).write_text(config.to_json())
        if vocab_path is not None:
            vocab_path = pathlib.Path(vocab_path)
            if not vocab_path.is_file():
                raise FileNotFoundError(f"vocabulary {vocab_path} does not exist")
            if vocab_path.absolute() != (ckpt_dir / VOCAB_FILE):
                shutil.copyfile(vocab_path, ckpt_dir / VOCAB_FILE)
    return ckpt_dir


def load_params(
    path: str | os.PathLike,
    config: Optional[T5Config] = None,
    item: Optional[str] = None,
):
    """-> (params as numpy arrays, T5Config, path of spiece.model or None)."""
    path = pathlib.Path(path).absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    orbax_dir, params_path = _locate_params(path if item is None else path / item)
    params = _restore_subtree(orbax_dir, params_path)
    if config is None:
        config = _find_config(path)
    vocab = _find_upwards(path, VOCAB_FILE)
    return params, config, (str(vocab) if vocab else None)


# ----- helpers ------------------------------------------------------------------------------
def _is_pytree_checkpoint(d: pathlib.Path) -> bool:
    return (d / _PYTREE_MARKER).is_file()


def _metadata_tree(orbax_dir: pathlib.Path) -> Mapping:
    md = ocp.PyTreeCheckpointer().metadata(orbax_dir)
    md = getattr(md, "item_metadata", md)  # orbax >= 0.11 wraps the tree in StepMetadata
    return getattr(md, "tree", md)


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
        raise ValueError(f"{path}: the orbax checkpoints {[str(s) for s in seen]} hold no T5 params "
                         f"(a tree with keys {sorted(_T5_TOP_KEYS)})")
    raise FileNotFoundError(
        f"{path} holds no orbax checkpoint (looked for {_PYTREE_MARKER} in {path / PARAMS_ITEM}, "
        f"{path} and its subdirectories); write one with dss_jax.checkpoints.save_params or "
        "`python -m dss_jax.convert`")


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
    restored = ocp.PyTreeCheckpointer().restore(
        orbax_dir,
        args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=bool(keys)),
    )
    for k in keys:
        restored = restored[k]
    return jax.tree.map(np.asarray, restored)


def _find_upwards(path: pathlib.Path, name: str) -> Optional[pathlib.Path]:
    d = path
    for _ in range(_SEARCH_PARENTS + 1):
        if (d / name).is_file():
            return d / name
        if d.parent == d:
            break
        d = d.parent
    return None


def _find_config(path: pathlib.Path) -> T5Config:
    config_path = _find_upwards(path, CONFIG_FILE)
    if config_path is None:
        raise FileNotFoundError(f"no {CONFIG_FILE} in {path} or its {_SEARCH_PARENTS} parent "
                                "directories; pass config= explicitly")
    try:
        data = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path} is not valid JSON: {e}") from None
    return T5Config.from_dict(data, source=str(config_path))
