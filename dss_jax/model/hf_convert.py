"""Hugging Face T5 checkpoints <-> our parameter tree (numpy; torch only for *.bin files).

API
---
    read_hf_weights(hf_dir) -> dict[str, np.ndarray]
        model.safetensors, sharded model-0000x-of-0000n.safetensors (+ .index.json), or
        pytorch_model.bin[.index.json] (needs torch). bfloat16/float16 tensors are supported.
    hf_to_params(weights, config) -> params                  # nested dict of np.float32 arrays
    params_to_hf(params, config) -> dict[str, np.ndarray]    # HF names, float32
    import_hf_checkpoint(hf_dir) -> (params, T5Config, vocab_path_or_None)
    export_hf_checkpoint(params, config, out_dir, vocab_path=None) -> out_dir
        writes config.json, generation_config.json, model.safetensors, spiece.model
        (when given); `transformers.T5ForConditionalGeneration.from_pretrained(out_dir)` loads it.

HF stores linear weights as [out, in]; we store kernels as [in, ...out] with heads split
out: q/k/v [embed, heads, kv], o [heads, kv, embed], wi [embed, mlp], wo [mlp, embed],
lm_head [embed, vocab]. The relative attention bias lives in block 0 of each HF stack and
at the stack level here (`relpos_bias`); both are shared by every layer of the stack.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
from typing import Any, Mapping, Optional

import numpy as np

from dss_jax.model.config import T5Config

VOCAB_FILE = "spiece.model"
_SAFETENSORS = "model.safetensors"
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_TORCH_BIN = "pytorch_model.bin"
_TORCH_BIN_INDEX = "pytorch_model.bin.index.json"

# HF keys that carry nothing of their own: tied copies of the embedding, and the cross-
# attention relative bias that some old checkpoints hold but no T5 ever uses.
_IGNORED_KEYS = re.compile(
    r"^(encoder\.embed_tokens\.weight|decoder\.embed_tokens\.weight|"
    r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight)$"
)


# ----- reading weight files -----------------------------------------------------------------
def _safetensors_dtype(name: str) -> np.dtype:
    import ml_dtypes

    table = {
        "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
        "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
        "BOOL": np.bool_,
    }
    if name not in table:
        raise ValueError(f"unsupported safetensors dtype {name!r}")
    return np.dtype(table[name])


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a .safetensors file into numpy (memory-mapped; bfloat16 via ml_dtypes).

    The format: u64 little-endian header size, a JSON header mapping each name to dtype,
    shape and [begin, end) byte offsets into the data block that follows.
    """
    path = pathlib.Path(path)
    with open(path, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_size)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype = _safetensors_dtype(info["dtype"])
        out[name] = data[begin:end].view(dtype).reshape(info["shape"])
    return out


def _read_torch_bin(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"{path} is a PyTorch checkpoint: install torch (the `torch` extra) to read it, or "
            "convert it to model.safetensors") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def read_hf_weights(hf_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    hf_dir = pathlib.Path(hf_dir)
    for index_name, reader in ((_SAFETENSORS_INDEX, read_safetensors),
                               (_TORCH_BIN_INDEX, _read_torch_bin)):
        index_path = hf_dir / index_name
        if index_path.is_file():
            weight_map = json.loads(index_path.read_text())["weight_map"]
            weights = {}
            for shard in sorted(set(weight_map.values())):
                shard_path = hf_dir / shard
                if not shard_path.is_file():
                    raise FileNotFoundError(f"{index_path} names the shard {shard_path}, which is missing")
                weights.update(reader(shard_path))
            return weights
    if (hf_dir / _SAFETENSORS).is_file():
        return read_safetensors(hf_dir / _SAFETENSORS)
    if (hf_dir / _TORCH_BIN).is_file():
        return _read_torch_bin(hf_dir / _TORCH_BIN)
    raise FileNotFoundError(
        f"no weights in {hf_dir}: expected {_SAFETENSORS}, {_SAFETENSORS_INDEX} (sharded), "
        f"{_TORCH_BIN} or {_TORCH_BIN_INDEX}")


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
            m.append((f"{hf_prefix}.DenseReluDense.{name}.weight", path + ("mlp", name, "kernel"),
                      "linear"))
        m.append((f"{hf_prefix}.layer_norm.weight", path + ("pre_mlp_layer_norm", "scale"), "copy"))

    for stack, num_layers in (("encoder", config.num_encoder_layers),
                              ("decoder", config.num_decoder_layers)):
        self_name = "attention" if stack == "encoder" else "self_attention"
        self_norm = "pre_attention_layer_norm" if stack == "encoder" else "pre_self_attention_layer_norm"
        m.append((f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                  (stack, "relpos_bias", "rel_embedding"), "copy"))
        for i in range(num_layers):
            block = f"{stack}.block.{i}.layer"
            path = (stack, f"layers_{i}")
            attention(f"{block}.0.SelfAttention", path + (self_name,))
            m.append((f"{block}.0.layer_norm.weight", path + (self_norm, "scale"), "copy"))
            if stack == "decoder":
                attention(f"{block}.1.EncDecAttention", path + ("encoder_decoder_attention",))
                m.append((f"{block}.1.layer_norm.weight",
                          path + ("pre_cross_attention_layer_norm", "scale"), "copy"))
                mlp(f"{block}.2", path)
            else:
                mlp(f"{block}.1", path)
        norm = "encoder_norm" if stack == "encoder" else "decoder_norm"
        m.append((f"{stack}.final_layer_norm.weight", (stack, norm, "scale"), "copy"))
    if not config.tie_word_embeddings:
        m.append(("lm_head.weight", ("decoder", "logits_dense", "kernel"), "linear"))
    return m


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


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
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
            return config.replace(tie_word_embeddings=True,
                                  scale_decoder_outputs=config.scales_decoder_output)
        return config
    shared = weights.get("shared.weight")
    if config.tie_word_embeddings and shared is not None and not np.array_equal(
            np.asarray(lm_head), np.asarray(shared)):
        return config.replace(tie_word_embeddings=False,
                              scale_decoder_outputs=config.scales_decoder_output)
    return config


def hf_to_params(weights: Mapping[str, np.ndarray], config: T5Config,
                 source: str = "checkpoint") -> dict:
    weights = dict(weights)
    if "shared.weight" not in weights and "encoder.embed_tokens.weight" in weights:
        weights["shared.weight"] = weights["encoder.embed_tokens.weight"]
    mapping = _mapping(config)
    missing = [name for name, _, _ in mapping if name not in weights]
    if missing:
        raise ValueError(f"{source}: missing weights {missing[:8]}{' ...' if len(missing) > 8 else ''} "
                         f"for the config {config}")
    used = {name for name, _, _ in mapping}
    unexpected = sorted(k for k in weights if k not in used and not _IGNORED_KEYS.match(k))
    if unexpected:
        raise ValueError(f"{source}: unexpected weights {unexpected[:8]} (not a T5ForConditionalGeneration "
                         "checkpoint of this config?)")
    params: dict = {}
    dtype = config.params_dtype
    for name, path, kind in mapping:
        w = np.asarray(weights[name]).astype(np.float32)
        _set(params, path, np.ascontiguousarray(_to_ours(w, kind, config).astype(dtype)))
    return params


def params_to_hf(params: Mapping, config: T5Config) -> dict[str, np.ndarray]:
    out = {}
    for name, path, kind in _mapping(config):
        try:
            p = np.asarray(_get(params, path), dtype=np.float32)
        except KeyError:
            raise ValueError(f"params lack {'/'.join(path)} (needed for {name})") from None
        out[name] = np.ascontiguousarray(_to_hf(p, kind))
    return out


# ----- directories --------------------------------------------------------------------------
def import_hf_checkpoint(hf_dir: str | os.PathLike):
    """-> (params, T5Config, path of spiece.model or None)."""
    hf_dir = pathlib.Path(hf_dir)
    if not hf_dir.is_dir():
        raise FileNotFoundError(f"HF checkpoint directory {hf_dir} does not exist")
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: a Hugging Face T5 checkpoint directory "
                                "holds config.json and the weights")
    try:
        hf_config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path} is not valid JSON: {e}") from None
    config = T5Config.from_hf_config(hf_config)
    weights = read_hf_weights(hf_dir)
    config = resolve_tied(weights, config)
    params = hf_to_params(weights, config, source=str(hf_dir))
    vocab = hf_dir / VOCAB_FILE
    return params, config, (str(vocab) if vocab.is_file() else None)


def export_hf_checkpoint(params: Mapping, config: T5Config, out_dir: str | os.PathLike,
                         vocab_path: Optional[str | os.PathLike] = None) -> pathlib.Path:
    from safetensors.numpy import save_file

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(params_to_hf(params, config), str(out_dir / _SAFETENSORS), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config.to_hf_config(), indent=2, sort_keys=True))
    generation = {
        "decoder_start_token_id": config.decoder_start_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))
    if vocab_path is not None:
        shutil.copyfile(vocab_path, out_dir / VOCAB_FILE)
    return out_dir
