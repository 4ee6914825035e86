#!/usr/bin/env python3
r"""The TPU compiler's estimate of the DSS train step's time and MFU on TPU v5e and v5p:
an estimate from the compiler's cost analysis, not a measurement.

    python bench/tpu_estimate.py                          # base and large on v5e and v5p
    python bench/tpu_estimate.py --sizes=base --targets=v5e --layers=1,2,4   # the line checked at 4
    python bench/tpu_estimate.py --table                  # the table from cached compiles only

For each T5 v1.1 size and TPU generation the real train step (`dss_jax.aot`: bfloat16
compute, float32 master weights, Adafactor, full rematerialisation, 16 packed rows of
512/384 tokens per chip, FSDP over a 2x2 slice, so 64 rows a step as in the paper) is
compiled by libtpu's TPU compiler for compile-only devices, with few layers per stack
(a 1-layer base step took 2.7 to 3.3 minutes to compile on a 2-core CPU). The
compiler's cost analysis gives each chip's FLOPs and bytes accessed; both grow about
linearly with depth, and the line through the two shallowest compiles gives the full depth (a
deeper compile given with --layers checks the line: its relative error). Two readings:

    compute bound   t >= compiler FLOPs / peak bf16 FLOP/s, so
                    MFU <= model FLOPs / compiler FLOPs (what rematerialisation and
                    full-row attention add to the model's work)
    roofline        t = max(compiler FLOPs / peak, bytes accessed / HBM bandwidth), with
                    the compiler's count of bytes accessed (every op's operands and
                    results; it may count more than HBM traffic)

The compiler's own `optimal_seconds` is not usable for this program (libtpu 0.0.42
returns a negative value). Model FLOPs as in bench/flops.py (6 x MACs), a row counted as
one 512/384 segment (padding and packing ignored). These are estimates from the
compiler's accounting, not measurements. Each compile is cached as JSON in
bench/results/tpu_estimate/ and the table is printed from the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "bench"))

import flops as model_flops  # noqa: E402

from dss_jax import aot  # noqa: E402
from dss_jax.aot import AotConfig, AotReport, extend_to_depth  # noqa: E402

RESULTS = os.path.join(REPO, "bench", "results", "tpu_estimate")
# Data-sheet figures of one chip: dense bf16 TFLOP/s, HBM GB/s; the topology compiled.
CHIPS = {
    "v5e": {"peak_tflops": 197.0, "hbm_gbps": 819.0, "target": "tpu:v5e:2x2"},
    "v5p": {"peak_tflops": 459.0, "hbm_gbps": 2765.0, "target": "tpu:v5:2x2x1"},
}
DEVICES, ROWS_PER_CHIP, ENC, DEC = 4, 16, 512, 384
FULL_DEPTH = {"base": 12, "large": 24}


def config(size: str, chip: str, layers: int) -> AotConfig:
    return AotConfig(
        size=size,
        num_layers=layers,
        rules="fsdp",
        num_devices=DEVICES,
        batch_size=DEVICES * ROWS_PER_CHIP,
        encoder_length=ENC,
        decoder_length=DEC,
        remat_policy="full",
        dtype="bfloat16",
        optimizer="adafactor",
        target=CHIPS[chip]["target"],
    )


def cache_path(size: str, chip: str, layers: int) -> str:
    return os.path.join(RESULTS, f"{size}-{chip}-{layers}.json")


def compiled(size: str, chip: str, layers: int, compile_missing: bool) -> AotReport | None:
    path = cache_path(size, chip, layers)
    report = aot.cached_report(path, config(size, chip, layers))
    if report is not None or not compile_missing:
        return report
    print(f"[{time.strftime('%H:%M:%S')}] compiling {size}, {layers} layers, for {chip} ...", flush=True)
    report = aot.compile_in_subprocess(config(size, chip, layers))
    if not report.fits or report.flops <= 0:
        raise SystemExit(f"{size} {chip} {layers} layers: {report.compiler_message or 'no cost analysis'}")
    aot.write_report(path, report)
    print(f"    {report.compile_seconds:.0f}s: {report.flops:.4g} FLOPs, {report.bytes_accessed:.4g} bytes", flush=True)
    return report


def estimate(size: str, chip: str, reports: dict[int, AotReport]) -> dict:
    """The full-depth figures from the line through the two shallowest compiles, checked
    against the deepest other compile (its relative error), and the two time bounds."""
    full = FULL_DEPTH[size]
    if len(reports) < 2:
        raise SystemExit(f"{size} on {chip}: compile at least two depths (--layers)")
    out = {"size": size, "chip": chip}
    for key in ("flops", "bytes_accessed"):
        line = extend_to_depth({n: getattr(r, key) for n, r in reports.items()}, full)
        out[key], out[f"{key}_check_error"] = line["value"], line["check_error"]
        out["depths"], out["checked_at"] = line["fitted"], line["checked_at"]
    chip_data = CHIPS[chip]
    model = config(size, chip, full).model_config()
    out["model_flops"] = model_flops.train_flops(model, [(ENC, DEC)] * ROWS_PER_CHIP)
    # Compute bound: the compiled program's own FLOPs at the chip's peak.
    out["compute_seconds"] = out["flops"] / (chip_data["peak_tflops"] * 1e12)
    out["mfu_compute_bound"] = out["model_flops"] / out["flops"]
    # Roofline with the compiler's bytes accessed at the chip's HBM bandwidth.
    out["memory_seconds"] = out["bytes_accessed"] / (chip_data["hbm_gbps"] * 1e9)
    out["roofline_seconds"] = max(out["compute_seconds"], out["memory_seconds"])
    out["mfu_roofline"] = model_flops.mfu(out["model_flops"], out["roofline_seconds"], chip_data["peak_tflops"])
    out["rows_per_second_roofline"] = ROWS_PER_CHIP / out["roofline_seconds"]
    return out


def table(estimates: list[dict]) -> str:
    lines = [
        "| size | chip | compiled depths (check) | model TFLOPs/step | compiler TFLOPs/step | MFU bound, compute "
        "| compiler GB accessed/step | step at roofline (ms) | MFU at roofline | rows/s per chip at roofline |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in estimates:
        check = (
            f" ({e['checked_at']}: FLOPs {e['flops_check_error']:+.1%}, bytes {e['bytes_accessed_check_error']:+.1%})"
            if e["checked_at"] is not None
            else ""
        )
        lines.append(
            f"| {e['size']} | {e['chip']} | {', '.join(map(str, e['depths']))}{check} "
            f"| {e['model_flops'] / 1e12:.2f} | {e['flops'] / 1e12:.2f} | {e['mfu_compute_bound']:.0%} "
            f"| {e['bytes_accessed'] / 1e9:.0f} | {1e3 * e['roofline_seconds']:.0f} | {e['mfu_roofline']:.0%} "
            f"| {e['rows_per_second_roofline']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="base,large")
    p.add_argument("--targets", default="v5e,v5p")
    p.add_argument(
        "--layers",
        default="1,2",
        help="depths to compile (per stack); the two shallowest give the line, others check it",
    )
    p.add_argument("--table", action="store_true", help="only print the table of what is cached")
    args = p.parse_args(argv)
    estimates = []
    for size in args.sizes.split(","):
        for chip in args.targets.split(","):
            reports = {}
            for layers in sorted(
                {int(n) for n in args.layers.split(",")} | set(aot.cached_depths(RESULTS, f"{size}-{chip}-"))
            ):
                report = compiled(size, chip, layers, compile_missing=not args.table)
                if report is not None:
                    reports[layers] = report
            if len(reports) >= 2:
                estimates.append(estimate(size, chip, reports))
    print(table(estimates))
    print(json.dumps(estimates, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
