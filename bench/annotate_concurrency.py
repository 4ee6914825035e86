"""Annotation throughput against concurrency, with a teacher that takes 200 ms per request.

Runs the real pipeline (HTTP backend, parsing, crash-safe cache appends with fsync)
against the scripted loopback server of `dss_jax.teacher.fake_server`, whose every reply
takes `--latency` seconds, and records examples/s for each worker count. With a remote
teacher the client's job is to keep enough requests in flight; the ideal is a straight
line `workers / latency` until the server saturates.

    python bench/annotate_concurrency.py --out_dir bench/results
writes annotate_concurrency.json and annotate_concurrency.png.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dss_jax.data import parsers
from dss_jax.data.cache import CacheWriter
from dss_jax.teacher.examples import Example
from dss_jax.teacher.fake_server import ScriptedOpenAIServer
from dss_jax.teacher.http_backend import HttpBackendConfig, OpenAIHttpBackend
from dss_jax.teacher.pipeline import AnnotateConfig, run_annotation
from dss_jax.teacher.prompts import default_template

flags.DEFINE_string("out_dir", "bench/results", "Where to write the JSON and the figure.")
flags.DEFINE_float("latency", 0.2, "Seconds the scripted server takes per request.")
flags.DEFINE_list("workers", ["1", "2", "4", "8", "16", "32", "64"], "Concurrency levels.")
flags.DEFINE_integer("rounds", 6, "Requests per run = rounds x workers (at least 8).")
FLAGS = flags.FLAGS


def teacher(prompt: str, index: int) -> str:
    return " Two and three make five. The answer is (2 + 3)."


def measure(server: ScriptedOpenAIServer, workers: int, n: int, tmp: str) -> float:
    examples = [
        Example(
            id=f"q{i}", input=f"Question {i}: add 2 and 3.", label="5", fields={"input": f"Question {i}: add 2 and 3."}
        )
        for i in range(n)
    ]
    backend = OpenAIHttpBackend(HttpBackendConfig(base_url=server.base_url, model="scripted"))
    config = AnnotateConfig(template=default_template("svamp"), teacher="scripted", concurrency=workers, progress=False)
    with CacheWriter(os.path.join(tmp, f"cache_{workers}.jsonl")) as writer:
        start = time.monotonic()
        summary = run_annotation(
            examples, backend, writer, config,
            parse=functools.partial(parsers.parse_completion, "svamp"),
            labels_match=functools.partial(parsers.labels_match, "svamp"),
        )  # fmt: skip
        seconds = time.monotonic() - start
    assert summary.written == n and summary.parsed == n
    return n / seconds


def main(argv):
    del argv
    levels = [int(w) for w in FLAGS.workers]
    results = []
    with tempfile.TemporaryDirectory() as tmp, ScriptedOpenAIServer(teacher, delay=FLAGS.latency) as server:
        for workers in levels:
            n = max(8, FLAGS.rounds * workers)
            rate = measure(server, workers, n, tmp)
            results.append({"workers": workers, "requests": n, "examples_per_s": rate})
            print(f"workers={workers:3d} requests={n:4d} {rate:7.2f} examples/s", flush=True)
    base = results[0]["examples_per_s"]
    for r in results:
        r["speedup_vs_1"] = r["examples_per_s"] / base
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    out = {"latency_s": FLAGS.latency, "results": results}
    with open(os.path.join(FLAGS.out_dir, "annotate_concurrency.json"), "w") as f:
        json.dump(out, f, indent=2)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(levels, [r["examples_per_s"] for r in results], "o-", label="measured")
    ax.plot(
        levels, [w / FLAGS.latency for w in levels], "--", color="gray", label=f"ideal (workers / {FLAGS.latency:g} s)"
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(levels, [str(w) for w in levels])
    ax.set_xlabel("concurrent workers (--concurrency)")
    ax.set_ylabel("examples / s")
    ax.set_title(f"annotate throughput, teacher latency {FLAGS.latency * 1000:.0f} ms")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(FLAGS.out_dir, "annotate_concurrency.png"), dpi=120)
    print(f"wrote {FLAGS.out_dir}/annotate_concurrency.json and .png")


if __name__ == "__main__":
    app.run(main)
