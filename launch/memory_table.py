#!/usr/bin/env python3
r"""Regenerates the memory tables of launch/README.md.

    python launch/memory_table.py                 # every table; compiles what is not cached
    python launch/memory_table.py --only=xxl-fsdp_tp4-256 --layers=2,4,8   # one row, checked at 8
    python launch/memory_table.py --only=xxl-fsdp-256 --force --compilers=cpu  # recompile its XLA:CPU row
    python launch/memory_table.py --list          # the rows and what is cached

Three tables:
- the arithmetic: parameters, optimiser state (Adafactor factored vs AdamW) and gradients
  of each T5 v1.1 size, from the model's and the optimiser's abstract shapes;
- the real compilers': the train step compiled by libtpu's TPU compiler for TPU v5e
  slices of 64 and 256 chips (T5) and 8 (a 1B decoder-only student), and by XLA's GPU
  compiler for 8 H100s (dss_jax.aot), per-device memory from the compiled executable. A
  full-depth program takes too long to compile on a small CPU host, so each row is
  compiled with 2 and 4 layers per stack and its figures are extended along that line to
  the model's full depth (T5 XL and XXL: 24; Llama 3.2 1B: 16)
  (dss_jax.aot.extend_to_depth); other compiles, where cached, check the line (its error
  at each is shown), and a full-depth compile, where cached, replaces it;
- XLA:CPU's: the same step compiled at full depth for a virtual CPU mesh.

Each compile runs in its own process (the device count is fixed when jax starts) and is
cached as JSON in launch/aot_results/ (tpu/ and gpu/NAME-LAYERS.json for the real compilers), so the
tables can be rewritten without recompiling; a cached result whose settings differ from
its row's is compiled again. On a 2-core CPU, with another compile running, a TPU compile
of these rows took 13-23 minutes at 2 layers and 16-24 at 4, a GPU one 2-4 minutes (the
full-depth XXL 30), and a full-depth XLA:CPU XXL compile takes 30-40 minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from dss_jax import aot  # noqa: E402
from dss_jax.aot import GIB, AotConfig, AotReport, extend_to_depth, gpu_device_memory, gpu_fit, target_kind  # noqa: E402

RESULTS = os.path.join(REPO, "launch", "aot_results")
README = os.path.join(REPO, "launch", "README.md")
ENC, DEC = 512, 384  # SVAMP's packed training rows (gin/tasks/svamp.gin), the longest task

# name -> config. Global batch 64 (the paper's) wherever the data axis divides it; a data
# axis of 256 needs at least 256 rows (one per device), stated in the table.
ROWS: dict[str, AotConfig] = {
    "xl-fsdp-64": AotConfig(size="xl", rules="fsdp", num_devices=64, batch_size=64),
    "xl-fsdp_tp4-64": AotConfig(size="xl", rules="fsdp_tp", num_partitions=4, num_devices=64, batch_size=64),
    "xxl-fsdp_tp4-256": AotConfig(size="xxl", rules="fsdp_tp", num_partitions=4, num_devices=256, batch_size=64),
    "xxl-fsdp-256": AotConfig(size="xxl", rules="fsdp", num_devices=256, batch_size=256),
}
ROWS = {k: AotConfig(**{**v.__dict__, "encoder_length": ENC, "decoder_length": DEC}) for k, v in ROWS.items()}


# The real compilers' rows. Each of ROWS on a TPU v5e slice of as many chips (16 GiB of HBM
# each), and T5-XXL with FSDP on one host of 8 H100s (the partitioning guide's 80 GiB
# column). Compiled with 2 and 4 layers per stack (LAYERS, the line), extended to the full
# depth; any other cached compile checks the line, and a full-depth one replaces it.
#
# Why 2 and 4, not 1 and 2: a 1-layer program is an edge case. On the GPU compiler, XXL
# with FSDP on 8 H100s grew by 2.37 GiB from 1 to 2 layers per stack but by 0.47 GiB per
# layer from 2 to 4 (at one layer there is no next layer whose weights the scheduler
# gathers while this one computes, probably), so a line through 1 and 2 missed the 4-layer
# compile by +49%. This was seen before any TPU compile deeper than 2 layers.
TPU_TOPOLOGY = {64: "v5e:8x8", 256: "v5e:16x16"}
# Not xl-fsdp_tp4-64: libtpu 0.0.42's compiler crashes on it (SIGSEGV in
# SpatialMajorConvolution::Emit, within a minute, at 1 and 2 layers per stack).
TPU_CRASHES = ("xl-fsdp_tp4-64",)
COMPILED: dict[str, AotConfig] = {
    **{
        name: dataclasses.replace(row, target=f"tpu:{TPU_TOPOLOGY[row.num_devices]}")
        for name, row in ROWS.items()
        if name not in TPU_CRASHES
    },
    "xxl-fsdp-8": dataclasses.replace(ROWS["xxl-fsdp-256"], num_devices=8, batch_size=64, target="gpu:h100:1x8"),
}
# A ~1B decoder-only student (Llama 3.2 1B, gin/models/llama3_2_1b.gin) with FSDP on a v5e
# slice of 8 chips and on 8 H100s: the same global batch of 64 packed rows, each one
# stream of the tokens a 512 + 384 encoder-decoder row holds (895).
DECODER_ONLY = AotConfig(
    size="llama3_2_1b", rules="fsdp", num_devices=8, batch_size=64, encoder_length=ENC, decoder_length=DEC
)
COMPILED.update(
    {
        "llama3_2_1b-fsdp-v5e8": dataclasses.replace(DECODER_ONLY, target="tpu:v5e:2x4"),
        # 896 tokens per row: XLA's GPU compiler (jax-cuda12-plugin 0.10.2) fails on rows of
        # 895 ("Couldn't find output tile sizes that satisfy hlo" for a [7160, 2048] dot).
        "llama3_2_1b-fsdp-h100x8": dataclasses.replace(DECODER_ONLY, decoder_length=DEC + 1, target="gpu:h100:1x8"),
    }
)
LAYERS = (2, 4)
# The HBM the TPU compiler lets one v5e program use: the figure its refusal names
# ("exceeds available HBM (15.75G)", tests/test_aot.py); a chip has 16 GiB.
TPU_AVAILABLE = {"v5e": 15.75 * GIB}


def compiled_config(name: str, layers: int) -> AotConfig:
    return dataclasses.replace(COMPILED[name], num_layers=layers)


def full_depth(name: str) -> int:
    """The layers per stack of COMPILED[name]'s model at its full size (T5 v1.1 XL and XXL: 24)."""
    config = COMPILED[name].model_config()
    return config.num_layers if hasattr(config, "num_layers") else config.num_encoder_layers


def _path(name: str, layers: int | None) -> str:
    if layers is None:
        return os.path.join(RESULTS, f"{name}.json")
    return os.path.join(RESULTS, target_kind(COMPILED[name].target), f"{name}-{layers}.json")


def cached(name: str, layers: int | None = None) -> AotReport | None:
    """The cached compile of a row: XLA:CPU's of ROWS[name] at full depth (layers None), or
    the real compiler's of COMPILED[name] with `layers` per stack; None when absent or
    compiled with other settings (a changed row is compiled again)."""
    return aot.cached_report(_path(name, layers), ROWS[name] if layers is None else compiled_config(name, layers))


def cached_depths(name: str) -> list[int]:
    """The depths of COMPILED[name] with a valid cached compile."""
    found = aot.cached_depths(os.path.dirname(_path(name, 1)), f"{name}-")
    return [n for n in found if cached(name, n) is not None]


def compile_row(name: str, layers: int | None = None) -> AotReport:
    config = ROWS[name] if layers is None else compiled_config(name, layers)
    print(f"[{time.strftime('%H:%M:%S')}] compiling {name}: {' '.join(config.flags())}", flush=True)
    report = aot.compile_in_subprocess(config)
    aot.write_report(_path(name, layers), report)
    print("  " + report.summary(), flush=True)
    return report


MEMORY_FIELDS = ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "generated_code_bytes", "total_bytes")


def refused_by_compiler(report: AotReport) -> bool:
    """The TPU compiler refused the program (no memory figures); a GPU report that does not
    fit still has its figures."""
    return not report.fits and report.total_bytes == 0


def estimate(name: str, reports: dict[int, AotReport]) -> dict:
    """COMPILED[name]'s per-device memory at full depth, from its compiles `reports`
    ({layers per stack: report}): each figure along the line through the compiles at
    LAYERS, every other compile checking it; a full-depth compile's own figures where there
    is one. A compile the compiler refused makes the row "does not fit" without extending
    anything; otherwise the fit is the target's: within the HBM the TPU compiler allows,
    or, on a GPU, aot.gpu_fit's memory and scheduler limits."""
    refused = [n for n, r in sorted(reports.items()) if refused_by_compiler(r)]
    out = {"name": name, "depths": sorted(reports), "refused_at": refused[0] if refused else None}
    out["mesh"] = reports[min(reports)].mesh_shape
    if refused:
        out["message"] = reports[refused[0]].compiler_message
        return out
    if not set(LAYERS) <= set(reports):
        got = sorted(reports)
        raise ValueError(f"{name}: the line needs compiles at {LAYERS} layers per stack (--layers), got {got}")
    depth = out["full_depth"] = full_depth(name)
    for key in MEMORY_FIELDS:
        points = {n: getattr(r, key) for n, r in reports.items()}
        line = extend_to_depth(points, depth, fitted=LAYERS)
        out[key] = points[depth] if depth in reports else line["value"]
        out[f"{key}_errors"] = line["errors"]
        out["fitted"] = line["fitted"]
    d1, d2 = out["fitted"]
    out["per_layer_bytes"] = (reports[d2].total_bytes - reports[d1].total_bytes) / (d2 - d1)
    out["extended"] = depth not in reports
    target = COMPILED[name].target
    if target_kind(target) == "gpu":
        fields = [int(out[k]) for k in MEMORY_FIELDS[:-1]]
        out["fits"], out["why"] = gpu_fit(target.split(":")[1], *fields)
    else:
        chip = target.split(":")[1]
        out["fits"], out["why"] = out["total_bytes"] <= TPU_AVAILABLE[chip], ""
    out["replicated_large"] = max(len(r.replicated_large) for r in reports.values())
    return out


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def cpu_table(reports: dict[str, AotReport]) -> str:
    lines = [
        "| run | params | mesh (data x model) | optimiser | global batch (rows/data shard) | state | "
        "arguments | temp | **total per device** | fits 16 GiB | replicated large tensors | "
        "largest per-device input | compile |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in reports.items():
        c = r.config
        data, model = r.mesh_shape["data"], r.mesh_shape["model"]
        lines.append(
            f"| `{name}` {c.size} {c.rules} | {r.num_params / 1e9:.2f}B | {data} x {model} | {c.optimizer} | "
            f"{c.batch_size} ({c.batch_size // data}) | {gib(r.state_bytes_per_device)} | "
            f"{gib(r.argument_bytes)} | {gib(r.temp_bytes)} | **{gib(r.total_bytes)}** | "
            f"{'yes' if r.total_bytes <= 16 * GIB else 'no'} | {len(r.replicated_large)} | "
            f"`{r.largest_entry_parameter[1]}` | {r.compile_seconds:.0f} s |"
        )
    return "\n".join(lines)


def device_memory(name: str) -> str:
    """The memory a program may use on COMPILED[name]'s devices, as the table states it."""
    kind, chip = target_kind(COMPILED[name].target), COMPILED[name].target.split(":")[1]
    if kind == "gpu":
        return f"{chip} ({gib(gpu_device_memory(chip))} GiB)"
    return f"{chip} ({gib(TPU_AVAILABLE[chip])} GiB)"


def compiled_table(estimates: list[dict], cpu: dict[str, AotReport]) -> str:
    lines = [
        "| run | params | compiler: devices | mesh (data x model) | global batch (rows/data shard) | line through "
        "layers per stack (its error in total and temp at other compiles) | arguments | temp | code "
        "| **total per device, full depth (layers per stack)** | per layer | fits (memory available) "
        "| replicated large tensors | XLA:CPU total, compiled at full depth |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in estimates:
        config, cpu_report = COMPILED[e["name"]], cpu.get(e["name"])
        data, model = e["mesh"]["data"], e["mesh"]["model"]
        compiler = "TPU" if target_kind(config.target) == "tpu" else "GPU"
        head = (
            f"| `{e['name']}` {config.size} {config.rules} | {num_params(config) / 1e9:.2f}B "
            f"| {compiler}: {config.target.split(':', 1)[1]} | {data} x {model} "
            f"| {config.batch_size} ({config.batch_size // data}) "
        )
        cpu_total = gib(cpu_report.total_bytes) if cpu_report else "not compiled"
        if e["refused_at"] is not None:
            lines.append(
                head + f"| {e['refused_at']}: refused | | | | **does not fit** | | no, {device_memory(e['name'])}: "
                f"`{e['message'][:120]}` | | {cpu_total} |"
            )
            continue
        errors, temp = e["total_bytes_errors"], e["temp_bytes_errors"]
        check = ", ".join(f"{d}: {errors[d]:+.1%} (temp {temp[d]:+.1%})" for d in sorted(errors))
        check = f" ({check})" if check else ""
        how = f"{'extended' if e['extended'] else 'compiled'}, {e['full_depth']}"
        lines.append(
            head + f"| {', '.join(map(str, e['fitted']))}{check} | {gib(e['argument_bytes'])} "
            f"| {gib(e['temp_bytes'])} | {gib(e['generated_code_bytes'])} | **{gib(e['total_bytes'])}** ({how}) "
            f"| {gib(e['per_layer_bytes'])} | {'yes' if e['fits'] else 'no'}, {device_memory(e['name'])} "
            f"| {e['replicated_large']} | {cpu_total} |"
        )
    return "\n".join(lines)


def _abstract_params(size: str):
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    from dss_jax.model.config import T5Config
    from dss_jax.model.t5 import init_variables

    cfg = T5Config.preset(size, "t5.1.1")
    boxed = jax.eval_shape(lambda k: init_variables(cfg, k), jax.random.key(0))["params"]
    params = jax.tree_util.tree_map(
        lambda x: x.value if hasattr(x, "value") else x, boxed, is_leaf=lambda x: hasattr(x, "value")
    )
    return cfg, params


def num_params(config: AotConfig) -> int:
    """The parameters of a row's model at full depth."""
    import jax

    from dss_jax.model import interface

    model = interface.build(dataclasses.replace(config, num_layers=None).model_config())
    return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(model.abstract_params()))


def arithmetic_table() -> str:
    """Parameters, optimiser state and gradients per size, exact from abstract shapes."""
    import jax

    from dss_jax import optimizers

    lines = [
        "| size | d_model / d_ff / heads / layers | params | f32 weights | Adafactor state | AdamW state | "
        "f32 gradients | weights + Adafactor per device: 8 / 64 / 256 devices (FSDP) | "
        "weights + AdamW per device: 8 / 64 / 256 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size in ("small", "base", "large", "xl", "xxl"):
        cfg, params = _abstract_params(size)
        n = sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params))

        def state_bytes(name):
            tx, _ = optimizers.make_optimizer(optimizers.OptimizerConfig(name=name), 1000)
            opt = jax.eval_shape(tx.init, params)  # noqa: B023  (used in this iteration)
            return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(opt))

        ada, adam = state_bytes("adafactor"), state_bytes("adamw")
        w = 4 * n
        per = lambda s: " / ".join(gib((w + s) / d) for d in (8, 64, 256))  # noqa: B023  (used in this iteration)
        lines.append(
            f"| {size} | {cfg.d_model} / {cfg.d_ff} / {cfg.num_heads} / {cfg.num_encoder_layers}+"
            f"{cfg.num_decoder_layers} | {n / 1e9:.3f}B | {gib(w)} GiB | {gib(ada)} GiB | {gib(adam)} GiB | "
            f"{gib(w)} GiB | {per(ada)} GiB | {per(adam)} GiB |"
        )
    return "\n".join(lines)


def replace_block(text: str, tag: str, body: str) -> str:
    start, end = f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{README} lacks the markers {start} ... {end}")
    return pattern.sub(lambda _: f"{start}\n{body}\n{end}", text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[], help="compile only these rows (repeatable)")
    parser.add_argument("--force", action="store_true", help="recompile even when a cached result exists")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("--no_readme", action="store_true", help="do not rewrite launch/README.md")
    parser.add_argument("--no_compile", action="store_true", help="use cached results only")
    parser.add_argument("--compilers", default="real,cpu", help="which compiles to run: real (TPU and GPU), cpu")
    parser.add_argument(
        "--layers",
        default=",".join(map(str, LAYERS)),
        help=f"depths to compile with the real compilers (layers per stack); {LAYERS} give the line, "
        "any other checks it",
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.only if n not in {**ROWS, **COMPILED}]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {sorted({**ROWS, **COMPILED})}")
    compilers = set(args.compilers.split(","))
    if not compilers or compilers - {"real", "cpu"}:
        parser.error(f"--compilers={args.compilers!r}: give real, cpu or real,cpu")
    if args.list:
        for name in {**ROWS, **COMPILED}:
            cpu = ("cached" if cached(name) else "not cached") if name in ROWS else ""
            real = f"{COMPILED[name].target}: layers cached {cached_depths(name) or 'none'}" if name in COMPILED else ""
            print(f"{name:18s} XLA:CPU {cpu:10s}  {real}")
        return 0

    def report(name: str, layers: int | None, compiler: str) -> AotReport | None:
        asked = compiler in compilers and (not args.only or name in args.only)
        found = None if (args.force and asked) else cached(name, layers)
        if found is None and asked and not args.no_compile:
            try:
                found = compile_row(name, layers)
            except RuntimeError as e:  # the compiler crashed: the other rows still count
                code = re.search(r"failed \(exit (-?\d+)\)", str(e))
                last = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
                print(
                    f"  {name}, {layers or 'all'} layers: the compiler failed (exit {code and code.group(1)}), "
                    f"row left out: {last}",
                    flush=True,
                )
        return found

    cpu, estimates = {}, []
    for name in {**ROWS, **COMPILED}:
        if name in COMPILED:
            depths = sorted({int(n) for n in args.layers.split(",")} | set(cached_depths(name)))
            real = {n: r for n in depths if (r := report(name, n, "real")) is not None}
            if set(LAYERS) <= set(real) or any(map(refused_by_compiler, real.values())):
                estimates.append(estimate(name, real))
        if name in ROWS and (r := report(name, None, "cpu")) is not None:
            cpu[name] = r
    tables = {
        "arithmetic": arithmetic_table(),
        "compiled-table": compiled_table(estimates, cpu),
        "aot-table": cpu_table(cpu),
    }
    print(*tables.values(), sep="\n\n")
    if not args.no_readme:
        with open(README) as f:
            text = f.read()
        for tag, body in tables.items():
            text = replace_block(text, tag, body)
        with open(README, "w") as f:
            f.write(text)
        print(f"wrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
