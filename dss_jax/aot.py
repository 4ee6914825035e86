r"""Ahead-of-time compilation of the real train step on a virtual mesh: per-device
memory of a pod-sized run, measured on one CPU machine without allocating anything.

    python -m dss_jax.aot --size=xxl --rules=fsdp_tp --num_partitions=4 --num_devices=256 \
        --batch_size=64 --encoder_length=512 --decoder_length=384 --remat_policy=full

The model is a published size (`--size`: T5 presets and gin/models' decoder-only files) or
any model gin file, ours or T5X's (`--gin_file=t5x/examples/t5/mt5/xl.gin
--gin_search_paths=T5X_ROOT`), read as the train binary reads it.

The Trainer (dss_jax.training.step) is built over a (`data`, `model`) mesh of `num_devices`
virtual CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count, set here before
jax is imported), with abstract parameters and optimiser state (ShapeDtypeStructs that
carry their shardings). Its jitted train step is lowered and compiled by XLA for that
mesh, and the compiled executable reports what one device needs:

    argument   the inputs of one device: its shards of the train state and of the batch
    output     the outputs: the new state's shards and the (replicated) metrics
    alias      outputs written into donated inputs (the state is donated, so the new
               state reuses the old state's buffers); counted in both of the above
    temp       everything else live at the peak: gathered FSDP weights, activations
               kept for the backward pass, gradients, the optimiser's scratch
    total      argument + output - alias + temp (+ generated code, 0 on CPU)

The memory numbers come from the XLA:CPU compiler's buffer assignment with its
memory-optimised scheduler (its default schedules for thread concurrency and keeps
far more alive than a TPU/GPU compiler would). TPU and GPU compilers fuse and schedule
differently and turn gradient all-reduce + slice into reduce-scatter, so read these
as an estimate of the same program, not a TPU measurement.

The shardings of the compiled executable's inputs and the per-device parameter shapes
of its HLO are checked too: no large parameter or optimiser-state tensor may be whole
(replicated) on a device.

With `--target=tpu:<topology>` (e.g. `tpu:v5e:8x8`, `tpu:v5:4x4x4` for v5p) the TPU
compiler of libtpu compiles the same step for that topology's compile-only devices
(`jax.experimental.topologies`; num_devices must be the topology's device count), and
its figures are the TPU's: its layouts, fusions and scheduler. It refuses a program that
does not fit the device's HBM; the report then says "does not fit" with the compiler's
numbers (`fits`, `compiler_message`) instead of failing. Every report names the compiler
that produced it. libtpu is looked for on the path of the compiling process only
(`make compilers`, which `make test` runs, installs it into .venv/libtpu; $DSS_LIBTPU_DIR
elsewhere), so that ordinary CPU runs never load it.

With `--target=gpu:<kind>:<hosts>x<gpus per host>` (e.g. `gpu:h100:32x8`: 256 H100s) XLA's
GPU compiler (JAX's CUDA plugin, `make compilers` installs it into .venv/cuda_plugin;
$DSS_CUDA_PLUGIN_DIR elsewhere) compiles the step for compile-only GPUs described by a
shipped target config (dss_jax/gpu_targets/: h100, h200). The GPU compiler does not
refuse a program that is too large, so the report's `fits` is checked here: the
per-device total against the device memory, and the temporaries against the limit XLA's
GPU scheduler works to ((80% of the device memory - arguments and outputs) x 95%).

Python API: `AotConfig`, `compile_in_process(config)` (this process's devices, or the
target's, must form the mesh) and `compile_in_subprocess(config)` (a fresh process with
the virtual devices, or with libtpu or the CUDA plugin for an accelerator target).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

from dss_jax import cli

# State tensors at least this large (elements) must never be whole on a device.
LARGE_ELEMENTS = 1 << 20
MEMORY_SCHEDULER_FLAG = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"
GIB = float(1 << 30)


# The choices of AotConfig's fields, written out here because importing where they are
# defined (model/config.py, partitioning.py) imports jax before the device count is set;
# tests/test_aot.py checks that they agree.
SIZES = ("tiny", "small", "base", "large", "xl", "xxl")
# Decoder-only students: their model files, gin/models/<name>.gin (the published sizes).
DECODER_ONLY_MODELS = ("gemma3_270m", "gemma3_1b", "qwen3_0_6b", "llama3_2_1b")
VARIANTS = ("t5.1.0", "t5.1.1", "flan")
RULE_SETS = ("dp", "fsdp", "tp", "fsdp_tp")
REMAT_POLICIES = ("none", "full", "minimal", "dots")
DTYPES = ("float32", "bfloat16", "float16")
OPTIMIZERS = ("adafactor", "adamw")
_CHOICES = {
    "size": SIZES + DECODER_ONLY_MODELS,
    "variant": VARIANTS,
    "rules": RULE_SETS,
    "remat_policy": REMAT_POLICIES,
    "dtype": DTYPES,
    "optimizer": OPTIMIZERS,
}
_POSITIVE = ("num_partitions", "num_devices", "batch_size", "encoder_length", "decoder_length", "num_microbatches")


@dataclasses.dataclass(frozen=True)
class AotConfig:
    """One compile: model shape, rule set, mesh and batch shape."""

    size: str = "xl"  # a T5Config preset (tiny ... xxl), or a decoder-only model file (DECODER_ONLY_MODELS)
    variant: str = "t5.1.1"  # T5 only
    # A model gin file instead of size and variant: one of ours (models/<name>.gin, or the
    # user's own) or T5X's (t5x/examples/t5/t5_1_1/xl.gin), read as the binaries read it;
    # its `include`s are looked for in gin_search_paths (comma-separated) and gin/.
    # gin_bindings apply after it (`--gin.NAME=VALUE`, e.g. T5X's --gin.DROPOUT_RATE=0.1).
    gin_file: str = ""
    gin_search_paths: str = ""
    gin_bindings: tuple = ()
    num_layers: Optional[int] = None  # per stack (T5: encoder and decoder each); None: the model's
    rules: str = "fsdp"  # a name in partitioning.RULE_SETS
    num_partitions: int = 1  # size of the `model` mesh axis
    num_devices: int = 64
    batch_size: int = 64  # global rows per step
    encoder_length: int = 512
    decoder_length: int = 384
    remat_policy: str = "full"
    dtype: str = "bfloat16"  # compute dtype; master weights stay float32
    optimizer: str = "adafactor"  # adafactor | adamw
    num_microbatches: int = 1
    vocab_size: Optional[int] = None  # None: the preset's (32128)
    # The compiler: "cpu" (XLA:CPU over virtual devices), "tpu:<topology>", e.g. "tpu:v5e:8x8"
    # (the TPU compiler of libtpu over compile-only devices of that topology), or
    # "gpu:<kind>:<hosts>x<gpus per host>", e.g. "gpu:h100:32x8" (XLA's GPU compiler of the
    # CUDA plugin over compile-only GPUs described by gpu_targets/<kind>*.txtpb).
    target: str = "cpu"

    def __post_init__(self):
        object.__setattr__(self, "gin_bindings", tuple(self.gin_bindings))  # from JSON: a list
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                near = difflib.get_close_matches(str(getattr(self, name)), choices, n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                raise ValueError(f"--{name}={getattr(self, name)}: choose one of {', '.join(choices)}{hint}")
        for name in _POSITIVE + ("num_layers", "vocab_size"):
            value = getattr(self, name)
            if (value is not None or name in _POSITIVE) and not (isinstance(value, int) and value >= 1):
                raise ValueError(f"--{name}={value}: must be a positive integer")
        target_kind(self.target)  # ValueError naming the accepted forms
        if self.gin_bindings and not self.gin_file:
            raise ValueError("--gin.NAME bindings apply to a --gin_file: give the --gin_file")
        if self.gin_file:  # before a compile starts: the file must be there
            from dss_jax import gin_utils

            try:
                gin_utils.resolve_gin_file(self.gin_file, self.search_dirs())
            except gin_utils.GinConfigError as e:
                raise ValueError(str(e)) from None
        if self.num_devices % self.num_partitions:
            raise ValueError(f"num_partitions={self.num_partitions} must divide num_devices={self.num_devices}")
        data = self.num_devices // self.num_partitions
        if self.batch_size % data:
            raise ValueError(
                f"batch_size={self.batch_size} must be a multiple of the data-parallel size "
                f"{data} (= num_devices / num_partitions): every data shard needs whole rows"
            )

    @property
    def model_name(self) -> str:
        """What the reports call the model: the size, or the gin file's name."""
        return os.path.basename(self.gin_file) if self.gin_file else self.size

    def search_dirs(self) -> list[str]:
        from dss_jax import gin_utils

        return [p for p in self.gin_search_paths.split(",") if p] + [gin_utils.REPO_GIN_DIR]

    def model_config(self):
        """The student's config (T5Config or DecoderOnlyConfig) with this compile's dtype,
        remat policy, depth and vocabulary. A gin_file is parsed into gin's global state,
        as the train binary parses it, and its dropout rate is kept (presets train with 0.1)."""
        from dss_jax import gin_utils
        from dss_jax.model.config import T5Config
        from dss_jax.model.decoder_only.config import DecoderOnlyConfig

        overrides: dict[str, Any] = dict(dtype=self.dtype, remat_policy=self.remat_policy, dropout_rate=0.1)
        if self.gin_file:
            from dss_jax import configurables

            gin_utils.parse_gin([self.gin_file], self.gin_bindings, self.search_dirs()[:-1], require_files=False)
            config = configurables.model_config()
            del overrides["dropout_rate"]
        elif self.size in DECODER_ONLY_MODELS:
            path = os.path.join(gin_utils.REPO_GIN_DIR, "models", f"{self.size}.gin")
            config = DecoderOnlyConfig(**gin_utils.bindings_in_file(path, "DecoderOnlyConfig"))
        else:
            config = T5Config.preset(self.size, self.variant)
        if isinstance(config, DecoderOnlyConfig):
            if self.num_layers is not None:  # the first layers, of their kinds
                overrides.update(num_layers=self.num_layers, layer_types=config.layer_types[: self.num_layers])
            if self.vocab_size is not None:
                overrides["vocab_size"] = self.vocab_size
            return config.replace(**overrides)
        if self.num_layers is not None:
            overrides.update(num_encoder_layers=self.num_layers, num_decoder_layers=self.num_layers)
        if self.vocab_size is not None:
            overrides["vocab_size"] = self.vocab_size
        return config.replace(**overrides)

    def flags(self) -> list[str]:
        """The command line of `python -m dss_jax.aot` for this config."""
        out = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or value in ("", ()) or (self.gin_file and f.name in ("size", "variant")):
                continue  # unset, or what the gin file sets
            values = value if f.name == "gin_bindings" else [value]
            out.extend(f"--{f.name}={v}" for v in values)
        return out


@dataclasses.dataclass
class AotReport:
    config: AotConfig
    num_params: int
    mesh_shape: dict
    state_bytes_per_device: int  # from the shardings: this device's share of params + optimiser state
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    generated_code_bytes: int
    lower_seconds: float
    compile_seconds: float
    largest_entry_parameter: list  # [elements, "f32[...]"] of the compiled module's per-device inputs
    replicated_large: list  # [[path, shape], ...]: large state tensors whole on a device (should be empty)
    scheduler: str = "memory-optimized"
    compiler: str = "XLA:CPU"  # which compiler produced the figures
    fits: bool = True  # False: the compiler refused the program for lack of device memory
    compiler_message: str = ""  # the compiler's words when it refused
    # The compiler's cost analysis of one device's program (0 where it gives none): the
    # FLOPs it will execute (rematerialisation included) and the bytes it will move.
    flops: float = 0.0
    bytes_accessed: float = 0.0

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.generated_code_bytes

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["total_bytes"] = self.total_bytes
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "AotReport":
        d = json.loads(text)
        d.pop("total_bytes", None)
        d["config"] = AotConfig(**d["config"])
        return cls(**d)

    def summary(self) -> str:
        c = self.config
        if not self.fits:
            where = f"{c.model_name} {c.rules} mesh {self.mesh_shape} on {self.compiler}"
            return f"{where}: does not fit: {self.compiler_message}"
        return (
            f"{c.model_name} ({self.num_params / 1e9:.2f}B params, {c.num_layers or 'all'} layers) {c.rules} "
            f"mesh {self.mesh_shape} batch {c.batch_size}x{c.encoder_length}/{c.decoder_length} "
            f"remat={c.remat_policy} {c.optimizer}: state {self.state_bytes_per_device / GIB:.2f} GiB, "
            f"args {self.argument_bytes / GIB:.2f}, temp {self.temp_bytes / GIB:.2f}, "
            f"total {self.total_bytes / GIB:.2f} GiB per device ({self.compiler}); "
            f"compile {self.compile_seconds:.0f}s; "
            f"replicated large tensors: {len(self.replicated_large)}"
        )


def cached_report(path: str, config: AotConfig) -> Optional[AotReport]:
    """The report cached as JSON at `path`, or None when there is none or it was compiled
    with other settings than `config` (a stale result is compiled again, never quoted). A
    model from a gin file is never taken from a cache: the file may have changed since."""
    if config.gin_file or not os.path.exists(path):
        return None
    with open(path) as f:
        report = AotReport.from_json(f.read())
    return report if report.config == config else None


def write_report(path: str, report: AotReport) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(report.to_json())


def cached_depths(folder: str, prefix: str) -> list[int]:
    """The depths N of the files `folder/{prefix}N.json` (valid or not: see cached_report)."""
    if not os.path.isdir(folder):
        return []
    found = (f[len(prefix) : -len(".json")] for f in os.listdir(folder) if f.startswith(prefix) and f.endswith(".json"))
    return sorted(int(n) for n in found if n.isdigit())


def extend_to_depth(points: dict[int, float], depth: int, fitted: Optional[tuple[int, int]] = None) -> dict:
    """A per-device figure of the step with `depth` layers per stack, from compiles with
    fewer: the line through two compiled depths (`fitted`; default the two shallowest),
    extended to `depth`. Every other compile checks the line: `errors` holds the line's
    relative error at each, and `check_error` the one at the deepest (None when there is
    no other compile).

    Returns {"value", "fitted": [d1, d2], "errors": {d: e}, "checked_at", "check_error"}.
    For a program too large to compile here. The line assumes each layer adds a fixed
    amount (its weights, optimiser state, saved input and work); the FLOPs keep to that,
    but the compilers' memory does not always (launch/README.md: errors of tens of percent
    at other depths), which is why every caller reports the checks with the figure."""
    depths = sorted(points)
    if len(depths) < 2:
        raise ValueError(f"extend_to_depth needs compiles at two depths at least, got {depths}")
    d1, d2 = sorted(fitted) if fitted is not None else depths[:2]
    if d1 == d2 or d1 not in points or d2 not in points:
        raise ValueError(f"extend_to_depth: fitted={fitted} must be two of the compiled depths {depths}")
    slope = (points[d2] - points[d1]) / (d2 - d1)
    line = lambda d: points[d1] + slope * (d - d1)
    errors = {d: _relative_error(line(d), points[d]) for d in depths if d not in (d1, d2)}
    checked = max(errors) if errors else None
    return {
        "value": line(depth),
        "fitted": [d1, d2],
        "errors": errors,
        "checked_at": checked,
        "check_error": None if checked is None else errors[checked],
    }


def _relative_error(estimate: float, actual: float) -> float:
    if estimate == actual:
        return 0.0
    return estimate / actual - 1 if actual else math.inf


def abstract_batch(config: AotConfig, sharding, model_config=None) -> dict:
    """ShapeDtypeStructs of a packed DSS batch (dss_jax.features) for `model_config` (default:
    config.model_config()), sharded over `data`. A decoder-only row is one stream holding
    what an encoder-decoder row of encoder_length + decoder_length holds
    (data/row_formats.layout_lengths)."""
    import jax
    import jax.numpy as jnp

    from dss_jax.features import DECODER_ONLY_FEATURES

    def feature(length):
        return jax.ShapeDtypeStruct((config.batch_size, length), jnp.int32, sharding=sharding)

    enc, dec = config.encoder_length, config.decoder_length
    if (model_config or config.model_config()).family == "decoder_only":
        return {k: feature(enc + dec - 1) for k in DECODER_ONLY_FEATURES}
    return {
        "encoder_input_tokens": feature(enc),
        "encoder_segment_ids": feature(enc),
        "encoder_positions": feature(enc),
        "decoder_input_tokens": feature(dec),
        "decoder_target_tokens": feature(dec),
        "decoder_loss_weights": feature(dec),
        "decoder_segment_ids": feature(dec),
        "decoder_positions": feature(dec),
        "decoder_task_ids": feature(dec),
    }


def replicated_large_tensors(abstract_state, shardings, d_model: int, limit: int = LARGE_ELEMENTS) -> list:
    """[path, shape] of every state leaf that a device holds whole although it is large:
    at least `limit` elements, or a matrix with a `d_model` dimension (every weight matrix
    of the model, and Adam's moments of them)."""
    import jax

    out = []
    leaves = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
    flat_shardings = jax.tree_util.tree_leaves(shardings)
    if len(leaves) != len(flat_shardings):
        raise ValueError(f"{len(leaves)} state leaves but {len(flat_shardings)} shardings")
    for (path, leaf), sharding in zip(leaves, flat_shardings):
        shape = tuple(leaf.shape)
        large = math.prod(shape) >= limit or (len(shape) >= 2 and d_model in shape)
        if large and tuple(sharding.shard_shape(shape)) == shape:
            out.append([jax.tree_util.keystr(path), list(shape)])
    return out


_HLO_SHAPE = re.compile(r"\b([a-z]+\d*)\[([0-9,]*)\]")


def largest_entry_parameter(hlo_text: str) -> list:
    """[elements, "dtype[dims]"] of the largest parameter of the compiled (per-device)
    module's entry computation: after SPMD partitioning these are the shard shapes."""
    best = [0, ""]
    for line in hlo_text.splitlines():
        if not line.startswith("ENTRY "):
            continue
        signature = line.split("->")[0]
        for dtype, dims in _HLO_SHAPE.findall(signature):
            n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
            if n > best[0]:
                best = [n, f"{dtype}[{dims}]"]
        break
    return best


TARGET_FORMS = "'cpu', 'tpu:<topology>' (e.g. 'tpu:v5e:8x8') or 'gpu:<kind>:<hosts>x<gpus>' (e.g. 'gpu:h100:32x8')"
GPU_TARGETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_targets")
# XLA's GPU scheduler keeps temporaries under (80% of the device memory - arguments and
# outputs) x xla_gpu_memory_limit_slop_factor / 100 (gpu_hlo_schedule.cc); 95 is its default.
GPU_SCHEDULER_FRACTION = 0.80
GPU_SLOP_FACTOR = 0.95


def gpu_kinds() -> dict[str, str]:
    """{kind: its target-config file}: one shipped file per GPU kind (h100, h200)."""
    return {
        name.split("_")[0].split(".")[0]: os.path.join(GPU_TARGETS_DIR, name)
        for name in sorted(os.listdir(GPU_TARGETS_DIR))
        if name.endswith(".txtpb")
    }


def target_kind(target: str) -> str:
    """ "cpu", "tpu" or "gpu"; a ValueError naming the accepted forms for anything else."""
    kind, _, rest = target.partition(":")
    if target == "cpu":
        return "cpu"
    if kind == "tpu" and rest:
        return "tpu"
    if kind == "gpu":
        gpu, _, shape = rest.partition(":")
        if gpu not in gpu_kinds():
            raise ValueError(f"target={target!r}: GPU kinds with a target config are {sorted(gpu_kinds())}")
        if not re.fullmatch(r"[1-9]\d*x[1-9]\d*", shape):
            raise ValueError(f"target={target!r}: give hosts x GPUs per host after the kind, e.g. 'gpu:{gpu}:32x8'")
        return "gpu"
    raise ValueError(f"target={target!r}: use {TARGET_FORMS}")


def gpu_device_memory(kind: str) -> int:
    """The device memory (bytes) of a shipped GPU target config."""
    with open(gpu_kinds()[kind]) as f:
        return int(re.search(r"device_memory_size:\s*(\d+)", f.read()).group(1))


def gpu_fit(kind: str, argument: int, output: int, alias: int, temp: int, code: int) -> tuple[bool, str]:
    """(fits, why not) of one device's compiled footprint on a GPU of `kind`: all of it
    within the device memory, and the temporaries within XLA's scheduler limit."""
    memory = gpu_device_memory(kind)
    io = argument + output - alias
    scheduler_limit = int((GPU_SCHEDULER_FRACTION * memory - io) * GPU_SLOP_FACTOR)
    total = io + temp + code
    if total > memory:
        return False, (
            f"{total / GIB:.2f} GiB per device (arguments and outputs {io / GIB:.2f}, temporaries "
            f"{temp / GIB:.2f}) exceeds the {kind}'s {memory / GIB:.2f} GiB"
        )
    if temp > scheduler_limit:
        return False, (
            f"temporaries of {temp / GIB:.2f} GiB per device exceed XLA's GPU scheduler limit of "
            f"{max(scheduler_limit, 0) / GIB:.2f} GiB (({GPU_SCHEDULER_FRACTION:.0%} of {memory / GIB:.2f} GiB - "
            f"{io / GIB:.2f} GiB of arguments and outputs) x {GPU_SLOP_FACTOR:.0%})"
        )
    return True, ""


def cuda_plugin_dir() -> str:
    """Where `make test` puts JAX's CUDA plugin for GPU compiles ($DSS_CUDA_PLUGIN_DIR, else
    <venv>/cuda_plugin): on the path of the compiling process only, like libtpu."""
    return os.environ.get("DSS_CUDA_PLUGIN_DIR") or os.path.join(sys.prefix, "cuda_plugin")


def libtpu_dir() -> str:
    """Where `make test` puts libtpu for TPU compiles ($DSS_LIBTPU_DIR, else <venv>/libtpu):
    on the path of the compiling process only, so that ordinary CPU runs never load it."""
    return os.environ.get("DSS_LIBTPU_DIR") or os.path.join(sys.prefix, "libtpu")


def target_devices(config: AotConfig) -> tuple[list, str]:
    """(devices to compile for, the compiler's name) of `config.target`."""
    import jax

    if config.target == "cpu":
        return list(jax.devices()), "XLA:CPU"
    from jax.experimental import topologies

    if target_kind(config.target) == "gpu":
        _, kind, shape = config.target.split(":")
        hosts, per_host = shape.split("x")
        try:
            with open(gpu_kinds()[kind]) as f:
                topology = topologies.get_topology_desc(
                    "gpu", "cuda", topology=f"1x{hosts}x{per_host}", target_config=f.read()
                )
        except Exception as e:  # no CUDA plugin
            raise cli.UserError(
                f"target={config.target!r}: no GPU compiler ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); `make compilers` installs JAX's CUDA plugin, "
                f"pinned by constraints/gpu.txt, into {cuda_plugin_dir()} (or set DSS_CUDA_PLUGIN_DIR)"
            ) from None
        devices = list(topology.devices)
        return devices, f"XLA GPU compiler ({kind} x {len(devices)}, {devices[0].device_kind})"
    topology = config.target[len("tpu:") :]
    try:
        devices = list(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices)
    except Exception as e:  # no libtpu, a name it does not know, or libtpu held by another process
        held = "lockfile" in str(e)
        raise cli.UserError(
            f"target={config.target!r}: no TPU compiler for topology {topology!r} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); "
            + (
                "another process holds libtpu: set ALLOW_MULTIPLE_LIBTPU_LOAD=1 (compile-only devices share no TPU)"
                if held
                else f"`make compilers` installs libtpu, pinned by constraints/tpu.txt, into {libtpu_dir()} "
                "(or set DSS_LIBTPU_DIR)"
            )
        ) from None
    return devices, f"TPU compiler ({topology}, {devices[0].device_kind})"


def compile_in_process(config: AotConfig, devices=None) -> AotReport:
    """Compiles the train step for a mesh over `devices` (default: those of `config.target`:
    this process's, or a TPU topology's compile-only devices)."""
    import jax
    import numpy as np

    from dss_jax import losses, optimizers, partitioning
    from dss_jax.model import cpu_tuning, interface
    from dss_jax.training.step import Trainer

    compiler = "XLA:CPU"
    if devices is None:
        devices, compiler = target_devices(config)
    devices = list(devices)
    if len(devices) != config.num_devices:
        raise ValueError(
            f"AotConfig.num_devices={config.num_devices} but {len(devices)} devices are visible"
            + (
                f" in {config.target}: set num_devices={len(devices)}"
                if config.target != "cpu"
                else "; use compile_in_subprocess, which starts a process with that many virtual devices"
            )
        )
    start = time.time()
    mesh = partitioning.make_mesh(config.num_partitions, devices)
    model_config = config.model_config()
    trainer = Trainer(
        interface.build(model_config),
        loss_config=losses.LossConfig(),
        optimizer_config=optimizers.OptimizerConfig(name=config.optimizer),
        total_steps=1000,
        partition_config=partitioning.PartitionConfig(rules=config.rules, num_partitions=config.num_partitions),
        num_microbatches=config.num_microbatches,
        mesh=mesh,
    )
    batch = abstract_batch(config, trainer.batch_sharding, model_config)
    # The accelerator's program: without the CPU-only weight-gradient transposes.
    with trainer.context(), cpu_tuning.plain_contractions():
        lowered = trainer.jitted_train_step().lower(trainer.abstract_state, batch)
    lowered_at = time.time()
    try:
        compiled = lowered.compile()
    except Exception as e:  # the TPU compiler refuses a program that does not fit its HBM
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return _does_not_fit(config, trainer, mesh, compiler, str(e), lowered_at - start, time.time() - lowered_at)
    compiled_at = time.time()

    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or {})
    fits, why = True, ""
    if target_kind(config.target) == "gpu":  # the GPU compiler does not refuse: check its figures
        fits, why = gpu_fit(
            config.target.split(":")[1],
            memory.argument_size_in_bytes,
            memory.output_size_in_bytes,
            memory.alias_size_in_bytes,
            memory.temp_size_in_bytes,
            memory.generated_code_size_in_bytes,
        )
    (state_shardings, _), _ = compiled.input_shardings
    state = trainer.abstract_state
    state_bytes = sum(
        math.prod(s.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
        for leaf, s in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(state_shardings))
    )
    num_params = sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(trainer.abstract_params))
    return AotReport(
        config=config,
        num_params=int(num_params),
        mesh_shape=dict(mesh.shape),
        state_bytes_per_device=int(state_bytes),
        argument_bytes=int(memory.argument_size_in_bytes),
        output_bytes=int(memory.output_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes),
        temp_bytes=int(memory.temp_size_in_bytes),
        generated_code_bytes=int(memory.generated_code_size_in_bytes),
        lower_seconds=round(lowered_at - start, 1),
        compile_seconds=round(compiled_at - lowered_at, 1),
        largest_entry_parameter=largest_entry_parameter(compiled.as_text()),
        replicated_large=replicated_large_tensors(state, state_shardings, trainer.model.config.d_model),
        scheduler=(
            "memory-optimized"
            if compiler == "XLA:CPU" and MEMORY_SCHEDULER_FLAG in os.environ.get("XLA_FLAGS", "")
            else "default"
        ),
        compiler=compiler,
        fits=fits,
        compiler_message=why,
        flops=float(cost.get("flops", 0.0)),
        bytes_accessed=float(cost.get("bytes accessed", 0.0)),
    )


def _does_not_fit(config, trainer, mesh, compiler, message, lower_seconds, compile_seconds) -> AotReport:
    import jax

    words = " ".join(line.strip() for line in message.splitlines() if line.strip())
    start = words.find("RESOURCE_EXHAUSTED")
    num_params = sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(trainer.abstract_params))
    return AotReport(
        config=config,
        num_params=int(num_params),
        mesh_shape=dict(mesh.shape),
        state_bytes_per_device=0,
        argument_bytes=0,
        output_bytes=0,
        alias_bytes=0,
        temp_bytes=0,
        generated_code_bytes=0,
        lower_seconds=round(lower_seconds, 1),
        compile_seconds=round(compile_seconds, 1),
        largest_entry_parameter=[],
        replicated_large=[],
        scheduler="default",
        compiler=compiler,
        fits=False,
        compiler_message=words[start : start + 600],
    )


def subprocess_env(num_devices: int, memory_scheduler: bool = True) -> dict:
    """The environment of a process with `num_devices` virtual CPU devices."""
    env = dict(os.environ)
    flags = [
        f
        for f in env.get("XLA_FLAGS", "").split()
        if "xla_force_host_platform_device_count" not in f and "xla_cpu_scheduler_type" not in f
    ]
    flags.append(f"--xla_force_host_platform_device_count={num_devices}")
    if memory_scheduler:
        flags.append(MEMORY_SCHEDULER_FLAG)
    env.update(XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    return _with_paths(env)


def _with_paths(env: dict, *extra: str) -> dict:
    """`env` with this checkout (and `extra` directories) first on PYTHONPATH."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [repo, *extra] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def accelerator_env(target: str) -> dict:
    """The environment of a process that compiles for a TPU topology (libtpu importable from
    `libtpu_dir()`) or a GPU target (the CUDA plugin from `cuda_plugin_dir()`, its check for
    a local CUDA installation skipped); JAX itself runs on the CPU: the devices are compile-only."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    if target_kind(target) == "gpu":
        env["JAX_SKIP_CUDA_CONSTRAINTS_CHECK"] = "1"
        return _with_paths(env, cuda_plugin_dir())
    env.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # no pod to discover: libtpu need not look
    # libtpu takes /tmp/libtpu_lockfile so that two processes never drive one TPU; with
    # compile-only devices there is no TPU to share, and without this a second compile
    # (a test run beside a table rebuild) fails while the first one holds the file.
    env.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    return _with_paths(env, libtpu_dir())


def compile_in_subprocess(config: AotConfig, timeout: Optional[float] = None) -> AotReport:
    """Runs `python -m dss_jax.aot` for `config` in a fresh process with the virtual devices.

    Older XLA builds without the memory-optimised CPU scheduler flag reject it at start-up;
    the compile is then repeated with the default scheduler (reported as such).
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "report.json")
        cmd = [sys.executable, "-m", "dss_jax.aot", *config.flags(), f"--json_out={out}"]
        for memory_scheduler in (True, False):
            proc = subprocess.run(
                cmd,
                env=accelerator_env(config.target)
                if config.target != "cpu"
                else subprocess_env(config.num_devices, memory_scheduler),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if proc.returncode == 0 or "xla_cpu_scheduler_type" not in proc.stderr:
                break
        if proc.returncode != 0:
            raise RuntimeError(f"AOT compile of {config} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        with open(out) as f:
            return AotReport.from_json(f.read())


def parse_args(argv=None) -> tuple[AotConfig, Optional[str]]:
    """The command line -> (config, json_out); a bad combination exits with status 2."""
    import argparse

    from dss_jax import cli, gin_utils

    class Parser(argparse.ArgumentParser):
        def error(self, message):  # one line, `aot: error: ...`, exit 2 (argparse prints its usage first)
            cli.fail("aot", f"{message} (--help lists the flags)")

    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_flags = ("size", "variant")  # what a --gin_file replaces: None when not given
    for f in dataclasses.fields(AotConfig):
        kind = {"Optional[int]": int, "int": int}.get(str(f.type), str)
        if f.name == "gin_bindings":  # repeatable; t5x's --gin.NAME=VALUE is rewritten to it
            parser.add_argument("--gin_bindings", action="append", default=[])
        else:
            parser.add_argument(f"--{f.name}", type=kind, default=None if f.name in model_flags else f.default)
    parser.add_argument("--json_out", default=None, help="write the report as JSON here")
    try:
        argv = gin_utils.rewrite_gin_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        cli.fail("aot", e)
    args = vars(parser.parse_args(argv))
    json_out = args.pop("json_out")
    given = [f"--{name}" for name in model_flags if args[name] is not None]
    if args["gin_file"] and given:
        cli.fail("aot", f"--gin_file={args['gin_file']} sets the model: drop {' and '.join(given)}")
    if args["gin_search_paths"] and not args["gin_file"]:
        cli.fail("aot", "--gin_search_paths is where a --gin_file's includes are looked for: give the --gin_file")
    args = {k: v for k, v in args.items() if v is not None}
    try:
        return AotConfig(**args), json_out
    except ValueError as e:
        cli.fail("aot", e)


def main(argv=None) -> int:
    config, json_out = parse_args(argv)
    if "jax" in sys.modules:  # imported by the caller: its device count is fixed already
        import jax

        if jax.device_count() != config.num_devices:
            raise SystemExit(
                f"jax is already initialised with {jax.device_count()} devices, not --num_devices={config.num_devices}"
            )
    elif config.target == "cpu":
        os.environ.update(
            {
                k: v
                for k, v in subprocess_env(config.num_devices).items()
                if k in ("XLA_FLAGS", "JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL")
            }
        )
    else:
        env = accelerator_env(config.target)
        accelerator_keys = ("TPU_WORKER_HOSTNAMES", "ALLOW_MULTIPLE_LIBTPU_LOAD", "JAX_SKIP_CUDA_CONSTRAINTS_CHECK")
        for k in ("JAX_PLATFORMS", *accelerator_keys):
            if k in env:
                os.environ.setdefault(k, env[k])
        extra = cuda_plugin_dir() if target_kind(config.target) == "gpu" else libtpu_dir()
        if os.path.isdir(extra):  # make test's libtpu or CUDA plugin, for this process only
            sys.path.insert(0, extra)
    report = compile_in_process(config)
    print(report.summary(), flush=True)
    if json_out:  # a local path or an object-store URL (gs://), written whole
        from dss_jax import files

        files.atomic_write(json_out, report.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(cli.guard(main, "aot")())
