"""launch/memory_table.py: the TPU compiler's per-device memory of the XL and XXL rows,
extended from shallow compiles to the full depth, and launch/README.md's tables held to
the committed compiles."""

import dataclasses
import re
import sys

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "launch"))

import memory_table

from dss_jax.aot import GIB

ROW = "xl-fsdp-64"


def _report(layers, total_gib, fits=True, message="", row=ROW):
    """A committed compile of `row` with the given depth and total (all of it temp)."""
    report = memory_table.cached(row, memory_table.LAYERS[0])
    assert report is not None, f"launch/aot_results/ lacks the committed compiles of {row}"
    total = int(total_gib * GIB)
    return dataclasses.replace(
        report,
        config=memory_table.compiled_config(row, layers),
        argument_bytes=0,
        output_bytes=0,
        alias_bytes=0,
        generated_code_bytes=0,
        temp_bytes=total if fits else 0,
        fits=fits,
        compiler_message=message,
    )


def test_a_row_is_extended_along_the_line_of_its_two_deepest_compiles():
    # 0.5 GiB + 0.25 GiB per layer at 2 and 4 layers: 6.5 GiB at 24. The 1-layer compile,
    # 1.5 GiB, sits off the line (an edge case): the line is 50% low there, and the error
    # is shown, but it does not bend the line.
    reports = {n: _report(n, 0.5 + 0.25 * n) for n in (2, 4)}
    reports[1] = _report(1, 1.5)
    e = memory_table.estimate(ROW, reports)
    assert e["total_bytes"] == pytest.approx(6.5 * GIB) and e["temp_bytes"] == pytest.approx(6.5 * GIB)
    assert e["per_layer_bytes"] == pytest.approx(0.25 * GIB) and e["fits"] and e["extended"]
    assert e["fitted"] == [2, 4] and e["total_bytes_errors"] == {1: pytest.approx(-0.5)}
    # 0.7 GiB per layer reaches 17.5 GiB at 24 layers: over the 15.75 GiB libtpu allows.
    steep = memory_table.estimate(ROW, {n: _report(n, 0.7 * n + 0.7) for n in (2, 4)})
    assert not steep["fits"] and steep["total_bytes_errors"] == {}
    table = memory_table.compiled_table([e, steep], {})
    assert "| 2, 4 (1: -50.0% (temp -50.0%)) |" in table and "| 2, 4 |" in table
    assert "| **6.50** (extended, 24) | 0.25 | yes, v5e (15.75 GiB) |" in table
    assert "| **17.50** (extended, 24) | 0.70 | no, v5e (15.75 GiB) |" in table
    # Deeper compiles check the line; they do not move it.
    reports[8] = _report(8, 2.0)
    assert memory_table.estimate(ROW, reports)["total_bytes_errors"][8] == pytest.approx(2.5 / 2.0 - 1)
    with pytest.raises(ValueError, match=r"the line needs compiles at \(2, 4\) layers per stack"):
        memory_table.estimate(ROW, {2: reports[2], 8: reports[8]})


def test_a_row_the_compiler_refused_at_a_shallow_depth_does_not_fit():
    refusal = "RESOURCE_EXHAUSTED: Ran out of memory on HBM ... exceeds available HBM (15.75G)"
    e = memory_table.estimate(ROW, {1: _report(1, 1.0), 2: _report(2, 0, fits=False, message=refusal)})
    assert e["refused_at"] == 2 and "total_bytes" not in e
    row = memory_table.compiled_table([e], {}).splitlines()[-1]
    assert "| 2: refused |" in row and "**does not fit**" in row and "no, v5e (15.75 GiB): `RESOURCE_EXHAUSTED" in row


def test_a_full_depth_compile_replaces_the_line_and_a_gpu_row_is_held_to_the_gpus_limits():
    # The line through 2 and 4 layers says 1 + 3 x 24 = 73 GiB; the full-depth compile says
    # 70 (the line is 4.3% high there). 70 GiB of temporaries are within an H100's 79.65 GiB
    # but over XLA's GPU scheduler limit ((80% of it) x 95% = 60.5 GiB): no fit.
    reports = {n: _report(n, 1 + 3 * n, row="xxl-fsdp-8") for n in (2, 4)}
    reports[24] = _report(24, 70, row="xxl-fsdp-8")
    e = memory_table.estimate("xxl-fsdp-8", reports)
    assert e["total_bytes"] == pytest.approx(70 * GIB) and not e["extended"]
    assert e["total_bytes_errors"] == {24: pytest.approx(73 / 70 - 1)}
    assert not e["fits"] and "exceed XLA's GPU scheduler limit" in e["why"]
    row = memory_table.compiled_table([e], {}).splitlines()[-1]
    assert "| GPU: h100:1x8 |" in row and "| 2, 4 (24: +4.3% (temp +4.3%)) |" in row
    assert "| **70.00** (compiled, 24) |" in row and "| no, h100 (79.65 GiB) |" in row


def test_the_readme_tables_are_those_of_the_committed_compiles(capsys):
    # Every row has its line's compiles (2 and 4 layers) with today's settings (a changed
    # row or AotConfig default makes its cache stale and this test fail), and
    # launch/README.md shows exactly the tables they give.
    for name in memory_table.COMPILED:
        depths = set(memory_table.cached_depths(name))
        assert set(memory_table.LAYERS) <= depths, f"{name}: compiles at {memory_table.LAYERS} layers missing or stale"
    assert memory_table.main(["--no_compile", "--no_readme"]) == 0
    printed = capsys.readouterr().out
    readme = (REPO_ROOT / "launch" / "README.md").read_text()
    for tag in ("arithmetic", "compiled-table", "aot-table"):
        block = re.search(rf"<!-- {tag}:start -->\n(.*?)\n<!-- {tag}:end -->", readme, re.S)
        assert block and block.group(1) in printed, f"launch/README.md's {tag} table differs from the cache"
