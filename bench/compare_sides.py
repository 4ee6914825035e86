"""The ratio of the two sides' real tokens/s, from the JSON lines bench/train_throughput.py
appends (bench/gpu.sh runs each side in its own process, then this):

    python bench/compare_sides.py RESULTS.jsonl SIZE

For each dataset of SIZE, the last record of each side is compared.
"""

from __future__ import annotations

import json
import sys


def compare(path: str, size: str) -> list[str]:
    last = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r["size"] == size:
                for side in ("jax", "ref"):
                    if side in r:
                        last[(r["dataset"], side)] = r[side]
    lines = []
    for dataset in sorted({d for d, _ in last}):
        jax_side, ref_side = last.get((dataset, "jax")), last.get((dataset, "ref"))
        if jax_side and ref_side:
            lines.append(
                f"== {dataset} {size}: dss_jax / reference real tokens/s "
                f"{jax_side['real_tokens_per_s'] / ref_side['real_tokens_per_s']:.2f}x "
                f"(MFU {jax_side.get('mfu', 0):.1%} vs {ref_side.get('mfu', 0):.1%})"
            )
    return lines


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python bench/compare_sides.py RESULTS.jsonl SIZE")
    print("\n".join(compare(sys.argv[1], sys.argv[2])))
