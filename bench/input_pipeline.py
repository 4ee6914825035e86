r"""Input-pipeline throughput: paired examples/s through tokenize + pack.

    python bench/input_pipeline.py [--datasets svamp,cqa] [--data_dir ../shared/data/dss_palm]

For each dataset: the train split of the paper's files, imported into a temporary cache,
a SentencePiece vocabulary trained on it by dss_jax.data.vocab, then
`seqio.get_dataset(task, gin/tasks lengths, DssFeatureConverter(pack=True))` iterated to
the end. One untimed pass warms up (TF graph tracing, reading the cache); the timed passes
follow. Also times the numpy packer alone on pre-tokenized examples. Prints one JSON line
per dataset.
"""

import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags, logging

_DATASETS = flags.DEFINE_list("datasets", ["svamp", "cqa"], "Datasets to measure (their train split).")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "The paper's files (default: $DSS_PALM_DIR or ../shared/data/dss_palm)."
)
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 8000, "Size of the trained SentencePiece vocabulary.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed passes over the split.")
_RATIONALE_WEIGHT = flags.DEFINE_float("rationale_weight", 1.0, "λ; 0 packs label segments only.")


def measure(dataset: str, cache_dir: str) -> dict:
    import seqio

    import gin
    import tasks.dss  # noqa: F401
    from dss_jax.data.feature_converter import DssFeatureConverter, convert_numpy

    gin.clear_config()
    bindings = [f"data_locations.cache_dir = '{cache_dir}'", f"task_vocabulary.vocab_size = {_VOCAB_SIZE.value}"]
    if _DATA_DIR.value:
        bindings.append(f"data_locations.data_dir = '{_DATA_DIR.value}'")
    gin.parse_config(bindings)
    gin.parse_config_file(str(pathlib.Path(__file__).resolve().parents[1] / "gin" / "tasks" / f"{dataset}.gin"))
    lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
    task = seqio.get_mixture_or_task(f"dss_{dataset}")

    start = time.perf_counter()
    vocabulary = task.output_features["label_inputs"].vocabulary
    vocabulary.reset()
    vocab_size = vocabulary.vocab_size  # imports the split and trains the vocabulary
    setup_s = time.perf_counter() - start

    def one_pass():
        converter = DssFeatureConverter(pack=True, rationale_weight=_RATIONALE_WEIGHT.value)
        ds = seqio.get_dataset(task, lengths, converter, dataset_split="train", shuffle=False, verbose=False)
        rows = sum(1 for _ in ds.as_numpy_iterator())
        return rows, converter.stats

    one_pass()  # warm-up
    times, stats = [], None
    for _ in range(_REPEATS.value):
        t = time.perf_counter()
        rows, stats = one_pass()
        times.append(time.perf_counter() - t)
    examples = stats.segments // (2 if _RATIONALE_WEIGHT.value > 0 else 1)
    best = min(times)

    # The packer alone, on the same examples already tokenized.
    tokenized = list(task.get_dataset(lengths, split="train", shuffle=False).as_numpy_iterator())
    t = time.perf_counter()
    convert_numpy(tokenized, lengths, pack=True, rationale_weight=_RATIONALE_WEIGHT.value)
    pack_s = time.perf_counter() - t
    return {
        "dataset": dataset,
        "examples": examples,
        "rows": rows,
        "feature_lengths": lengths,
        "vocab_size": vocab_size,
        "setup_s": round(setup_s, 2),
        "pass_s": [round(x, 3) for x in times],
        "examples_per_s": round(examples / best, 1),
        "packer_only_examples_per_s": round(examples / pack_s, 1),
        "encoder_efficiency": round(stats.encoder_efficiency, 4),
        "decoder_efficiency": round(stats.decoder_efficiency, 4),
        "efficiency": round(stats.efficiency, 4),
        "row_lengths": converter_row_lengths(lengths),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def converter_row_lengths(lengths) -> list:
    from dss_jax.data.feature_converter import DssFeatureConverter

    rows = DssFeatureConverter(pack=True, rationale_weight=_RATIONALE_WEIGHT.value).get_model_feature_lengths(lengths)
    return [rows["encoder_input_tokens"], rows["decoder_target_tokens"]]


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    with tempfile.TemporaryDirectory() as cache_dir:
        for dataset in _DATASETS.value:
            print(json.dumps(measure(dataset, cache_dir)), flush=True)


if __name__ == "__main__":
    app.run(main)
