"""Peak memory of `export --format=t5x`, the two forms side by side: every array inside
one msgpack file (`--t5x_inline_arrays`) against T5X Checkpointer's layout (each array a
zarr array beside the file, written one at a time).

    python bench/t5x_export_memory.py --size=base

Each form runs in a fresh process: random float32 parameters of the T5 v1.1 preset are
made, the process's resident memory is read, then `checkpoints.t5x.export_checkpoint`
writes into a temporary directory. Printed: the parameters' bytes, the peak resident
memory the export added beyond the parameters (getrusage's ru_maxrss against the
resident memory before it), and the wall time.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

CHILD = "--_child"


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(size: str, inline: bool, out: str) -> dict:
    import jax
    import numpy as np

    from dss_jax.checkpoints import t5x
    from dss_jax.model import interface
    from dss_jax.model.config import T5Config

    config = T5Config.preset(size)
    rng = np.random.default_rng(0)
    shapes = interface.build(config).abstract_params()
    params = jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape, dtype=np.float32), shapes)
    param_bytes = sum(a.nbytes for a in jax.tree_util.tree_leaves(params))
    before = _resident_bytes()
    start = time.perf_counter()
    t5x.export_checkpoint(params, config, 0, out, inline_arrays=inline)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"param_bytes": param_bytes, "added_peak_bytes": max(0, peak - before), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="base", help="a T5 v1.1 preset (tiny ... xxl)")
    parser.add_argument(CHILD, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        inline, out = args._child.split(":", 1)
        print(json.dumps(child(args.size, inline == "inline", out)))
        return
    gib = float(1 << 30)
    print(f"| T5 v1.1 {args.size} | parameters | peak memory added by the export | seconds |")
    print("|---|---:|---:|---:|")
    for form in ("inline", "zarr"):
        with tempfile.TemporaryDirectory() as tmp:
            r = subprocess.run(
                [sys.executable, __file__, f"--size={args.size}", f"{CHILD}={form}:{tmp}"],
                capture_output=True,
                text=True,
                check=True,
            )
            m = json.loads(r.stdout.strip().splitlines()[-1])
        name = "every array in the msgpack file" if form == "inline" else "zarr arrays beside it (T5X's layout)"
        print(
            f"| {name} | {m['param_bytes'] / gib:.2f} GiB | {m['added_peak_bytes'] / gib:.2f} GiB "
            f"| {m['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
