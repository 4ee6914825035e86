"""Reads the checkpoints T5X writes, without t5x, and imports them as a dss_jax T5 student
(`python -m dss_jax.convert --t5x_checkpoint=...`).

    from dss_jax.checkpoints import t5x
    params = t5x.read_params("/ckpts/t5_1_1_small/checkpoint_1000000")
    params["encoder/layers_0/attention/query/kernel"]   # numpy, as T5X stored it
    params, config = t5x.import_checkpoint("/ckpts/t5_1_1_small/checkpoint_1000000")

What the step directory holds tells its layout:
- msgpack, format version 3: one file, `checkpoint_<step>/checkpoint`, of `{'version': 3,
  'optimizer': {'target': params, 'state': {'step', 'param_states'}}}`. Each array is
  inline (flax's msgpack encoding, bfloat16 included) or a TensorStore spec naming a zarr
  directory beside the file (`state.param_states.kernel/`).
- orbax (T5X since 2023): `checkpoint_<step>/state/`, orbax's PyTreeCheckpointHandler item
  of `{'target': params, 'state': ...}`, listed by its `_METADATA`; each array a zarr array
  named by its keys joined with "." (`target.encoder.layers_0...`), in the item's OCDBT
  database (T5X's default since 2024) or a directory of that name.
- early orbax (T5X's testdata/tiny_orbax/1/): a msgpack `checkpoint` of the train state
  saved whole (`_optimizer.target`), each array a `PLACEHOLDER://<name>` string for the
  zarr directory `<name>/` beside it, described by the `.zarray` TensorStore writes there.
`read_checkpoint` returns the whole tree as stored, every array read; `read_params` the
model's parameters (`target`), flat, by their t5x names joined with "/", reading nothing
else. Each array is read once, from inside the checkpoint directory only; a missing or
damaged one is an error naming it. The checkpoint may be local or on an object store
(gs://, as T5X's own released checkpoints are), read by TensorStore's driver for it.

dss_jax's T5 names its parameters as t5x's `examples/t5/network.py` does, so the import
is the same tree; a scanned checkpoint (`examples/scalable_t5/network.py`, scan_layers:
`encoder/encoder/...`, layers on one axis) is unstacked into those names first
(`unscan_layers`). scalable_t5 gives every layer its own relative-position table
(`layers_<i>/relpos_bias`): tables that differ are kept so, as a student with
`T5Config.relative_attention_per_layer` (which exports to Hugging Face as UMT5); equal
ones become the stack's one table. A T5X checkpoint does not record its model's config:
`import_checkpoint` takes it from the caller (convert: the user's model gin file, T5X's
translated by dss_jax.t5x_gin) and checks every array against it, or reads it from the
arrays (`config_from_shapes`: sizes, layer counts, gated or not, tied or a separate
`logits_dense`, a table per layer or per stack); what arrays cannot show is then T5's
default and logged (a gated MLP's activation: GELU, as T5 v1.1, mT5 and Flan-T5;
relative_attention_max_distance: 128). The optimizer state is neither read nor imported,
with a line saying so.

Back to T5X: `export_checkpoint(params, config, step, model_dir)` (`python -m
dss_jax.export --format=t5x`) writes `model_dir/checkpoint_<step>/` as T5X's
Checkpointer.save does: the msgpack file `checkpoint` (flax's serialization, keys sorted,
a new Adafactor state as t5x/adafactor.py initialises it) and each array T5X partitions
as a zarr array beside it, or every array inline in its dtype (`inline_arrays`): T5X's own
test_t5_tiny.checkpoint_0, imported and exported so, is the same file byte for byte. A student
with a table per layer is refused (`check_exportable`): scalable_t5's layout is not written.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import posixpath
import re
from typing import Any, Callable

import numpy as np

from dss_jax import files

FORMAT_VERSION = 3
CHECKPOINT_FILE = "checkpoint"


class T5xCheckpointError(ValueError):
    """A T5X checkpoint that cannot be read; the message names the file or array."""


def checkpoint_file(path: str | os.PathLike) -> pathlib.Path:
    """The msgpack file of a T5X checkpoint: `path` itself, or `path/checkpoint` (local or gs://)."""
    path = files.path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise T5xCheckpointError(
            f"{path} not found: give a T5X checkpoint_<step>/ directory or its {CHECKPOINT_FILE} file"
        )
    return path


def _is_tensorstore_spec(value: Any) -> bool:
    return isinstance(value, dict) and "driver" in value and isinstance(value.get("kvstore"), dict)


# TensorStore's key-value drivers for the object stores it reads.
_TENSORSTORE_DRIVERS = {"gs": "gcs", "s3": "s3"}


def _read_out_of_line(spec: dict, directory: pathlib.Path, name: str) -> np.ndarray:
    import tensorstore as ts

    relative = str(spec["kvstore"].get("path", ""))
    if files.is_remote(directory):
        # No symlinks on an object store: normalising the name is what resolve() does locally.
        inside = posixpath.normpath(relative)
        if inside.startswith("/") or inside == ".." or inside.startswith("../"):
            raise T5xCheckpointError(
                f"{name}: its array {relative!r} lies outside the checkpoint directory {directory}"
            )
        target = directory if inside == "." else directory / inside
    else:
        target = (directory / relative).resolve()
        if directory.resolve() not in target.parents and target != directory.resolve():
            raise T5xCheckpointError(
                f"{name}: its array {relative!r} lies outside the checkpoint directory {directory}"
            )
    if not target.is_dir():
        raise T5xCheckpointError(f"{name}: its array directory {target} is missing (copy the whole checkpoint dir)")
    local = {**spec, "kvstore": _kvstore(target)}
    # T5X writes the zarr metadata into the spec, not always beside the chunks (.zarray).
    assume = not (target / ".zarray").is_file()
    try:
        return np.asarray(ts.open(local, open=True, read=True, assume_metadata=assume).result().read().result())
    except Exception as e:  # tensorstore raises its own error types for a damaged array
        raise T5xCheckpointError(f"{name}: {target} cannot be read ({str(e).splitlines()[0]})") from None


def _kvstore(directory) -> dict:
    """The TensorStore kvstore spec of `directory`, local or on an object store."""
    if not files.is_remote(directory):
        return {"driver": "file", "path": str(directory) + "/"}
    scheme = files.scheme(directory)
    if scheme not in _TENSORSTORE_DRIVERS:
        raise T5xCheckpointError(f"{directory}: TensorStore reads no {scheme}:// arrays (only local, gs:// and s3://)")
    bucket, _, key = str(directory).split("://", 1)[1].partition("/")
    return {"driver": _TENSORSTORE_DRIVERS[scheme], "bucket": bucket, "path": key.rstrip("/") + "/"}


# Orbax, as T5X has saved with it since 2023 (t5x/checkpoints.py,
# OrbaxCheckpointManagerInterface): a step directory checkpoint_<step>/ holds the train
# state as the item `state/` of orbax's PyTreeCheckpointHandler (OCDBT since 2024), which
# its `_METADATA` describes. The first orbax T5X wrote that handler's older layout: a
# msgpack `checkpoint` file holding the tree, each array stored apart replaced by
# "PLACEHOLDER://<name>", the zarr directory <name>/ beside it.
ORBAX_STATE_ITEM = "state"
ORBAX_METADATA_FILE = "_METADATA"
_ORBAX_PLACEHOLDER = "PLACEHOLDER://"


@dataclasses.dataclass(frozen=True)
class _Unread:
    """An array stored apart from the checkpoint's tree, read when wanted: an import reads
    each parameter once and the optimizer state never."""

    name: str
    read: Callable[[], np.ndarray]


def _open(path: str | os.PathLike) -> tuple[str, dict]:
    """(the file or directory an error names, the checkpoint's tree as T5X wrote it, every
    array stored apart an `_Unread`), from what `path` holds: a msgpack `checkpoint` file,
    an orbax `state/` item (or the item itself), or the early orbax layout."""
    path = files.path(path)
    if path.is_dir() and (path / ORBAX_STATE_ITEM).is_dir():
        path = path / ORBAX_STATE_ITEM
    if path.is_dir() and (path / ORBAX_METADATA_FILE).is_file():
        return str(path), _orbax_tree(path)
    if path.is_dir() and not (path / CHECKPOINT_FILE).is_file():
        steps = [p.name for p in path.iterdir() if re.fullmatch(r"checkpoint_\d+", p.name)]
        latest = max(steps, key=lambda step: int(step.split("_")[1]), default=None)
        what = f"give one of its steps, e.g. {path / latest}" if latest else "give a T5X checkpoint_<step>/ directory"
        raise T5xCheckpointError(
            f"{path}: no T5X checkpoint here (no msgpack {CHECKPOINT_FILE} file, no orbax {ORBAX_STATE_ITEM}/ "
            f"or {ORBAX_METADATA_FILE}): {what}"
        )
    file = checkpoint_file(path)
    return str(file), _msgpack_tree(file)


def _msgpack_tree(file: pathlib.Path) -> dict:
    """The tree in a msgpack `checkpoint` file: T5X's format 3 or the early orbax layout."""
    from flax import serialization

    try:
        tree = serialization.msgpack_restore(file.read_bytes())
    except Exception as e:  # msgpack's and flax's errors for a truncated or foreign file
        raise T5xCheckpointError(f"{file}: not a T5X msgpack checkpoint ({type(e).__name__}: {e})") from None
    early_orbax = isinstance(tree, dict) and "version" not in tree and {"target", "_optimizer"} & tree.keys()
    if not early_orbax and (not isinstance(tree, dict) or "optimizer" not in tree):
        raise T5xCheckpointError(f"{file}: not a T5X msgpack checkpoint (no 'optimizer' entry)")
    if not early_orbax and tree.get("version") != FORMAT_VERSION:
        raise T5xCheckpointError(
            f"{file}: T5X checkpoint format version {tree.get('version')!r}; dss_jax reads version {FORMAT_VERSION}"
        )

    def unread(value: Any, name: str) -> Any:
        if _is_tensorstore_spec(value):
            return _Unread(name, functools.partial(_read_out_of_line, value, file.parent, name))
        if isinstance(value, str) and value.startswith(_ORBAX_PLACEHOLDER):
            stored = value[len(_ORBAX_PLACEHOLDER) :]
            return _Unread(name, functools.partial(_read_placeholder, stored, file.parent, name))
        if isinstance(value, dict):
            return {k: unread(v, f"{name}/{k}" if name else k) for k, v in value.items()}
        return value

    return unread(tree, "")


def _read_placeholder(stored: str, directory: pathlib.Path, name: str) -> np.ndarray:
    """An array the early orbax layout stored apart: the zarr directory `stored` beside its
    msgpack file, described by the `.zarray` TensorStore writes there."""
    if "/" in stored or stored in ("", ".", ".."):
        raise T5xCheckpointError(f"{name}: its array {stored!r} lies outside the checkpoint directory {directory}")
    if (directory / stored).is_dir() and not (directory / stored / ".zarray").is_file():
        raise T5xCheckpointError(
            f"{name}: {directory / stored}/.zarray is missing, so its dtype and shape are unknown "
            "(copy the whole checkpoint dir, dot files included)"
        )
    return _read_out_of_line({"driver": "zarr", "kvstore": {"driver": "file", "path": stored}}, directory, name)


def _orbax_tree(item: pathlib.Path) -> dict:
    """The tree orbax's PyTreeCheckpointHandler saved in `item`, as its `_METADATA` lists
    it. Each array is a zarr array named by its keys joined with ".", in the item's OCDBT
    database when it has one, else in a directory of that name."""
    import tensorstore as ts

    listed = item / ORBAX_METADATA_FILE
    try:
        metadata = json.loads(listed.read_text())
        entries = metadata.get("tree_metadata", metadata)
        leaves = {
            tuple(str(k["key"]) for k in e["key_metadata"]): e["value_metadata"]["value_type"] for e in entries.values()
        }
    except Exception as e:  # json's errors, or entries without orbax's keys
        raise T5xCheckpointError(
            f"{listed}: not an orbax checkpoint's tree metadata ({type(e).__name__}: {e})"
        ) from None
    ocdbt = metadata.get("use_ocdbt", (item / "manifest.ocdbt").is_file())
    driver = "zarr3" if metadata.get("use_zarr3") else "zarr"
    context = ts.Context()  # shared, so the OCDBT manifest is read once for all arrays
    tree: dict = {}
    for keys, value_type in leaves.items():
        node = tree
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        if value_type in ("None", "Dict", "List"):  # an empty node, kept in the tree only
            node[keys[-1]] = {"None": None, "Dict": {}, "List": []}[value_type]
            continue
        stored, name = ".".join(keys), "/".join(keys)
        if ocdbt:
            kvstore = {"driver": "ocdbt", "base": _kvstore(item), "path": stored + "/"}
        else:
            kvstore = _kvstore(item / stored)
        spec = {"driver": driver, "kvstore": kvstore}
        node[keys[-1]] = _Unread(name, functools.partial(_read_orbax_array, spec, context, item, name))
    return tree


def _read_orbax_array(spec: dict, context, item: pathlib.Path, name: str) -> np.ndarray:
    import tensorstore as ts

    try:
        return np.asarray(ts.open(spec, open=True, read=True, context=context).result().read().result())
    except Exception as e:  # tensorstore raises its own error types for a missing or damaged array
        why = re.sub(r" \[tensorstore_spec=.*\]$", "", str(e).splitlines()[0])  # the spec we gave it: noise
        raise T5xCheckpointError(f"{name}: {item} cannot be read ({why})") from None


def _read_all(value: Any) -> Any:
    """`value` with every `_Unread` array in it read."""
    if isinstance(value, _Unread):
        return value.read()
    if isinstance(value, dict):
        return {k: _read_all(v) for k, v in value.items()}
    return value


def _train_state(tree: dict) -> dict:
    """The {'target': params, 'state': optimizer state} of a checkpoint's tree: T5X's msgpack
    `optimizer`, the early orbax `_optimizer` (a FlaxOptimTrainState saved whole), or
    orbax's `state/` item itself (TrainState.state_dict())."""
    for key in ("optimizer", "_optimizer"):
        if isinstance(tree.get(key), dict):
            return tree[key]
    return tree


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The whole checkpoint tree as T5X wrote it, every array read: `{'version', 'optimizer':
    {'target', 'state'}}` (msgpack), `{'target', 'state'}` (orbax's `state/`), or
    `{'_optimizer': {'target', 'state'}, ...}` (early orbax)."""
    return _read_all(_open(path)[1])


def read_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The model's parameters (the tree's `target`), flat: {"encoder/layers_0/...": array};
    the optimizer state is not read."""
    source, tree = _open(path)
    return _flat_params(tree, source)


def _flat_params(tree: dict, source: str) -> dict[str, np.ndarray]:
    """The parameters of a tree `_open` returned, flat, each array read once."""
    target = _train_state(tree).get("target")
    if not isinstance(target, dict) or not target:
        raise T5xCheckpointError(f"{source}: the checkpoint holds no parameters (its 'target' is empty or missing)")
    flat: dict[str, np.ndarray] = {}

    def walk(value: Any, name: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{name}/{k}" if name else str(k))
        else:
            flat[name] = np.asarray(_read_all(value))

    walk(target, "")
    return flat


# T5X's scalable_t5/network.py with scan_layers=True keeps each stack's layers as one module,
# `encoder/encoder/...` and `decoder/decoder/...`, each array with a layers axis at
# T5Config.param_scan_axis (1 unless set). Scanned or not, its attention kernels keep heads
# and head width apart ([embed, heads, kv]; out: [heads, kv, embed]) and each layer has its
# own relative-position table, where examples/t5/network.py joins them and shares one table.
_SCALABLE_ATTENTION_KERNEL = re.compile(r"(encoder|decoder)/layers_\d+/\w*attention/(query|key|value|out)/kernel")


def unscan_layers(params: dict[str, np.ndarray], source: str = "the checkpoint") -> dict[str, np.ndarray]:
    """`params` (flat, by T5X names) in examples/t5/network.py's names and layouts: a scanned
    stack's layers unstacked into `layers_<i>`, attention kernels joined, and scalable_t5's
    per-layer relative-position tables (`layers_<i>/relpos_bias/rel_embedding`) one table per
    stack when every table of each stack is the same, else kept per layer (in both stacks:
    `T5Config.relative_attention_per_layer` is one switch). Arrays are views, not copies;
    other checkpoints pass as they are."""
    out = dict(params)
    for stack in ("encoder", "decoder"):
        scanned = [k for k in params if k.startswith(f"{stack}/{stack}/")]
        if scanned:
            axis, count = _scan_axis(params, stack, source)
            for name in scanned:
                array = out.pop(name)
                if array.ndim <= axis or array.shape[axis] != count:
                    raise T5xCheckpointError(
                        f"{source}: {name} is {list(array.shape)}, not {count} layers on axis {axis} as "
                        f"{stack}/{stack}'s other arrays"
                    )
                for i in range(count):
                    out[f"{stack}/layers_{i}/{name[len(stack) * 2 + 2 :]}"] = array[(slice(None),) * axis + (i,)]
    layer_tables = {stack: _layer_tables(out, stack) for stack in ("encoder", "decoder")}
    if not any(_differ(out, tables) for tables in layer_tables.values()):
        for stack, tables in layer_tables.items():
            if tables:
                out[f"{stack}/relpos_bias/rel_embedding"] = out[tables[0]]
                for name in tables:
                    del out[name]
    for name, array in out.items():
        if array.ndim == 3 and _SCALABLE_ATTENTION_KERNEL.fullmatch(name):
            joined = (-1, array.shape[-1]) if name.endswith("/out/kernel") else (array.shape[0], -1)
            out[name] = array.reshape(joined)
    return out


def _layer_tables(params: dict[str, np.ndarray], stack: str) -> list[str]:
    """The names of `stack`'s per-layer relative-position tables in `params`, by layer."""
    table = re.compile(rf"{stack}/layers_(\d+)/relpos_bias/rel_embedding")
    return sorted((k for k in params if table.fullmatch(k)), key=lambda k: int(table.fullmatch(k)[1]))


def _differ(params: dict[str, np.ndarray], tables: list[str]) -> bool:
    return any(not np.array_equal(params[name], params[tables[0]]) for name in tables[1:])


def _scan_axis(params: dict[str, np.ndarray], stack: str, source: str) -> tuple[int, int]:
    """(the axis a scanned stack's layers lie on, their count), from its pre-MLP layer norm:
    [embed, layers] at scalable_t5's default param_scan_axis=1, [layers, embed] at 0."""
    norm, final = f"{stack}/{stack}/pre_mlp_layer_norm/scale", f"{stack}/{stack}_norm/scale"
    if norm not in params or final not in params or params[norm].ndim != 2:
        raise T5xCheckpointError(
            f"{source} has {stack}/{stack}/ but no 2-D {norm} and {final}: not a scanned T5X T5 "
            "(examples/scalable_t5/network.py)"
        )
    (embed,), shape = params[final].shape, params[norm].shape
    if shape[0] == embed:
        if shape[1] == embed:
            logging.info("%s: %s is %s; its layers are taken to lie on axis 1 (T5X's default)", source, norm, shape)
        return 1, shape[1]
    if shape[1] == embed:
        return 0, shape[0]
    raise T5xCheckpointError(f"{source}: {norm} is {list(shape)}, which has no axis of {final}'s width {embed}")


def config_from_shapes(params: dict[str, np.ndarray], source: str = "the checkpoint"):
    """The T5Config a T5X T5's arrays show (see the module docstring); a scanned checkpoint's
    layer counts are the length of its layers axis, and relative-position tables that differ
    across its layers make a `relative_attention_per_layer` config (`unscan_layers`)."""
    from dss_jax.model.config import T5Config

    params = unscan_layers(params, source)

    def shape(name: str) -> tuple[int, ...]:
        if name not in params:
            raise T5xCheckpointError(f"{source} has no {name}: not a T5X T5 (examples/t5/network.py) checkpoint")
        return tuple(params[name].shape)

    vocab_size, d_model = shape("token_embedder/embedding")
    per_layer = "encoder/relpos_bias/rel_embedding" not in params and bool(_layer_tables(params, "encoder"))
    num_heads, buckets = shape(f"encoder/{'layers_0/' if per_layer else ''}relpos_bias/rel_embedding")
    inner = shape("encoder/layers_0/attention/query/kernel")[1]
    gated = "encoder/layers_0/mlp/wi_0/kernel" in params
    d_ff = shape(f"encoder/layers_0/mlp/{'wi_0' if gated else 'wi'}/kernel")[1]

    def layers(stack: str) -> int:
        found = {int(m.group(1)) for k in params if (m := re.match(rf"{stack}/layers_(\d+)/", k))}
        return max(found) + 1 if found else 0

    if inner % num_heads:
        raise T5xCheckpointError(f"{source}: attention width {inner} does not divide over {num_heads} heads")
    return T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=inner // num_heads,
        d_ff=d_ff,
        num_heads=num_heads,
        num_encoder_layers=layers("encoder"),
        num_decoder_layers=layers("decoder"),
        relative_attention_num_buckets=buckets,
        relative_attention_per_layer=per_layer,
        feed_forward="gated-gelu" if gated else "relu",
        tie_word_embeddings="decoder/logits_dense/kernel" not in params,
    )


def _to_ours(name: str, array: np.ndarray, config) -> np.ndarray:
    """A T5X array in dss_jax's layout: attention kernels keep heads and head width apart
    (T5X stores them joined, heads outermost), relative-position tables are [buckets, heads]
    (T5X: [heads, buckets]); every other array is the same."""
    heads, d_kv = config.num_heads, config.d_kv
    leaf = name.split("/")
    if leaf[-1] == "rel_embedding":
        return array.T
    if len(leaf) >= 2 and leaf[-1] == "kernel" and leaf[-2] in ("query", "key", "value"):
        return array.reshape(array.shape[0], heads, d_kv)
    if len(leaf) >= 3 and leaf[-1] == "kernel" and leaf[-2] == "out" and "attention" in leaf[-3]:
        return array.reshape(heads, d_kv, array.shape[-1])
    return array


def import_checkpoint(path: str | os.PathLike, config=None, config_source: str = "the given config"):
    """(params as dss_jax's T5 takes them, their T5Config) of a T5X checkpoint. `config`: the
    model's config as the user's gin file gives it (`config_source` names it), since a T5X
    checkpoint records none; None: the config its arrays show (`config_from_shapes`, a gated
    MLP's activation taken to be GELU). Every array is checked against the config before
    anything is returned, naming the first that disagrees."""
    from flax import traverse_util

    from dss_jax.checkpoints import params as params_lib

    source, tree = _open(path)
    flat = unscan_layers(_flat_params(tree, source), source)  # each array read once: it may be large and remote
    if _train_state(tree).get("state"):
        logging.info("%s: the optimizer state is not imported (training starts a new one)", source)
    shown = config_from_shapes(flat, source)
    if config is None:
        config, config_source = shown, f"the config its arrays show ({shown})"
        if shown.is_gated:
            logging.info("%s: a gated MLP; its activation is taken to be GELU (T5 v1.1, mT5, Flan-T5)", source)
    # Our layout by the heads the arrays show; the shapes are then checked against `config`.
    ours = {name: _to_ours(name, array, shown) for name, array in flat.items()}
    shapes = {tuple(k.split("/")): (a.shape, a.dtype) for k, a in ours.items()}
    advice = "the gin file describes another model than the checkpoint: give the model file it was trained with"
    params_lib.check_params(shapes, config, config_source, source, **({} if config is shown else {"advice": advice}))
    return traverse_util.unflatten_dict(ours, sep="/"), config


# What T5X's examples/t5/network.py fixes that a dss_jax T5Config may set otherwise.
_T5X_FIXED = {"relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6}
# Adafactor's defaults in t5x/adafactor.py: a second moment is factored over the two
# largest dimensions when the smaller of them has at least this many entries.
_ADAFACTOR_MIN_DIM_SIZE_TO_FACTOR = 128


def check_exportable(config) -> None:
    """T5xCheckpointError unless T5X's T5 (examples/t5/network.py) computes what `config`
    does: a T5 with one relative-position table per stack, whose relative-position distance,
    layer-norm epsilon and output scaling are the ones T5X fixes (T5X scales the decoder
    output exactly when the lm head is tied)."""
    family = getattr(config, "family", None)
    if family != "t5":
        raise T5xCheckpointError(
            f"a {family} student has no T5X checkpoint layout here: only T5 students (examples/t5/network.py) export"
        )
    if config.relative_attention_per_layer:
        raise T5xCheckpointError(
            "T5Config.relative_attention_per_layer=True: T5X's examples/t5 network shares one relative-position "
            "table per stack, and writing scalable_t5's layout (a table per layer) is not built; export it to "
            "Hugging Face (UMT5) instead"
        )
    for field, fixed in _T5X_FIXED.items():
        if getattr(config, field) != fixed:
            raise T5xCheckpointError(
                f"T5Config.{field}={getattr(config, field)!r}: T5X's T5 fixes it at {fixed}, so T5X would compute "
                "another model from these weights"
            )
    if config.scales_decoder_output != config.tie_word_embeddings:
        raise T5xCheckpointError(
            f"T5Config.scale_decoder_outputs={config.scale_decoder_outputs!r} with tie_word_embeddings="
            f"{config.tie_word_embeddings}: T5X's T5 scales the decoder output exactly when the lm head is tied"
        )


def _to_t5x(name: str, array: np.ndarray) -> np.ndarray:
    """The inverse of `_to_ours`: attention kernels with heads and head width joined, and
    relative-position tables [heads, buckets]."""
    leaf = name.split("/")
    if leaf[-1] == "rel_embedding":
        return array.T
    if len(leaf) >= 2 and leaf[-1] == "kernel" and leaf[-2] in ("query", "key", "value"):
        return array.reshape(array.shape[0], -1)
    if len(leaf) >= 3 and leaf[-1] == "kernel" and leaf[-2] == "out" and "attention" in leaf[-3]:
        return array.reshape(-1, array.shape[-1])
    return array


def adafactor_initial_state(shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """A parameter's state as t5x's Adafactor (its defaults: factored, no momentum)
    initialises it: `v_row`/`v_col` zeros when the second moment is factored, else `v`
    zeros of the parameter's shape; the unused entries, and `m`, are zeros of shape (1,)."""
    state = {k: np.zeros((1,), np.float32) for k in ("m", "v", "v_col", "v_row")}
    if len(shape) >= 2:
        order = np.argsort(shape)
        smaller, larger = int(order[-2]), int(order[-1])
        if shape[smaller] >= _ADAFACTOR_MIN_DIM_SIZE_TO_FACTOR:
            state["v_row"] = np.zeros(np.delete(shape, larger), np.float32)
            state["v_col"] = np.zeros(np.delete(shape, smaller), np.float32)
            return state
    state["v"] = np.zeros(shape, np.float32)
    return state


def checkpoint_tree(params: dict, config, step: int, store: Callable[[str, np.ndarray], Any] | None = None) -> dict:
    """What T5X's Checkpointer.save writes for a model of these params at `step`, before
    serialization: `{'version': 3, 'optimizer': {'state': {'param_states', 'step'},
    'target': params}}`, keys sorted as T5X's state dicts are, params in T5X's layout and
    dtype (bf16 stays bf16), and a new Adafactor state (dss_jax's optimizer state is not
    T5X's: it is not carried over). `store(name, array)`, when given, gives what stands
    for each array T5X partitions (every parameter, and an unfactored second moment `v`),
    by its T5X name (`target/encoder/...`): e.g. the spec of where it was written."""
    check_exportable(config)
    store = store or (lambda name, array: array)

    def convert(tree: dict, fn, name: str = "") -> dict:
        out = {}
        for key in sorted(tree):
            value, child = tree[key], f"{name}/{key}" if name else str(key)
            out[str(key)] = convert(value, fn, child) if isinstance(value, dict) else fn(child, value)
        return out

    shapes = {}

    def parameter(name: str, array) -> Any:
        t5x_array = _to_t5x(name, np.asarray(array))
        shapes[name] = t5x_array.shape
        return store(f"target/{name}", t5x_array)

    def state(name: str, _) -> dict:
        initial = adafactor_initial_state(shapes[name])
        if initial["v"].shape != (1,):  # T5X partitions v as its parameter; the rest are whole
            initial["v"] = store(f"state/param_states/{name}/v", initial["v"])
        return initial

    target = convert(params, parameter)
    param_states = convert(params, state)
    return {
        "version": FORMAT_VERSION,
        "optimizer": {"state": {"param_states": param_states, "step": np.asarray(step, np.int32)}, "target": target},
    }


# T5X's Checkpointer writes each array it partitions with TensorStore: a gzip-compressed
# zarr array beside the msgpack file, named by its keys joined with "."
# (`target.encoder.layers_0.mlp.wi_0.kernel/`), in chunks of at most 64 MiB that divide
# its shape; the msgpack file holds the array's spec, its path relative to the file.
ZARR_CHUNK_BYTES = 64 << 20


def zarr_chunks(shape: tuple[int, ...], itemsize: int, limit: int = ZARR_CHUNK_BYTES) -> list[int]:
    """The chunk shape of an out-of-line array: each dimension a divisor of the array's,
    the largest dimension cut to its next smaller divisor (the first of equals) until a
    chunk holds at most `limit` bytes."""
    divisors = [[d for d in range(1, n + 1) if n % d == 0] or [1] for n in shape]
    while math.prod(ds[-1] for ds in divisors) * itemsize > limit:
        largest = max(range(len(divisors)), key=lambda i: divisors[i][-1])
        divisors[largest].pop()
    return [ds[-1] for ds in divisors]


def _write_out_of_line(directory: pathlib.Path, name: str, array: np.ndarray) -> dict:
    """Writes `array` as T5X does (see ZARR_CHUNK_BYTES) into `directory` and returns the
    spec that stands for it in the msgpack file."""
    import tensorstore as ts

    relative = name.replace("/", ".")
    metadata = {
        "compressor": {"id": "gzip"},
        "shape": list(array.shape),
        "chunks": zarr_chunks(array.shape, array.dtype.itemsize),
    }
    spec = {"driver": "zarr", "dtype": array.dtype.name, "kvstore": {"driver": "file", "path": relative}}
    spec["metadata"] = metadata
    written = ts.open({**spec, "kvstore": _kvstore(directory / relative)}, create=True).result()
    written.write(array).result()
    return ts.Spec(spec).to_json()


def export_checkpoint(
    params: dict, config, step: int, model_dir: str | os.PathLike, inline_arrays: bool = False
) -> pathlib.Path:
    """Writes `model_dir/checkpoint_<step>/` as T5X's Checkpointer.save does, the msgpack
    file `checkpoint` last, and returns it: each array T5X partitions as a zarr array beside
    the file (an array at a time: memory for one), or with `inline_arrays` every array in
    the file, as T5X's test_t5_tiny.checkpoint_0 holds them. `import_checkpoint` reads
    either back exactly. The caller checks the output first."""
    from flax import serialization

    check_exportable(config)  # before anything is written
    directory = files.path(model_dir) / f"checkpoint_{step}"
    files.makedirs(directory)
    store = None if inline_arrays else functools.partial(_write_out_of_line, directory)
    # T5X's serialization: flax's msgpack of the state dict (which our tree of str keys
    # already is; to_bytes would turn the specs' lists into {'0': ...} dicts).
    data = serialization.msgpack_serialize(checkpoint_tree(params, config, step, store), in_place=True)
    files.atomic_write(directory / CHECKPOINT_FILE, data)
    return directory


def t5x_network_bindings(config) -> list[str]:
    """The `network.T5Config` bindings of T5X's examples/t5 gin files that give `config`'s
    shape, one per line (a T5X checkpoint does not record them)."""
    # T5X's "gelu" is flax's tanh approximation: dss_jax's "gated-gelu", not its plain "gelu".
    activations = {"relu": "('relu',)", "gated-gelu": "('gelu', 'linear')", "gated-silu": "('silu', 'linear')"}
    bindings = {
        "vocab_size": config.vocab_size,
        "emb_dim": config.d_model,
        "num_heads": config.num_heads,
        "num_encoder_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "head_dim": config.d_kv,
        "mlp_dim": config.d_ff,
        "mlp_activations": activations.get(config.feed_forward, f"<T5X has no {config.feed_forward!r}>"),
        "logits_via_embedding": config.tie_word_embeddings,
    }
    return [f"network.T5Config.{k} = {v}" for k, v in bindings.items()]
