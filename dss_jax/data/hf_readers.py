"""Read the four datasets from Hugging Face `datasets` (a local copy, no download needed).

A user with the datasets in their Hugging Face cache, or saved with `save_to_disk`, needs
no zip of the paper's files: this gives rows in the paper's JSON shape, and cache records
(without teacher samples) that the annotate pipeline fills in.

    source    Hugging Face dataset         our split -> its split
    svamp     ChilleD/SVAMP (SVAMP.json)   all problems re-split as the paper (800/200)
    cqa       cos_e, config v1.11          train -> train, test -> validation
    esnli     esnli                        train, valid -> validation, test
    anli1     anli                         train -> train_r1, valid -> dev_r1, test -> test_r1

`path` may be a directory written by `Dataset(Dict).save_to_disk`, a local dataset
script/data directory, or None for the Hub name (then `datasets` reads its local cache;
set HF_DATASETS_OFFLINE=1 to forbid network access). Needs the `hf` extra.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

from dss_jax import files
from dss_jax.data import dss_paper, sources
from dss_jax.data.cache import CacheRecord


@dataclasses.dataclass(frozen=True)
class HFSource:
    name: str
    config: Optional[str]
    splits: dict[str, str]  # our split -> the Hugging Face split


HF_SOURCES: dict[str, HFSource] = {
    "svamp": HFSource("ChilleD/SVAMP", None, {"train": "train", "test": "test"}),
    "cqa": HFSource("cos_e", "v1.11", {"train": "train", "test": "validation"}),
    "esnli": HFSource("esnli", None, {"train": "train", "valid": "validation", "test": "test"}),
    "anli1": HFSource("anli", None, {"train": "train_r1", "valid": "dev_r1", "test": "test_r1"}),
}


def _import_datasets():
    try:
        import datasets  # optional dependency
    except ImportError:
        raise ImportError(
            "reading Hugging Face datasets needs the `datasets` package: pip install 'dss_jax[hf]'"
        ) from None
    return datasets


def _is_saved_to_disk(path: str) -> bool:
    return (files.path(path) / "dataset_dict.json").is_file() or (files.path(path) / "state.json").is_file()


def _load_split(dataset: str, hf_split: str, path: Optional[str]):
    datasets = _import_datasets()
    source = HF_SOURCES[dataset]
    if path is not None and not files.path(path).exists():
        raise FileNotFoundError(
            f"{path} not found; expected a directory saved with save_to_disk or a local "
            f"copy of the Hugging Face dataset {source.name}"
        )
    if path is not None and _is_saved_to_disk(path):
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            if hf_split not in loaded:
                raise KeyError(f"{path} has the splits {sorted(loaded)}; the {dataset} reader needs {hf_split!r}")
            return loaded[hf_split]
        return loaded  # a single saved split
    args = [path or source.name] + ([source.config] if source.config else [])
    return datasets.load_dataset(*args, split=hf_split)


def _svamp_order(row: dict[str, Any]) -> tuple[int, str]:
    # SVAMP.json lists chal-1 .. chal-1000 in order; the paper's split permutes that order.
    match = re.fullmatch(r"chal-(\d+)", str(row.get("ID", "")))
    return (int(match.group(1)) if match else -1, str(row.get("ID", "")))


def read_rows(dataset: str, split: str, path: Optional[str] = None) -> list[dict[str, Any]]:
    """The rows of one split, in the shape of the paper's `{dataset}_{split}.json`."""
    spec = sources.get_spec(dataset)
    source = HF_SOURCES[spec.name]
    if split not in source.splits:
        raise ValueError(f"{dataset} has the splits {sorted(source.splits)} here, not {split!r}")
    if spec.name == "svamp":
        # The Hub copy splits 700/300; the paper re-splits all 1000 problems 800/200.
        problems = []
        seen = set()
        for hf_split in dict.fromkeys(source.splits.values()):
            try:
                part = _load_split(dataset, hf_split, path)
            except (KeyError, ValueError):
                continue
            for row in part:
                if row.get("ID") not in seen:
                    seen.add(row.get("ID"))
                    problems.append(dict(row))
        if not problems:
            raise ValueError(f"no SVAMP problems found in {path or source.name}")
        problems.sort(key=_svamp_order)
        return sources.svamp_paper_split(problems, split)
    return [dict(row) for row in _load_split(dataset, source.splits[split], path)]


def read_records(dataset: str, split: str, path: Optional[str] = None) -> list[CacheRecord]:
    """Cache records (input, gold label, position; no teacher samples yet) of one split."""
    rows = read_rows(dataset, split, path)
    return list(dss_paper.records_from_rows(dataset, split, rows, None, where=f"{path or HF_SOURCES[dataset].name}"))
