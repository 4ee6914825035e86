"""Reads the checkpoints T5X writes in its msgpack format, without t5x (issue 34, item 1:
the reader; mapping the parameters onto a dss_jax student is not built yet).

    from dss_jax.checkpoints import t5x
    params = t5x.read_params("/ckpts/t5_1_1_small/checkpoint_1000000")
    params["encoder/layers_0/attention/query/kernel"]   # numpy, as T5X stored it

A T5X checkpoint of format version 3 is one msgpack file, `checkpoint_<step>/checkpoint`:
`{'version': 3, 'optimizer': {'target': params, 'state': {'step', 'param_states'}}}`.
Each array is either inline (flax's msgpack encoding of a numpy array, bfloat16 included)
or out of line: a TensorStore spec in place of the array, naming a zarr directory beside
the file (`state.param_states.kernel/`, gzip-compressed chunks). `read_checkpoint` returns
the whole tree with every array read; `read_params` the model's parameters
(`optimizer.target`), flat, by their t5x names joined with "/". Every out-of-line array
is read from inside the checkpoint directory only; a missing or damaged one is an error
naming it.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

FORMAT_VERSION = 3
CHECKPOINT_FILE = "checkpoint"


class T5xCheckpointError(ValueError):
    """A T5X checkpoint that cannot be read; the message names the file or array."""


def checkpoint_file(path: str | os.PathLike) -> pathlib.Path:
    """The msgpack file of a T5X checkpoint: `path` itself, or `path/checkpoint`."""
    path = pathlib.Path(path).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise T5xCheckpointError(
            f"{path} not found: give a T5X checkpoint_<step>/ directory or its {CHECKPOINT_FILE} file"
        )
    return path


def _is_tensorstore_spec(value: Any) -> bool:
    return isinstance(value, dict) and "driver" in value and isinstance(value.get("kvstore"), dict)


def _read_out_of_line(spec: dict, directory: pathlib.Path, name: str) -> np.ndarray:
    import tensorstore as ts

    relative = str(spec["kvstore"].get("path", ""))
    target = (directory / relative).resolve()
    if directory.resolve() not in target.parents and target != directory.resolve():
        raise T5xCheckpointError(f"{name}: its array {relative!r} lies outside the checkpoint directory {directory}")
    if not target.is_dir():
        raise T5xCheckpointError(f"{name}: its array directory {target} is missing (copy the whole checkpoint dir)")
    local = {**spec, "kvstore": {"driver": "file", "path": str(target) + "/"}}
    # T5X writes the zarr metadata into the spec, not always beside the chunks (.zarray).
    assume = not (target / ".zarray").is_file()
    try:
        return np.asarray(ts.open(local, open=True, read=True, assume_metadata=assume).result().read().result())
    except Exception as e:  # tensorstore raises its own error types for a damaged array
        raise T5xCheckpointError(f"{name}: {target} cannot be read ({str(e).splitlines()[0]})") from None


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The whole checkpoint tree (version, optimizer target and state), every array read."""
    from flax import serialization

    file = checkpoint_file(path)
    try:
        tree = serialization.msgpack_restore(file.read_bytes())
    except Exception as e:  # msgpack's and flax's errors for a truncated or foreign file
        raise T5xCheckpointError(f"{file}: not a T5X msgpack checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(tree, dict) or "optimizer" not in tree:
        raise T5xCheckpointError(f"{file}: not a T5X msgpack checkpoint (no 'optimizer' entry)")
    version = tree.get("version")
    if version != FORMAT_VERSION:
        raise T5xCheckpointError(
            f"{file}: T5X checkpoint format version {version!r}; dss_jax reads version {FORMAT_VERSION}"
        )

    def read(value: Any, name: str) -> Any:
        if _is_tensorstore_spec(value):
            return _read_out_of_line(value, file.parent, name)
        if isinstance(value, dict):
            return {k: read(v, f"{name}/{k}" if name else k) for k, v in value.items()}
        return value

    return read(tree, "")


def read_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The model's parameters (`optimizer.target`), flat: {"encoder/layers_0/...": array}."""
    target = read_checkpoint(path)["optimizer"].get("target")
    if not isinstance(target, dict) or not target:
        raise T5xCheckpointError(f"{checkpoint_file(path)}: the checkpoint holds no parameters (optimizer.target)")
    flat: dict[str, np.ndarray] = {}

    def walk(value: Any, name: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{name}/{k}" if name else str(k))
        else:
            flat[name] = np.asarray(value)

    walk(target, "")
    return flat
