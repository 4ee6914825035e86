"""Hugging Face T5 and UMT5 checkpoints <-> our parameter tree (numpy; torch only for *.bin files).

API
---
    read_hf_weights(hf_dir) -> dict[str, np.ndarray]
        model.safetensors, sharded model-0000x-of-0000n.safetensors (+ .index.json), or
        pytorch_model.bin[.index.json] (needs torch). bfloat16/float16 tensors are supported.
    hf_to_params(weights, config) -> params                  # nested dict of np.float32 arrays
    params_to_hf(params, config) -> dict[str, np.ndarray]    # HF names, float32
    import_hf_checkpoint(hf_dir) -> (params, T5Config, vocab_path_or_None)
    export_hf_checkpoint(params, config, out_dir, vocab_path=None, overwrite=False) -> out_dir
        writes config.json, generation_config.json, model.safetensors, spiece.model
        (when given); `from_pretrained_call(config, out_dir)` is how to load it.
    param_shapes(config) -> {our param path: (shape, dims)}  # what `config` implies, no tracing
    dims_shape, dims_text, shapes_by_mapping, set_path, get_path   # shared by every family's mapping

Directories and files may be local or on an object store (gs://...): a remote weight file
is downloaded to a local temporary file first (memory maps and torch.load need one), and
messages name the URL.

Nothing is trusted: a weight file that is truncated or corrupt, an index naming a missing
shard, a config.json that is not a T5 config, or a tensor whose name, shape or dtype does
not fit config.json raises `HFCheckpointError` (a `cli.UserError`) naming the file and the
tensor, before anything is converted. The export is staged beside `out_dir` and renamed
into place, so a crash leaves no half-written model (see `checkpoints.staged_output_dir`).

Untied models (T5 v1.1, Flan-T5) and transformers 5: its T5Config always ties
the lm head to the embedding, whatever config.json says (`tie_word_embeddings: false` only
turns off the output rescale), so `from_pretrained(out_dir)` warns that the two differ and
leaves them untied. `from_pretrained(out_dir, tie_word_embeddings=False)` sets the switch
after the config is built and loads without a warning, but then ties nothing: the export
therefore also writes the encoder's and decoder's copies of the input embedding, which a
plain load ties to `shared` as before. (transformers 4 reads either way.) On import those
copies must equal `shared.weight`: T5 has one input embedding.

HF stores linear weights as [out, in]; we store kernels as [in, ...out] with heads split
out: q/k/v [embed, heads, kv], o [heads, kv, embed], wi [embed, mlp], wo [mlp, embed],
lm_head [embed, vocab]. The relative attention bias lives in block 0 of each HF stack and
at the stack level here (`relpos_bias`); both are shared by every layer of the stack.

UMT5 (model_type "umt5") is T5 with a relative attention bias in every block's self-attention
(`relative_attention_per_layer`, each `layers_<i>/relpos_bias` here), computed as T5's:
unscaled logits, bidirectional buckets in the encoder, causal ones in the decoder, none in
cross-attention, and the same output rescale; T5X's scalable_t5 computes the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import tempfile
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from dss_jax import files
from dss_jax.cli import UserError
from dss_jax.model.config import T5Config

VOCAB_FILE = "spiece.model"
_SAFETENSORS = "model.safetensors"
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_TORCH_BIN = "pytorch_model.bin"
_TORCH_BIN_INDEX = "pytorch_model.bin.index.json"

_EMBEDDING_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
# HF keys that carry nothing of their own: tied copies of the embedding, and the cross-
# attention relative bias that some old checkpoints hold but no T5 ever uses.
_IGNORED_KEYS = re.compile(
    r"^(encoder\.embed_tokens\.weight|decoder\.embed_tokens\.weight|"
    r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight)$"
)


class HFCheckpointError(UserError, ValueError):
    """A Hugging Face checkpoint directory that cannot be imported as it is; the message
    names the file (and tensor) and what to do."""


# ----- reading weight files -----------------------------------------------------------------
def _safetensors_dtype(name: str) -> np.dtype:
    import ml_dtypes

    table = {
        "F64": np.float64,
        "F32": np.float32,
        "F16": np.float16,
        "BF16": ml_dtypes.bfloat16,
        "I64": np.int64,
        "I32": np.int32,
        "I16": np.int16,
        "I8": np.int8,
        "U8": np.uint8,
        "BOOL": np.bool_,
    }
    if name not in table:
        raise ValueError(f"unsupported safetensors dtype {name!r} (dss_jax reads {sorted(table)})")
    return np.dtype(table[name])


def _corrupt(path: pathlib.Path, what: str) -> HFCheckpointError:
    return HFCheckpointError(
        f"{path}: {what}: the file is truncated or not a safetensors file (copy or download it again)"
    )


@contextlib.contextmanager
def _local_file(path) -> Iterator[pathlib.Path]:
    """`path` itself when local; an object-store file downloaded to a local temporary file
    (memory maps and torch.load need one), deleted when the block ends. A memory map made
    in the block outlives the deletion (the data stays until the arrays are freed)."""
    if not files.is_remote(path):
        yield pathlib.Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="dss_hf_") as tmp:
        local = pathlib.Path(tmp) / files.path(path).name
        try:
            files.copy(path, local)
        except OSError as e:
            raise HFCheckpointError(f"{path}: cannot read it: {e.strerror or e}") from None
        yield local


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a .safetensors file (local or gs://) into numpy (memory-mapped; bfloat16 via
    ml_dtypes; an object-store file is downloaded first).

    The format: u64 little-endian header size, a JSON header mapping each name to dtype,
    shape and [begin, end) byte offsets into the data block that follows. Every size and
    offset is checked against the file's length before anything is read, so a damaged file
    is an `HFCheckpointError` naming it, not a reshape error or a 10**15-byte read.
    """
    with _local_file(path) as local:
        return _read_safetensors(local, files.path(path))


def _read_safetensors(local: pathlib.Path, path) -> dict[str, np.ndarray]:
    """`read_safetensors` of the local file `local`; messages name `path`, what the user gave."""
    try:
        size = local.stat().st_size
        with open(local, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _corrupt(path, f"{size} bytes, fewer than the 8-byte header size")
            header_size = int.from_bytes(head, "little")
            if header_size > size - 8:
                raise _corrupt(path, f"the header size {header_size} exceeds the file's {size} bytes")
            raw = f.read(header_size)
    except OSError as e:
        raise HFCheckpointError(f"{path}: cannot read it: {e.strerror or e}") from None
    try:
        header = json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise _corrupt(path, "the header is not JSON") from None
    if not isinstance(header, dict):
        raise _corrupt(path, f"the header is a JSON {type(header).__name__}, not an object")
    data_size = size - 8 - header_size
    # np.memmap cannot map zero bytes; a file of only empty tensors has no data block.
    data = np.memmap(local, dtype=np.uint8, mode="r", offset=8 + header_size) if data_size else np.zeros(0, np.uint8)
    return {name: _tensor(path, name, info, data) for name, info in header.items() if name != "__metadata__"}


def _tensor(path: pathlib.Path, name: str, info: Any, data: np.ndarray) -> np.ndarray:
    """One tensor of a safetensors file, its header entry checked against the data block."""
    try:
        shape = tuple(int(n) for n in info["shape"])
        begin, end = (int(n) for n in info["data_offsets"])
        dtype_name = info["dtype"]
    except (KeyError, TypeError, ValueError):
        raise _corrupt(path, f"the header entry of {name!r} is malformed") from None
    try:
        dtype = _safetensors_dtype(dtype_name)
    except ValueError as e:
        raise HFCheckpointError(f"{path}: tensor {name}: {e}") from None
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if min(shape, default=0) < 0 or not 0 <= begin <= end <= data.size or end - begin != nbytes:
        raise _corrupt(
            path,
            f"tensor {name} ({dtype_name} {list(shape)}, {nbytes} bytes) is said to lie "
            f"at bytes [{begin}, {end}) of a {data.size}-byte data block",
        )
    return data[begin:end].view(dtype).reshape(shape)


def _read_torch_bin(path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"{path} is a PyTorch checkpoint: install torch (the `torch` extra) to read it, or "
            "convert it to model.safetensors"
        ) from None
    try:
        with _local_file(path) as local:
            state = torch.load(local, map_location="cpu", weights_only=True)
    except HFCheckpointError:
        raise
    except Exception as e:  # torch reports a damaged pickle in many types
        raise HFCheckpointError(
            f"{path}: torch cannot load it ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}): the file is truncated or "
            "not a state dict saved with torch.save"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HFCheckpointError(
            f"{path}: not a state dict of tensors (a whole pickled model?); save "
            "model.state_dict() or model.save_pretrained()"
        )
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def _read_json(path: pathlib.Path, what: str) -> dict:
    """A JSON object from `path`, or HFCheckpointError naming it."""
    return files.read_json_object(path, HFCheckpointError, what)


def _read_sharded(index_path: pathlib.Path, reader) -> dict[str, np.ndarray]:
    index = _read_json(index_path, "an index of sharded weights maps each tensor to its shard file")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise HFCheckpointError(f"{index_path}: 'weight_map' must map each tensor name to a shard file name")
    hf_dir = index_path.parent
    weights, found_in = {}, {}
    for shard in sorted(set(weight_map.values())):
        shard_path = hf_dir / shard
        if not shard_path.is_file():
            raise HFCheckpointError(
                f"{index_path} names the shard {shard_path}, which is missing: copy every shard of the checkpoint"
            )
        for name, value in reader(shard_path).items():
            weights[name], found_in[name] = value, shard
    for name, shard in weight_map.items():
        if found_in.get(name) != shard:
            where = f"is in {found_in[name]}" if name in found_in else "is in no shard"
            raise HFCheckpointError(
                f"{index_path} puts {name} in {shard}, but it {where}: the index and "
                "the shards are from different saves"
            )
    return weights


def read_hf_weights(hf_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    hf_dir = files.path(hf_dir)
    for index_name, reader in ((_SAFETENSORS_INDEX, read_safetensors), (_TORCH_BIN_INDEX, _read_torch_bin)):
        index_path = hf_dir / index_name
        if index_path.is_file():
            return _read_sharded(index_path, reader)
    if (hf_dir / _SAFETENSORS).is_file():
        return read_safetensors(hf_dir / _SAFETENSORS)
    if (hf_dir / _TORCH_BIN).is_file():
        return _read_torch_bin(hf_dir / _TORCH_BIN)
    raise MissingHFFileError(
        f"no weights in {hf_dir}: expected {_SAFETENSORS}, {_SAFETENSORS_INDEX} (sharded), "
        f"{_TORCH_BIN} or {_TORCH_BIN_INDEX}"
    )


# ----- name and layout mapping --------------------------------------------------------------
def _mapping(config: T5Config) -> list[tuple[str, tuple[str, ...], str]]:
    """(HF name, our param path, layout kind) for every weight of `config`."""
    m = [("shared.weight", ("token_embedder", "embedding"), "copy")]
    ff_names = ["wi_0", "wi_1", "wo"] if config.is_gated else ["wi", "wo"]

    def attention(hf_prefix, path):
        for hf_name, ours in (("q", "query"), ("k", "key"), ("v", "value")):
            m.append((f"{hf_prefix}.{hf_name}.weight", path + (ours, "kernel"), "qkv"))
        m.append((f"{hf_prefix}.o.weight", path + ("out", "kernel"), "out"))

    def mlp(hf_prefix, path):
        for name in ff_names:
            m.append((f"{hf_prefix}.DenseReluDense.{name}.weight", path + ("mlp", name, "kernel"), "linear"))
        m.append((f"{hf_prefix}.layer_norm.weight", path + ("pre_mlp_layer_norm", "scale"), "copy"))

    for stack, num_layers in (("encoder", config.num_encoder_layers), ("decoder", config.num_decoder_layers)):
        self_name = "attention" if stack == "encoder" else "self_attention"
        self_norm = "pre_attention_layer_norm" if stack == "encoder" else "pre_self_attention_layer_norm"
        relpos = "SelfAttention.relative_attention_bias.weight"
        if not config.relative_attention_per_layer:  # T5: block 0's table, shared by the stack
            m.append((f"{stack}.block.0.layer.0.{relpos}", (stack, "relpos_bias", "rel_embedding"), "copy"))
        for i in range(num_layers):
            block = f"{stack}.block.{i}.layer"
            path = (stack, f"layers_{i}")
            if config.relative_attention_per_layer:  # UMT5: every block's own
                m.append((f"{block}.0.{relpos}", path + ("relpos_bias", "rel_embedding"), "copy"))
            attention(f"{block}.0.SelfAttention", path + (self_name,))
            m.append((f"{block}.0.layer_norm.weight", path + (self_norm, "scale"), "copy"))
            if stack == "decoder":
                attention(f"{block}.1.EncDecAttention", path + ("encoder_decoder_attention",))
                m.append((f"{block}.1.layer_norm.weight", path + ("pre_cross_attention_layer_norm", "scale"), "copy"))
                mlp(f"{block}.2", path)
            else:
                mlp(f"{block}.1", path)
        norm = "encoder_norm" if stack == "encoder" else "decoder_norm"
        m.append((f"{stack}.final_layer_norm.weight", (stack, norm, "scale"), "copy"))
    if not config.tie_word_embeddings:
        m.append(("lm_head.weight", ("decoder", "logits_dense", "kernel"), "linear"))
    return m


def _hf_dims(name: str, kind: str) -> tuple[str, ...]:
    """The config fields behind each dimension of the HF tensor `name` (`a*b`: a product)."""
    if name in ("shared.weight", "lm_head.weight"):
        return ("vocab_size", "d_model")
    if name.endswith("relative_attention_bias.weight"):
        return ("relative_attention_num_buckets", "num_heads")
    if kind == "copy":  # layer norms
        return ("d_model",)
    if kind == "qkv":
        return ("num_heads*d_kv", "d_model")
    if kind == "out":
        return ("d_model", "num_heads*d_kv")
    return ("d_model", "d_ff") if name.endswith(".wo.weight") else ("d_ff", "d_model")


def _our_dims(kind: str, hf_dims: tuple[str, ...]) -> tuple[str, ...]:
    """The dimensions of our param for an HF tensor with `hf_dims` (see `_to_ours`)."""
    if kind == "copy":
        return hf_dims
    if kind == "linear":
        return hf_dims[::-1]
    if kind == "qkv":
        return (hf_dims[1], "num_heads", "d_kv")
    if kind == "out":
        return ("num_heads", "d_kv", hf_dims[0])
    raise AssertionError(kind)


def dims_shape(config: Any, dims: tuple[str, ...]) -> tuple[int, ...]:
    """The shape that `dims` (config field names; `a*b` is a product) have under `config`."""
    return tuple(int(np.prod([getattr(config, f) for f in d.split("*")])) for d in dims)


def shapes_by_mapping(
    mapping, config: Any, hf_dims, our_dims
) -> dict[tuple[str, ...], tuple[tuple[int, ...], tuple[str, ...]]]:
    """{our param path: (shape, the config fields behind each dimension)} of a family's
    (HF name, our path, kind) mapping, given its `hf_dims(name, kind)` and `our_dims(kind, hf_dims)`."""
    out = {}
    for name, path, kind in mapping:
        dims = our_dims(kind, hf_dims(name, kind))
        out[path] = (dims_shape(config, dims), dims)
    return out


def param_shapes(config: T5Config) -> dict[tuple[str, ...], tuple[tuple[int, ...], tuple[str, ...]]]:
    """{our param path: (shape, the config fields behind each dimension)} for `config`,
    without tracing the model (tests pin it to the flax model's own shapes)."""
    return shapes_by_mapping(_mapping(config), config, _hf_dims, _our_dims)


_FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")


def dims_text(config: Any, dims: tuple[str, ...]) -> str:
    """ "d_model=512, num_heads=8": the config fields behind `dims` and their values."""
    return ", ".join(f"{d}={dims_shape(config, (d,))[0]}" for d in dict.fromkeys(dims))


def check_hf_weights(
    weights: Mapping[str, np.ndarray], config: T5Config, source: str = "checkpoint", config_source: str = "the config"
) -> None:
    """HFCheckpointError naming the first tensor that is missing, unexpected, or whose
    shape or dtype does not fit `config` (read from `config_source`); run before converting."""
    mapping = _mapping(config)
    depth = f"num_layers={config.num_encoder_layers}, num_decoder_layers={config.num_decoder_layers}"
    missing = [name for name, _, _ in mapping if name not in weights]
    if missing:
        raise HFCheckpointError(
            f"{source}: missing weights {missing[:4]}{' ...' if len(missing) > 4 else ''} "
            f"({len(missing)} of {len(mapping)}) that {config_source} ({depth}) calls for: the "
            "download is incomplete, or config.json belongs to another model"
        )
    used = {name for name, _, _ in mapping}
    unexpected = sorted(k for k in weights if k not in used and not _IGNORED_KEYS.match(k))
    if unexpected:
        raise HFCheckpointError(
            f"{source}: unexpected weights {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''} "
            f"that {config_source} ({depth}) has no place for: config.json belongs to another model, "
            f"or this is not a {config.hf_architecture}ForConditionalGeneration checkpoint"
        )
    bad = []
    for name, _, kind in mapping:
        w, dims = weights[name], _hf_dims(name, kind)
        want = dims_shape(config, dims)
        if tuple(w.shape) != want:
            bad.append(
                f"{name} has shape {list(w.shape)}, but {config_source} implies {list(want)} "
                f"({dims_text(config, dims)}): use the config.json saved with these weights"
            )
        elif np.dtype(w.dtype).name not in _FLOAT_NAMES:
            bad.append(
                f"{name} has dtype {np.dtype(w.dtype).name}, but T5 weights are floating point "
                f"({', '.join(_FLOAT_NAMES)}): not a T5 checkpoint, or a damaged one"
            )
    if bad:
        more = f" ({len(bad) - 1} more tensors disagree too)" if len(bad) > 1 else ""
        raise HFCheckpointError(f"{source}: {bad[0]}{more}")


def _check_embedding_copies(weights: Mapping[str, np.ndarray], source: str) -> None:
    """HFCheckpointError if the encoder's or decoder's input embedding is not `shared`'s copy:
    dss_jax's T5 has one, and ignoring a separately trained one would change the model."""
    shared = np.asarray(weights["shared.weight"])
    for name in _EMBEDDING_COPIES:
        if name in weights and not np.array_equal(np.asarray(weights[name]), shared):
            raise HFCheckpointError(
                f"{source}: {name} differs from shared.weight, but T5 has one input embedding (a model loaded "
                "with tie_word_embeddings=False and fine-tuned?): set model.encoder and model.decoder's input "
                "embeddings to model.shared before save_pretrained, or copy the one to keep into shared.weight"
            )


def _to_ours(w: np.ndarray, kind: str, config: T5Config) -> np.ndarray:
    h, k = config.num_heads, config.d_kv
    if kind == "copy":
        return w
    if kind == "linear":  # [out, in] -> [in, out]
        return w.T
    if kind == "qkv":  # [heads*kv, embed] -> [embed, heads, kv]
        return w.T.reshape(w.shape[1], h, k)
    if kind == "out":  # [embed, heads*kv] -> [heads, kv, embed]
        return w.T.reshape(h, k, w.shape[0])
    raise AssertionError(kind)


def _to_hf(p: np.ndarray, kind: str) -> np.ndarray:
    if kind == "copy":
        return p
    if kind == "linear":
        return p.T
    if kind == "qkv":  # [embed, heads, kv] -> [heads*kv, embed]
        return p.reshape(p.shape[0], -1).T
    if kind == "out":  # [heads, kv, embed] -> [embed, heads*kv]
        return p.reshape(-1, p.shape[-1]).T
    raise AssertionError(kind)


def set_path(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def get_path(tree: Mapping, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def resolve_tied(weights: Mapping[str, np.ndarray], config: T5Config) -> T5Config:
    """Decides from the weights whether the lm head is untied (transformers 5 always writes
    `tie_word_embeddings: true`, so the config alone cannot tell)."""
    lm_head = weights.get("lm_head.weight")
    if lm_head is None:
        if not config.tie_word_embeddings:
            # A v1.1/Flan config whose lm head was saved tied (transformers 5 does this for a
            # freshly initialised model): the head is the embedding, without the rescale.
            return config.replace(tie_word_embeddings=True, scale_decoder_outputs=config.scales_decoder_output)
        return config
    shared = weights.get("shared.weight")
    if (
        config.tie_word_embeddings
        and shared is not None
        and not np.array_equal(np.asarray(lm_head), np.asarray(shared))
    ):
        return config.replace(tie_word_embeddings=False, scale_decoder_outputs=config.scales_decoder_output)
    return config


def hf_to_params(
    weights: Mapping[str, np.ndarray], config: T5Config, source: str = "checkpoint", config_source: str = "the config"
) -> dict:
    weights = dict(weights)
    if "shared.weight" not in weights and "encoder.embed_tokens.weight" in weights:
        weights["shared.weight"] = weights["encoder.embed_tokens.weight"]
    check_hf_weights(weights, config, source, config_source)
    _check_embedding_copies(weights, source)
    params: dict = {}
    dtype = config.params_dtype
    for name, path, kind in _mapping(config):
        w = np.asarray(weights[name]).astype(np.float32)
        set_path(params, path, np.ascontiguousarray(_to_ours(w, kind, config).astype(dtype)))
    return params


def params_to_hf(params: Mapping, config: T5Config) -> dict[str, np.ndarray]:
    out = {}
    for name, path, kind in _mapping(config):
        try:
            p = np.asarray(get_path(params, path), dtype=np.float32)
        except KeyError:
            raise ValueError(f"params lack {'/'.join(path)} (needed for {name})") from None
        out[name] = np.ascontiguousarray(_to_hf(p, kind))
    return out


# ----- directories --------------------------------------------------------------------------
# What a Hugging Face T5 directory holds: `export_hf_checkpoint(overwrite=True)` replaces a
# directory of only these (an earlier export, a hub download) and refuses anything else.
HF_DIR_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    _SAFETENSORS_INDEX,
    _TORCH_BIN,
    "pytorch_model-*-of-*.bin",
    _TORCH_BIN_INDEX,
    VOCAB_FILE,
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "README.md",  # the model card
)


class MissingHFFileError(UserError, FileNotFoundError):
    """The HF directory, its config.json or its weights are missing; the message names the path."""


def _read_config(config_path: pathlib.Path) -> T5Config:
    hf_config = _read_json(config_path, "a Hugging Face T5 or UMT5 config.json is a JSON object")
    try:
        return T5Config.from_hf_config(hf_config)
    except (ValueError, TypeError) as e:
        raise HFCheckpointError(f"{config_path}: not a usable T5 config: {e}") from None


def import_hf_checkpoint(hf_dir: str | os.PathLike):
    """-> (params, T5Config, path of spiece.model or None); `hf_dir` local or gs://."""
    hf_dir = files.path(hf_dir)
    if not hf_dir.is_dir():
        raise MissingHFFileError(f"HF checkpoint directory {hf_dir} does not exist")
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise MissingHFFileError(
            f"{config_path} is missing: a Hugging Face T5 checkpoint directory holds config.json and the weights"
        )
    config = _read_config(config_path)
    weights = read_hf_weights(hf_dir)
    config = resolve_tied(weights, config)
    params = hf_to_params(weights, config, source=str(hf_dir), config_source=str(config_path))
    vocab = hf_dir / VOCAB_FILE
    return params, config, (str(vocab) if vocab.is_file() else None)


def export_hf_checkpoint(
    params: Mapping,
    config: T5Config,
    out_dir: str | os.PathLike,
    vocab_path: Optional[str | os.PathLike] = None,
    overwrite: bool = False,
    generation: Optional[Mapping[str, Any]] = None,
    extra_files: Optional[Mapping[str, bytes]] = None,
) -> pathlib.Path:
    """Writes the HF directory `out_dir`: a new or empty one, or with `overwrite` one that
    holds only Hugging Face model files (`HF_DIR_FILES`), replaced as a whole. A directory
    holding a run or a checkpoint is refused either way (see `checkpoints.staged_output_dir`).
    `generation` adds to generation_config.json; `extra_files` ({name: bytes}) go beside."""
    from safetensors.numpy import save_file

    from dss_jax import checkpoints

    hf_weights = params_to_hf(params, config)  # a params tree that does not fit fails before any write
    if not config.tie_word_embeddings:
        # For `from_pretrained(out_dir, tie_word_embeddings=False)` (see the module docstring),
        # which would otherwise initialise these two at random.
        hf_weights.update({name: hf_weights["shared.weight"] for name in _EMBEDDING_COPIES})
    if vocab_path is not None and not files.path(vocab_path).is_file():
        raise MissingHFFileError(f"vocabulary {vocab_path} does not exist")
    with checkpoints.staged_output_dir(
        out_dir, overwrite=overwrite, replaceable=HF_DIR_FILES, what="a Hugging Face model"
    ) as staging:
        save_file(hf_weights, str(staging / _SAFETENSORS), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config.to_hf_config(), indent=2, sort_keys=True))
        ids = {
            "decoder_start_token_id": config.decoder_start_token_id,
            "eos_token_id": config.eos_token_id,
            "pad_token_id": config.pad_token_id,
        }
        (staging / "generation_config.json").write_text(json.dumps({**ids, **(generation or {})}, indent=2))
        for name, data in (extra_files or {}).items():
            (staging / name).write_bytes(data)
        if vocab_path is not None:
            files.copy(vocab_path, staging / VOCAB_FILE)
    return files.path(out_dir)


def from_pretrained_call(config: T5Config, hf_dir: str | os.PathLike) -> str:
    """The line that loads an export of `config` into transformers (4.x and 5.x) without a
    warning: an untied model needs `tie_word_embeddings=False` under transformers 5."""
    untie = "" if config.tie_word_embeddings else ", tie_word_embeddings=False"
    model = f"{config.hf_architecture}ForConditionalGeneration"
    return f"transformers.{model}.from_pretrained({str(hf_dir)!r}{untie})"
