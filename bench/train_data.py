"""The benchmark's examples: the paper's SVAMP/CQA records with their PaLM rationales,
tokenized once and shared by both implementations (or a synthetic set when the paper's
files are absent).

    examples, lengths, rows, vocab_size, dataset, source = load_tokenized(dataset, count, seed)

`examples` are paired token examples (label_inputs, label_targets, rationale_inputs,
rationale_targets; int32, each ending in EOS, truncated to the task feature lengths of
gin/tasks/<dataset>.gin), in a seeded random order. Both implementations consume exactly
these token lists, so they train on the same real tokens.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import random
import re
from typing import Optional

import numpy as np

from dss_jax import files
from dss_jax.data import options as dss_options
from dss_jax.data import paired as dss_paired

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PAIRED = ("label_inputs", "label_targets", "rationale_inputs", "rationale_targets")
# Feature lengths of the synthetic set (its problems are short).
SYNTHETIC_LENGTHS = {"label_inputs": 64, "label_targets": 32, "rationale_inputs": 64, "rationale_targets": 64}
SYNTHETIC_ROWS = (256, 192)
VOCAB_PIECES = 8000
TOKENIZED_FORMAT = 1  # bump when the tokenized cache's layout or content rules change


def bench_cache_dir() -> pathlib.Path:
    """$DSS_CACHE_DIR/bench (default ~/.cache/dss_jax/bench): the vocabulary and tokenized splits."""
    return pathlib.Path(os.environ.get("DSS_CACHE_DIR") or pathlib.Path("~/.cache/dss_jax").expanduser()) / "bench"


def data_dir(explicit: Optional[str] = None) -> pathlib.Path:
    """--data_dir, else $DSS_PALM_DIR, else ../shared/data/dss_palm next to the repo."""
    return pathlib.Path(explicit or os.environ.get("DSS_PALM_DIR") or REPO_ROOT.parent / "shared" / "data" / "dss_palm")


def feature_lengths(dataset: str) -> tuple[dict[str, int], tuple[int, int]]:
    """(task feature lengths, packed (encoder, decoder) row lengths) from gin/tasks/<dataset>.gin.

    Read as text (the gin file's imports would pull in the task registry, not needed here).
    """
    if dataset == "synthetic":
        return dict(SYNTHETIC_LENGTHS), SYNTHETIC_ROWS
    path = REPO_ROOT / "gin" / "tasks" / f"{dataset}.gin"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: no task feature lengths for dataset {dataset!r}")
    text = path.read_text()
    match = re.search(r"^TASK_FEATURE_LENGTHS\s*=\s*(\{[^}]*\})", text, re.M)
    enc = re.search(r"^DssFeatureConverter\.pack_encoder_length\s*=\s*(\d+)", text, re.M)
    dec = re.search(r"^DssFeatureConverter\.pack_decoder_length\s*=\s*(\d+)", text, re.M)
    if not (match and enc and dec):
        raise ValueError(f"{path}: expected TASK_FEATURE_LENGTHS and DssFeatureConverter.pack_*_length bindings")
    lengths = {k: int(v) for k, v in re.findall(r'"(\w+)"\s*:\s*(\d+)', match.group(1))}
    return lengths, (int(enc.group(1)), int(dec.group(1)))


def paper_examples(dataset: str, directory: pathlib.Path) -> list[dict[str, str]]:
    """Paired text examples of the train split, built by the project's own task code
    (gold labels and the PaLM rationale, as the reference's default `--label_type gt`)."""
    from dss_jax.data import dss_paper

    records = dss_paper.import_split(directory, dataset, "train")
    examples, _ = dss_paired.training_examples(records, dss_options.TaskOptions())
    return examples


def synthetic_examples(count: int, seed: int = 0) -> list[dict[str, str]]:
    """SVAMP-like arithmetic word problems with step-by-step rationales."""
    rng = random.Random(seed)
    names = ["Tom", "Ann", "Luke", "Faye", "Julia", "Danny", "Maria", "Omar", "Priya", "Chen"]
    things = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "shells", "coins"]
    out = []
    for i in range(count):
        who, other, what = rng.choice(names), rng.choice(names), rng.choice(things)
        a, b = rng.randint(2, 99), rng.randint(2, 40)
        op = rng.choice("+-*")
        if op == "-":
            a = a + b
        question = {
            "+": f"{who} has {a} {what}. {other} gives {who} {b} more {what}.\nHow many {what} does {who} have now?",
            "-": f"{who} had {a} {what} and gave {b} of them to {other}.\nHow many {what} does {who} have left?",
            "*": f"{who} fills {a} boxes with {b} {what} in each box.\nHow many {what} are there in all?",
        }[op]
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        rationale = {
            "+": f"{who} starts with {a} {what} and receives {b} more from {other}. "
            f"So {who} has {a} + {b} = {value} {what}.",
            "-": f"{who} had {a} {what} and gave away {b}. So {who} has {a} - {b} = {value} {what} left.",
            "*": f"There are {a} boxes and each box holds {b} {what}. So there are {a} * {b} = {value} {what}.",
        }[op]
        out.append(
            {
                "id": f"synthetic/{i}",
                "label_inputs": "predict: " + question,
                "label_targets": f"( {float(a)} {op} {float(b)} )",
                "rationale_inputs": "explain: " + question,
                "rationale_targets": rationale,
            }
        )
    return out


def vocabulary(examples: list[dict[str, str]], name: str):
    """A SentencePiece vocabulary trained (once, cached) on the examples' text."""
    from dss_jax.data import vocab

    texts = [ex[k] for ex in examples for k in PAIRED if ex[k]]
    return vocab.cached_vocabulary(
        texts, bench_cache_dir(), vocab.VocabSettings(vocab_size=VOCAB_PIECES), name=f"bench_{name}"
    )


def tokenize(examples: list[dict[str, str]], vocab, lengths: dict[str, int]) -> list[dict[str, np.ndarray]]:
    """Token ids + EOS, truncated to the feature lengths (EOS kept last, as seqio's
    append_eos_after_trim does)."""
    out = []
    for ex in examples:
        tok = {}
        for k in PAIRED:
            ids = list(vocab.encode(ex[k]))[: lengths[k] - 1] + [vocab.eos_id]
            tok[k] = np.asarray(ids, np.int32)
        out.append(tok)
    return out


def _tokenized_cache_path(
    dataset: str, directory: pathlib.Path, seed: int, lengths: dict[str, int], synthetic_count: int
) -> pathlib.Path:
    """Where the tokenized split is cached: keyed by the source files' bytes (or the
    synthetic set's size), the seed, the feature lengths and the vocabulary size."""
    key = hashlib.sha256(repr((TOKENIZED_FORMAT, dataset, seed, sorted(lengths.items()), VOCAB_PIECES)).encode())
    if dataset == "synthetic":
        key.update(str(synthetic_count).encode())
    else:
        for path in sorted(p for p in (directory / dataset).rglob("*") if p.is_file()):
            key.update(str(path.relative_to(directory)).encode())
            key.update(path.read_bytes())
    return bench_cache_dir() / f"tokenized_{dataset}_{key.hexdigest()[:16]}.npz"


def _save_tokenized(path: pathlib.Path, examples: list[dict[str, np.ndarray]], vocab_size: int) -> None:
    arrays = {"vocab_size": np.asarray(vocab_size)}
    for k in PAIRED:
        arrays[k] = np.concatenate([ex[k] for ex in examples]) if examples else np.zeros(0, np.int32)
        arrays[k + "_lengths"] = np.asarray([len(ex[k]) for ex in examples], np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _load_tokenized_cache(path: pathlib.Path) -> tuple[list[dict[str, np.ndarray]], int]:
    with np.load(path) as z:
        split = {k: np.split(z[k].astype(np.int32), np.cumsum(z[k + "_lengths"])[:-1]) for k in PAIRED}
        count = len(z[PAIRED[0] + "_lengths"])
        return [{k: split[k][i] for k in PAIRED} for i in range(count)], int(z["vocab_size"])


def load_tokenized(dataset: str, count: int, seed: int = 0, explicit_dir: Optional[str] = None):
    """(`count` tokenized examples in a seeded order, feature lengths, packed row lengths,
    vocabulary size, the dataset used, where the text came from).

    The whole split is tokenized once and cached (DSS_CACHE_DIR/bench/tokenized_*.npz, next
    to the vocabulary), so later runs need neither the vocabulary trainer nor the task
    code's TensorFlow/SeqIO imports: a machine without them (a GPU box with only JAX and
    PyTorch) runs the benchmark from a copied cache folder plus the data folder.
    """
    directory = data_dir(explicit_dir)
    if dataset != "synthetic" and not (directory / dataset).is_dir():
        print(f"[bench] {directory / dataset} not found: using the synthetic set instead", flush=True)
        dataset = "synthetic"
    lengths, rows = feature_lengths(dataset)
    synthetic_count = max(count, 2000)
    source = "synthetic" if dataset == "synthetic" else f"{directory / dataset} (train split, PaLM rationales)"
    cache = _tokenized_cache_path(dataset, directory, seed, lengths, synthetic_count)
    if cache.is_file():
        tokenized, vocab_size = _load_tokenized_cache(cache)
        print(f"[bench] tokenized {dataset} from {cache}", flush=True)
    else:
        if dataset == "synthetic":
            texts = synthetic_examples(synthetic_count, seed)
        else:
            texts = paper_examples(dataset, directory)
        vocab = vocabulary(texts, dataset)
        order = list(range(len(texts)))
        random.Random(seed).shuffle(order)
        tokenized, vocab_size = tokenize([texts[i] for i in order], vocab, lengths), vocab.vocab_size
        _save_tokenized(cache, tokenized, vocab_size)
    if count > len(tokenized):  # a small split: go round again
        tokenized = tokenized * (count // len(tokenized) + 1)
    return tokenized[:count], lengths, rows, vocab_size, dataset, source
