"""bench/tpu_estimate.py: the TPU compiler's figures for few layers, extended to the full
depth, and the two readings of them (compute bound, roofline)."""

import dataclasses
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))

import flops
import tpu_estimate

from dss_jax.aot import AotReport


def _report(size, chip, layers, flops_, bytes_):
    """A committed compile's report with the given figures (the fields estimate() reads)."""
    with open(tpu_estimate.cache_path("base", "v5e", 1)) as f:
        report = AotReport.from_json(f.read())
    return dataclasses.replace(
        report, config=tpu_estimate.config(size, chip, layers), flops=flops_, bytes_accessed=bytes_
    )


def test_the_line_through_two_depths_gives_the_full_depth_and_a_third_checks_it():
    # 2 + 1 TFLOPs and 10 + 5 GB per layer; the 4-layer compile is 5% above the line.
    reports = {n: _report("base", "v5e", n, (2 + n) * 1e12, (10 + 5 * n) * 1e9) for n in (1, 2)}
    reports[4] = _report("base", "v5e", 4, 6e12 * 1.05, 30e9)
    e = tpu_estimate.estimate("base", "v5e", reports)
    assert e["flops"] == pytest.approx(14e12) and e["bytes_accessed"] == pytest.approx(70e9)  # 12 layers
    assert e["flops_check_error"] == pytest.approx(1 / 1.05 - 1) and e["bytes_accessed_check_error"] == pytest.approx(0)
    model = flops.train_flops(tpu_estimate.config("base", "v5e", 12).model_config(), [(512, 384)] * 16)
    assert e["mfu_compute_bound"] == pytest.approx(model / 14e12)
    # v5e: 14 TFLOPs at 197 TFLOP/s (71 ms) vs 70 GB at 819 GB/s (85 ms): memory-bound.
    assert e["roofline_seconds"] == pytest.approx(70e9 / 819e9)
    assert e["mfu_roofline"] == pytest.approx(model / e["roofline_seconds"] / 197e12)


def test_the_committed_estimate_is_printed_from_its_cached_compiles():
    r = subprocess.run(
        [sys.executable, "bench/tpu_estimate.py", "--table"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith(("| base", "| large"))]
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| base", "v5e"],
        ["| base", "v5p"],
        ["| large", "v5e"],
        ["| large", "v5p"],
    ]
