"""Hugging Face Llama / Qwen2 / Qwen3 / Gemma 3 (text) configs and weights <-> ours.

    config_from_hf(hf_config, source) -> DecoderOnlyConfig   # one line naming what it cannot take
    mapping(config) -> [(HF name, our param path, kind)]     # every weight `config` implies
    param_shapes(config) -> {our path: (shape, dims)}
    hf_to_params(weights, config, source) / params_to_hf(params, config)
    import_hf_checkpoint(hf_dir) -> (params, DecoderOnlyConfig)
    config_to_hf(config) / export_hf_checkpoint(params, config, out_dir)   # sharded past 5 GiB

Both forms of RoPE settings are read: transformers 5's `rope_parameters` (for Gemma 3 one
per layer type) and transformers 4's `rope_theta` + `rope_scaling` (+ Gemma 3's
`rope_local_base_freq`), as hub checkpoints carry either. HF linear weights are
[out, in]; ours are [in, ...out] with heads split out (query [embed, heads, head_dim],
out [heads, head_dim, embed]). In Llama and Qwen `post_attention_layernorm` is the norm
before the MLP; in Gemma 3 it is the norm after attention (`pre_feedforward_layernorm`
comes before the MLP).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping, Optional

import numpy as np

from dss_jax import files
from dss_jax.model import hf_convert, interface
from dss_jax.model.decoder_only.config import DecoderOnlyConfig

HFCheckpointError = hf_convert.HFCheckpointError
SUPPORTED = ("llama", "qwen2", "qwen3", "gemma3_text")
_ACTIVATION_KEYS = ("hidden_act", "hidden_activation")


def _unsupported(source: str, field: str, value: Any, why: str) -> HFCheckpointError:
    return HFCheckpointError(f"{source}: {field}={value!r} is not supported: {why}")


def _rope(hf: Mapping[str, Any], source: str, model_type: str) -> dict:
    """Our RoPE fields from either form of the HF settings."""
    params = hf.get("rope_parameters")
    local = None
    if model_type == "gemma3_text":
        if isinstance(params, Mapping) and "full_attention" in params:
            glob, loc = params["full_attention"], params.get("sliding_attention") or {}
            local = loc.get("rope_theta")
            if loc.get("rope_type", "default") != "default":
                raise _unsupported(
                    source, "rope_parameters.sliding_attention.rope_type", loc["rope_type"], "only 'default'"
                )
        else:
            glob = dict(hf.get("rope_scaling") or {})
            glob.setdefault("rope_theta", hf.get("rope_theta", 1_000_000.0))
            local = hf.get("rope_local_base_freq", 10_000.0)
    elif isinstance(params, Mapping) and params:
        glob = params
    else:
        glob = dict(hf.get("rope_scaling") or {})
        glob.setdefault("rope_theta", hf.get("rope_theta", 10_000.0))
    glob = dict(glob)
    rope_type = glob.get("rope_type", glob.get("type", "default"))
    if rope_type not in ("default", "linear", "llama3"):
        raise _unsupported(source, "rope_type", rope_type, "dss_jax implements 'default', 'linear' and 'llama3' RoPE")
    if glob.get("partial_rotary_factor", 1.0) != 1.0:
        raise _unsupported(source, "partial_rotary_factor", glob["partial_rotary_factor"], "only 1.0")
    out = {"rope_theta": float(glob["rope_theta"]), "rope_type": rope_type, "local_rope_theta": local}
    if rope_type in ("linear", "llama3"):
        out["rope_factor"] = float(glob["factor"])
    if rope_type == "llama3":
        out.update(
            rope_low_freq_factor=float(glob["low_freq_factor"]),
            rope_high_freq_factor=float(glob["high_freq_factor"]),
            rope_original_max_position=int(glob["original_max_position_embeddings"]),
        )
    return out


def config_from_hf(hf: Mapping[str, Any], source: str = "config.json", **overrides: Any) -> DecoderOnlyConfig:
    """Our config for an HF config.json; HFCheckpointError naming the first field it cannot take."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED:
        why = interface.UNSUPPORTED_MODEL_TYPES.get(model_type, f"the decoder-only family reads {', '.join(SUPPORTED)}")
        raise _unsupported(source, "model_type", model_type, why)
    gemma = model_type == "gemma3_text"
    act = next((hf[k] for k in _ACTIVATION_KEYS if hf.get(k)), "gelu_pytorch_tanh" if gemma else "silu")
    if act not in ("silu", "gelu_pytorch_tanh"):
        raise _unsupported(source, "hidden_act", act, "dss_jax implements 'silu' and 'gelu_pytorch_tanh'")
    if hf.get("pretraining_tp", 1) != 1:
        raise _unsupported(source, "pretraining_tp", hf["pretraining_tp"], "only 1")
    if hf.get("use_sliding_window") and model_type in ("qwen2", "qwen3"):
        raise _unsupported(source, "use_sliding_window", True, "Qwen's sliding-window layers are not implemented")
    if hf.get("use_bidirectional_attention"):
        raise _unsupported(source, "use_bidirectional_attention", True, "only causal attention")
    if gemma and hf.get("attn_logit_softcapping") is not None:
        raise _unsupported(
            source,
            "attn_logit_softcapping",
            hf["attn_logit_softcapping"],
            "transformers' Gemma 3 does not apply it (Gemma 3's own configs leave it null), so there is no "
            "reference for what it should do",
        )
    heads = int(hf["num_attention_heads"])
    d_model = int(hf["hidden_size"])
    num_layers = int(hf["num_hidden_layers"])
    layer_types: tuple[str, ...] = ()
    sliding_window = None
    if gemma:
        sliding_window = hf.get("sliding_window")
        if hf.get("layer_types"):
            layer_types = tuple(hf["layer_types"])
        else:
            pattern = int(hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", 6)))
            layer_types = tuple(
                "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(num_layers)
            )
    bias = bool(hf.get("attention_bias", False))
    eos = hf.get("eos_token_id")
    if isinstance(eos, list):  # generation may stop on several; ours is the first
        eos = eos[0]
    fields = dict(
        architecture=model_type,
        vocab_size=int(hf["vocab_size"]),
        d_model=d_model,
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or d_model // heads),
        d_ff=int(hf["intermediate_size"]),
        activation=act,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        norm_plus_one=gemma,
        qk_norm=model_type in ("qwen3", "gemma3_text"),
        qkv_bias=model_type == "qwen2" or bias,
        out_bias=bias if model_type == "llama" else False,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        post_norms=gemma,
        scale_embedding=gemma,
        query_pre_attn_scalar=int(hf.get("query_pre_attn_scalar", 256)) if gemma else None,
        final_logit_softcapping=hf.get("final_logit_softcapping") if gemma else None,
        sliding_window=sliding_window,
        layer_types=layer_types,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", gemma)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=int(eos) if eos is not None else 0,
        pad_token_id=int(hf["pad_token_id"]) if hf.get("pad_token_id") is not None else 0,
        **_rope(hf, source, model_type),
    )
    fields.update(overrides)
    try:
        return DecoderOnlyConfig(**fields)
    except (ValueError, TypeError) as e:
        raise HFCheckpointError(f"{source}: {e}") from None


# ----- weights ------------------------------------------------------------------------------
def mapping(config: DecoderOnlyConfig) -> list[tuple[str, tuple[str, ...], str]]:
    """(HF name, our param path, kind) for every weight; kinds: copy, linear, q (heads),
    kv (kv heads), out, q_bias, kv_bias."""
    m = [("model.embed_tokens.weight", ("token_embedder", "embedding"), "copy")]
    gemma_norms = config.post_norms
    for i in range(config.num_layers):
        hf, ours = f"model.layers.{i}", (f"layers_{i}",)
        att = ours + ("attention",)
        m.append((f"{hf}.input_layernorm.weight", ours + ("pre_attention_norm", "scale"), "copy"))
        for name, our, kind in (("q", "query", "q"), ("k", "key", "kv"), ("v", "value", "kv")):
            m.append((f"{hf}.self_attn.{name}_proj.weight", att + (our, "kernel"), kind))
            if config.qkv_bias:
                m.append((f"{hf}.self_attn.{name}_proj.bias", att + (our, "bias"), kind + "_bias"))
        m.append((f"{hf}.self_attn.o_proj.weight", att + ("out", "kernel"), "out"))
        if config.out_bias:
            m.append((f"{hf}.self_attn.o_proj.bias", att + ("out", "bias"), "copy"))
        if config.qk_norm:
            m.append((f"{hf}.self_attn.q_norm.weight", att + ("query_norm", "scale"), "copy"))
            m.append((f"{hf}.self_attn.k_norm.weight", att + ("key_norm", "scale"), "copy"))
        if gemma_norms:
            m.append((f"{hf}.post_attention_layernorm.weight", ours + ("post_attention_norm", "scale"), "copy"))
            m.append((f"{hf}.pre_feedforward_layernorm.weight", ours + ("pre_mlp_norm", "scale"), "copy"))
            m.append((f"{hf}.post_feedforward_layernorm.weight", ours + ("post_mlp_norm", "scale"), "copy"))
        else:
            m.append((f"{hf}.post_attention_layernorm.weight", ours + ("pre_mlp_norm", "scale"), "copy"))
        for name, our in (("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down")):
            m.append((f"{hf}.mlp.{name}.weight", ours + ("mlp", our, "kernel"), "linear"))
            if config.mlp_bias:
                m.append((f"{hf}.mlp.{name}.bias", ours + ("mlp", our, "bias"), "copy"))
    m.append(("model.norm.weight", ("final_norm", "scale"), "copy"))
    if not config.tie_word_embeddings:
        m.append(("lm_head.weight", ("logits_dense", "kernel"), "linear"))
    return m


def _hf_dims(name: str, kind: str) -> tuple[str, ...]:
    """The config fields behind each dimension of an HF tensor (`a*b`: a product)."""
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return ("vocab_size", "d_model")
    if kind == "q":
        return ("num_heads*head_dim", "d_model")
    if kind == "kv":
        return ("num_kv_heads*head_dim", "d_model")
    if kind == "q_bias":
        return ("num_heads*head_dim",)
    if kind == "kv_bias":
        return ("num_kv_heads*head_dim",)
    if kind == "out":
        return ("d_model", "num_heads*head_dim")
    if name.endswith("norm.weight"):  # q_norm / k_norm act on one head
        return ("head_dim",) if ".self_attn." in name else ("d_model",)
    if name.endswith("down_proj.weight"):
        return ("d_model", "d_ff")
    if name.endswith("down_proj.bias") or name.endswith("o_proj.bias"):
        return ("d_model",)
    if name.endswith(".bias"):
        return ("d_ff",)
    return ("d_ff", "d_model")


def _our_dims(kind: str, hf_dims: tuple[str, ...]) -> tuple[str, ...]:
    if kind == "copy":
        return hf_dims
    if kind == "linear":
        return hf_dims[::-1]
    if kind == "q":
        return (hf_dims[1], "num_heads", "head_dim")
    if kind == "kv":
        return (hf_dims[1], "num_kv_heads", "head_dim")
    if kind == "q_bias":
        return ("num_heads", "head_dim")
    if kind == "kv_bias":
        return ("num_kv_heads", "head_dim")
    if kind == "out":
        return ("num_heads", "head_dim", hf_dims[0])
    raise AssertionError(kind)


def param_shapes(config: DecoderOnlyConfig) -> dict[tuple[str, ...], tuple[tuple[int, ...], tuple[str, ...]]]:
    return hf_convert.shapes_by_mapping(mapping(config), config, _hf_dims, _our_dims)


def _to_ours(w: np.ndarray, kind: str, config: DecoderOnlyConfig) -> np.ndarray:
    hd = config.head_dim
    if kind == "copy":
        return w
    if kind == "linear":
        return w.T
    if kind in ("q", "kv"):  # [heads*hd, embed] -> [embed, heads, hd]
        return w.T.reshape(w.shape[1], -1, hd)
    if kind in ("q_bias", "kv_bias"):
        return w.reshape(-1, hd)
    if kind == "out":  # [embed, heads*hd] -> [heads, hd, embed]
        return w.T.reshape(-1, hd, w.shape[0])
    raise AssertionError(kind)


def _to_hf(p: np.ndarray, kind: str) -> np.ndarray:
    if kind == "copy":
        return p
    if kind == "linear":
        return p.T
    if kind in ("q", "kv"):
        return p.reshape(p.shape[0], -1).T
    if kind in ("q_bias", "kv_bias"):
        return p.reshape(-1)
    if kind == "out":
        return p.reshape(-1, p.shape[-1]).T
    raise AssertionError(kind)


def check_hf_weights(weights: Mapping[str, np.ndarray], config: DecoderOnlyConfig, source: str) -> None:
    """HFCheckpointError naming the first weight missing, unexpected or of the wrong shape."""
    m = mapping(config)
    missing = [name for name, _, _ in m if name not in weights]
    if missing:
        raise HFCheckpointError(
            f"{source}: missing weights {missing[:3]} ({len(missing)} of {len(m)}) that config.json calls for: "
            "the download is incomplete, or config.json belongs to another model"
        )
    used = {name for name, _, _ in m}
    unexpected = sorted(k for k in weights if k not in used and not k.endswith("rotary_emb.inv_freq"))
    if unexpected:
        raise HFCheckpointError(
            f"{source}: unexpected weights {unexpected[:3]} ({len(unexpected)}) that config.json has no place for: "
            "config.json belongs to another model"
        )
    for name, _, kind in m:
        dims = _hf_dims(name, kind)
        want, got = hf_convert.dims_shape(config, dims), tuple(weights[name].shape)
        if got != want:
            raise HFCheckpointError(
                f"{source}: {name} has shape {list(got)}, but config.json implies {list(want)} "
                f"({hf_convert.dims_text(config, dims)}): "
                "use the config.json saved with these weights"
            )


def hf_to_params(weights: Mapping[str, np.ndarray], config: DecoderOnlyConfig, source: str = "checkpoint") -> dict:
    weights = dict(weights)
    if config.tie_word_embeddings and "lm_head.weight" in weights:
        if not np.array_equal(np.asarray(weights["lm_head.weight"]), np.asarray(weights["model.embed_tokens.weight"])):
            raise HFCheckpointError(
                f"{source}: lm_head.weight differs from model.embed_tokens.weight, but config.json says "
                "tie_word_embeddings: true: set it to false in config.json to keep the separate head"
            )
        del weights["lm_head.weight"]
    check_hf_weights(weights, config, source)
    params: dict = {}
    for name, path, kind in mapping(config):
        w = np.asarray(weights[name]).astype(np.float32)
        hf_convert.set_path(params, path, np.ascontiguousarray(_to_ours(w, kind, config).astype(config.params_dtype)))
    return params


def params_to_hf(params: Mapping, config: DecoderOnlyConfig) -> dict[str, np.ndarray]:
    return {
        name: np.ascontiguousarray(_to_hf(np.asarray(hf_convert.get_path(params, path), np.float32), kind))
        for name, path, kind in mapping(config)
    }


def import_hf_checkpoint(hf_dir: str | os.PathLike) -> tuple[dict, DecoderOnlyConfig]:
    """(params, config) of an HF Llama / Qwen2 / Qwen3 / Gemma 3 text directory (local or gs://)."""
    hf_dir = files.path(hf_dir)
    config_path = hf_dir / "config.json"
    hf_config = files.read_json_object(config_path, HFCheckpointError, "a Hugging Face config.json")
    config = config_from_hf(hf_config, str(config_path))
    weights = hf_convert.read_hf_weights(hf_dir)
    return hf_to_params(weights, config, str(hf_dir)), config


# ----- export -------------------------------------------------------------------------------
_CLASSES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}
MAX_SHARD_BYTES = 5 * 1024**3  # transformers' default shard size


def config_to_hf(config: DecoderOnlyConfig) -> dict:
    """The Hugging Face config.json of `config`, with RoPE in the `rope_theta` /
    `rope_scaling` form that transformers 4 and 5 both read. ValueError naming the first
    field the architecture's HF config cannot express (e.g. qk_norm on a Llama)."""
    c = config
    hf: dict[str, Any] = dict(
        architectures=[_CLASSES[c.architecture]],
        model_type=c.architecture,
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        intermediate_size=c.d_ff,
        rms_norm_eps=c.norm_eps,
        max_position_embeddings=c.max_position_embeddings,
        tie_word_embeddings=c.tie_word_embeddings,
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id,
        rope_theta=c.rope_theta,
        rope_scaling=None,
        torch_dtype="float32",
    )
    if c.rope_type != "default":
        hf["rope_scaling"] = {"rope_type": c.rope_type, "factor": c.rope_factor}
    if c.rope_type == "llama3":
        hf["rope_scaling"].update(
            low_freq_factor=c.rope_low_freq_factor,
            high_freq_factor=c.rope_high_freq_factor,
            original_max_position_embeddings=c.rope_original_max_position,
        )
    if c.architecture == "gemma3_text":
        hf.update(
            hidden_activation=c.activation,
            query_pre_attn_scalar=c.query_pre_attn_scalar,
            sliding_window=c.sliding_window,
            layer_types=list(c.layer_types),
            rope_local_base_freq=c.local_rope_theta,
            final_logit_softcapping=c.final_logit_softcapping,
            attn_logit_softcapping=None,
        )
    else:
        hf.update(hidden_act=c.activation, mlp_bias=c.mlp_bias)
        if c.architecture in ("llama", "qwen3"):
            hf["attention_bias"] = c.qkv_bias
        if c.architecture != "llama":
            hf["use_sliding_window"] = False
    runtime = dict(dtype=c.dtype, param_dtype=c.param_dtype, dropout_rate=c.dropout_rate, remat_policy=c.remat_policy)
    back = config_from_hf(hf, "the exported config", **runtime)
    if back != c:
        field = next(f for f in c.to_dict() if getattr(back, f, None) != getattr(c, f, None))
        raise ValueError(
            f"DecoderOnlyConfig.{field}={getattr(c, field)!r} cannot be expressed in a Hugging Face {c.architecture} "
            f"config.json (it reads back as {getattr(back, field)!r}): not an architecture transformers implements"
        )
    return hf


def _shards(weights: Mapping[str, np.ndarray], max_bytes: int) -> list[dict[str, np.ndarray]]:
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, w in weights.items():
        if shards[-1] and size + w.nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = w
        size += w.nbytes
    return shards


def export_hf_checkpoint(
    params: Mapping,
    config: DecoderOnlyConfig,
    out_dir,
    overwrite: bool = False,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    generation: Optional[Mapping[str, Any]] = None,
    extra_files: Optional[Mapping[str, bytes]] = None,
) -> pathlib.Path:
    """Writes config.json, generation_config.json (with `generation` added) and
    model.safetensors (or shards of at most `max_shard_bytes` with
    model.safetensors.index.json) and `extra_files`, staged and renamed into place."""
    from safetensors.numpy import save_file

    from dss_jax import checkpoints

    hf_config = config_to_hf(config)  # a config transformers cannot express fails before any write
    weights = params_to_hf(params, config)
    shards = _shards(weights, max_shard_bytes)
    with checkpoints.staged_output_dir(
        out_dir, overwrite=overwrite, replaceable=hf_convert.HF_DIR_FILES, what="a Hugging Face model"
    ) as staging:
        if len(shards) == 1:
            save_file(shards[0], str(staging / "model.safetensors"), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards, 1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(staging / name), metadata={"format": "pt"})
                weight_map.update({k: name for k in shard})
            index = {"metadata": {"total_size": sum(w.nbytes for w in weights.values())}, "weight_map": weight_map}
            (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
        (staging / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True))
        ids = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}
        ids["pad_token_id"] = config.pad_token_id
        (staging / "generation_config.json").write_text(json.dumps({**ids, **(generation or {})}, indent=2))
        for name, data in (extra_files or {}).items():
            (staging / name).write_bytes(data)
    return files.path(out_dir)


def from_pretrained_call(config: DecoderOnlyConfig, hf_dir) -> str:
    return f"transformers.{_CLASSES[config.architecture]}.from_pretrained({str(hf_dir)!r})"
