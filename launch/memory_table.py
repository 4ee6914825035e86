#!/usr/bin/env python3
r"""Regenerates the memory tables of launch/README.md.

    python launch/memory_table.py                 # every table; compiles what is not cached
    python launch/memory_table.py --only=xxl-fsdp_tp4-256 --force   # recompile one row
    python launch/memory_table.py --list          # the rows and whether they are cached

Two tables:
- the arithmetic: parameters, optimiser state (Adafactor factored vs AdamW) and gradients
  of each T5 v1.1 size, from the model's and the optimiser's abstract shapes;
- the proof by simulation: the real train step compiled ahead of time (dss_jax.aot) for
  a virtual CPU mesh of 64 or 256 devices, per-device memory from the compiled executable.

Each compile runs in its own process (the device count is fixed when jax starts) and is
cached as JSON in launch/aot_results/NAME.json, so the tables can be rewritten without
recompiling. A full XXL compile takes several minutes and a few GB of RAM on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from dss_jax.aot import GIB, AotConfig, AotReport, compile_in_subprocess  # noqa: E402

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


def cached(name: str) -> AotReport | None:
    path = os.path.join(RESULTS, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        report = AotReport.from_json(f.read())
    return report if report.config == ROWS[name] else None  # a changed row is recompiled


def compile_row(name: str) -> AotReport:
    print(f"[{time.strftime('%H:%M:%S')}] compiling {name}: {' '.join(ROWS[name].flags())}", flush=True)
    report = compile_in_subprocess(ROWS[name])
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
        f.write(report.to_json())
    print("  " + report.summary(), flush=True)
    return report


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def aot_table(reports: dict[str, AotReport]) -> str:
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


def arithmetic_table() -> str:
    """Parameters, optimiser state and gradients per size, exact from abstract shapes."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    from dss_jax import optimizers
    from dss_jax.model.config import T5Config
    from dss_jax.model.t5 import init_variables

    lines = [
        "| size | d_model / d_ff / heads / layers | params | f32 weights | Adafactor state | AdamW state | "
        "f32 gradients | weights + Adafactor per device: 8 / 64 / 256 devices (FSDP) | "
        "weights + AdamW per device: 8 / 64 / 256 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size in ("small", "base", "large", "xl", "xxl"):
        cfg = T5Config.preset(size, "t5.1.1")
        boxed = jax.eval_shape(lambda k: init_variables(cfg, k), jax.random.key(0))["params"]  # noqa: B023  (used in this iteration)
        params = jax.tree_util.tree_map(
            lambda x: x.value if hasattr(x, "value") else x, boxed, is_leaf=lambda x: hasattr(x, "value")
        )
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[], help="compile only these rows (repeatable)")
    parser.add_argument("--force", action="store_true", help="recompile even when a cached result exists")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("--no_readme", action="store_true", help="do not rewrite launch/README.md")
    parser.add_argument("--no_compile", action="store_true", help="use cached results only")
    args = parser.parse_args()
    unknown = [n for n in args.only if n not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {sorted(ROWS)}")
    if args.list:
        for name in ROWS:
            print(f"{name:28s} {'cached' if cached(name) else 'not cached'}  {' '.join(ROWS[name].flags())}")
        return 0

    reports = {}
    for name in ROWS:
        report = None if (args.force and (not args.only or name in args.only)) else cached(name)
        if report is None and not args.no_compile and (not args.only or name in args.only):
            report = compile_row(name)
        if report is not None:
            reports[name] = report
    aot = aot_table(reports)
    arithmetic = arithmetic_table()
    print(arithmetic, aot, sep="\n\n")
    if not args.no_readme:
        with open(README) as f:
            text = f.read()
        text = replace_block(text, "arithmetic", arithmetic)
        text = replace_block(text, "aot-table", aot)
        with open(README, "w") as f:
            f.write(text)
        print(f"wrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
