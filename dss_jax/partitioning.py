"""Mesh, logical-axis rules, shardings and multi-host set-up.

Every parameter and activation of the model names its axes where it is created
(`batch, length, embed, mlp, heads, kv, vocab`, ...). A rule set maps those names onto
the mesh axes `data` and `model`; data parallel, FSDP and tensor parallel are rule
sets, not code paths:

    dp       batch -> data; parameters replicated
    fsdp     batch -> data; parameters and optimiser state sharded over data (embed)
    tp       batch -> data; mlp, heads, kv_heads, vocab -> model (Megatron-style)
    fsdp_tp  both

A mesh axis is used at most once per array: flax tries the rules in order and skips a
rule whose mesh axis is taken, so `batch` (listed first) keeps `data` on activations
and `embed` falls back to unsharded there, while parameters (no batch axis) shard
`embed` over `data`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import gin

Rules = tuple[tuple[str, Any], ...]

_ALWAYS: Rules = (("batch", "data"), ("length", None), ("kv", None), ("relpos_buckets", None))

RULE_SETS: dict[str, Rules] = {
    "dp": _ALWAYS + (("embed", None), ("mlp", None), ("heads", None), ("kv_heads", None), ("vocab", None)),
    "fsdp": _ALWAYS + (("embed", "data"), ("mlp", None), ("heads", None), ("kv_heads", None), ("vocab", None)),
    "tp": _ALWAYS + (("embed", None), ("mlp", "model"), ("heads", "model"), ("kv_heads", "model"), ("vocab", "model")),
    "fsdp_tp": _ALWAYS
    + (("embed", "data"), ("mlp", "model"), ("heads", "model"), ("kv_heads", "model"), ("vocab", "model")),
}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PartitionConfig:
    """How the global batch and the parameters are laid out over the devices.

    num_partitions: size of the `model` (tensor-parallel) mesh axis; the `data` axis
    takes the remaining devices. rules: a name in RULE_SETS or an explicit rule tuple.
    """

    rules: Any = "dp"
    num_partitions: int = 1

    def logical_rules(self) -> Rules:
        if isinstance(self.rules, str):
            if self.rules not in RULE_SETS:
                raise ValueError(
                    f"PartitionConfig.rules={self.rules!r} is not a rule set; "
                    f"use one of {sorted(RULE_SETS)} or a tuple of (logical_axis, mesh_axis) pairs"
                )
            return RULE_SETS[self.rules]
        return tuple((str(a), m) for a, m in self.rules)


def make_mesh(num_partitions: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (`data`, `model`) mesh over all (global) devices.

    Devices are laid out so that a `model` group sits on neighbouring devices
    (the fast interconnect), which `mesh_utils` knows for TPU and GPU topologies.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if num_partitions < 1 or n % num_partitions:
        raise ValueError(
            f"num_partitions={num_partitions} must divide the number of devices ({n}); "
            "set PartitionConfig.num_partitions accordingly"
        )
    shape = (n // num_partitions, num_partitions)
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
    except Exception:  # CPU / unusual topologies: plain order is fine
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, ("data", "model"))


def logical_to_sharding(logical_specs: Any, mesh: Mesh, rules: Rules) -> Any:
    """A tree of logical PartitionSpecs -> a tree of NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def params_shardings(abstract_variables: Any, mesh: Mesh, rules: Rules) -> Any:
    """Shardings for (boxed, abstract) flax variables created with logical names.

    Every leaf must carry logical names; a leaf without is replicated and named in a
    warning, since an unannotated large tensor silently costs memory on every device.
    """
    specs = nn.get_partition_spec(abstract_variables)
    unboxed = strip_boxes(abstract_variables)

    def check(path, spec, leaf):
        if spec == P() and getattr(leaf, "ndim", 0) >= 2:
            logging.warning("parameter %s has no logical axis names; it is replicated", jax.tree_util.keystr(path))
        return spec

    specs = jax.tree_util.tree_map_with_path(check, specs, unboxed)
    return logical_to_sharding(specs, mesh, rules)


def strip_boxes(tree: Any) -> Any:
    """The values of flax's partitioning boxes, without the sharding constraint that
    `nn.meta.unbox` applies when a mesh is set (which abstract values cannot take)."""
    return jax.tree_util.tree_map(
        lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x,
        tree,
        is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata),
    )


def derived_shardings(tree: Any, params: Any, params_sharding: Any, mesh: Mesh) -> Any:
    """Shardings for a tree (an optimiser state) whose leaves mirror parameters.

    Optimiser states hold copies of the parameter tree (Adam's moments) or factored
    statistics with one dimension reduced (Adafactor's row/column second moments). A
    leaf is matched to the parameter whose path ends its own path; it takes that
    parameter's sharding if it has the same shape, the sharding with the reduced
    dimension dropped if one dimension is missing, and is replicated otherwise (scalar
    counters, unfactored placeholders).
    """
    flat_params = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        flat_params[_dict_keys(path)] = leaf
    flat_shardings = {_dict_keys(path): s for path, s in jax.tree_util.tree_flatten_with_path(params_sharding)[0]}
    replicated = NamedSharding(mesh, P())

    def pick(path, leaf):
        keys = _dict_keys(path)
        for start in range(len(keys)):
            suffix = keys[start:]
            if suffix in flat_params:
                param, sharding = flat_params[suffix], flat_shardings[suffix]
                spec = tuple(sharding.spec) + (None,) * (param.ndim - len(sharding.spec))
                if tuple(leaf.shape) == tuple(param.shape):
                    return sharding
                for drop in range(param.ndim):
                    if tuple(leaf.shape) == tuple(param.shape[:drop] + param.shape[drop + 1 :]):
                        return NamedSharding(mesh, P(*(spec[:drop] + spec[drop + 1 :])))
                return replicated
        return replicated

    return jax.tree_util.tree_map_with_path(pick, tree)


def describe_layout(mesh: Mesh, rules: Any, abstract_params: Any, params_sharding: Any) -> str:
    """One line for the train start: the platform and devices, the mesh, and how the
    parameters are laid out over it (how many of them each device holds, and the share
    of the parameters split over each mesh axis), as T5X logs its partitioning."""
    device = mesh.devices.flat[0]
    per_axes: dict[tuple, int] = {}
    per_device = 0

    def count(leaf, sharding):
        nonlocal per_device
        named = {a for entry in sharding.spec if entry for a in ((entry,) if isinstance(entry, str) else entry)}
        axes = tuple(a for a in mesh.axis_names if a in named)
        size = int(np.prod(leaf.shape))
        per_axes[axes] = per_axes.get(axes, 0) + size
        per_device += size // int(np.prod([mesh.shape[a] for a in axes]))

    jax.tree_util.tree_map(count, abstract_params, params_sharding)
    total = sum(per_axes.values())
    shares = ", ".join(
        f"{f'{100 * n / total:.1f}' if n >= total / 1000 else '<0.1'}% "
        f"{'over ' + '+'.join(axes) if axes else 'replicated'}"
        for axes, n in sorted(per_axes.items(), key=lambda item: -item[1])
    )
    mesh_text = " x ".join(f"{name}={size}" for name, size in mesh.shape.items())
    rules_text = rules if isinstance(rules, str) else "custom"
    return (
        f"{device.platform} ({mesh.devices.size} x {device.device_kind}, {jax.process_count()} process"
        f"{'es' if jax.process_count() > 1 else ''}): mesh {mesh_text}, rules {rules_text!r}; "
        f"{total:,} parameters, {per_device:,} per device ({shares})"
    )


def _dict_keys(path) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "name", None)) for k in path if hasattr(k, "key") or hasattr(k, "name"))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Global batches are split over `data` along their first (batch) axis."""
    return NamedSharding(mesh, P("data"))


def host_local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """How many rows of the global batch this process feeds."""
    n = jax.process_count()
    if global_batch_size % n:
        raise ValueError(f"BATCH_SIZE={global_batch_size} must be divisible by the number of processes ({n})")
    data = mesh.shape["data"]
    if global_batch_size % data:
        raise ValueError(f"BATCH_SIZE={global_batch_size} must be divisible by the data-parallel size ({data})")
    return global_batch_size // n


def global_batch_from_local(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's rows into one global array per feature."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


@gin.configurable
def initialize_distributed(
    multiprocess_gpu: bool = False,
    coordinator_address: str | None = None,
    process_count: int | None = None,
    process_index: int | None = None,
    coordinator_bind_address: str | None = None,
) -> None:
    """JAX's own multi-host runtime, with t5x's flags.

    On TPU pods `jax.distributed.initialize()` finds everything itself; on GPU clusters
    (and on CPU over loopback in tests) the coordinator and process ids are passed in.
    A Cloud TPU VM pod sets none of the environment variables below, so the launchers
    (launch/tpu_pod.sh) ask for JAX's own detection with DSS_JAX_DISTRIBUTED=auto.

    Process 0's coordinator listens where `coordinator_bind_address` (or
    $JAX_COORDINATOR_BIND_ADDRESS) says; by default on the coordinator address itself
    when that is a loopback one (a local run: jax would listen on every interface,
    open to the network), else on every interface, as other hosts must reach it.
    """
    if coordinator_address or multiprocess_gpu:
        if not coordinator_address or process_count is None or process_index is None:
            raise ValueError("multi-process runs need --coordinator_address, --process_count and --process_index")
        bind = (
            coordinator_bind_address
            or os.environ.get("JAX_COORDINATOR_BIND_ADDRESS")
            or (coordinator_address if _is_loopback(coordinator_address) else None)
        )
        logging.info(
            "jax.distributed.initialize(%s, process %d of %d; coordinator listening on %s)",
            coordinator_address,
            process_index,
            process_count,
            bind or "every interface",
        )
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=process_count,
            process_id=process_index,
            **({"coordinator_bind_address": bind} if bind else {}),
        )
    elif (
        os.environ.get("DSS_JAX_DISTRIBUTED") == "auto"
        or os.environ.get("TPU_WORKER_HOSTNAMES")
        or os.environ.get("CLOUD_TPU_TASK_ID")
    ):
        jax.distributed.initialize()


def _is_loopback(address: str) -> bool:
    """Whether HOST:PORT (or [V6]:PORT) names this machine only."""
    host = address.rpartition(":")[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
