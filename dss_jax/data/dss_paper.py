"""Import the paper's released files (datasets + PaLM-540B completions) into our cache.

The layout (the authors' `datasets/` folder, e.g. `../shared/data/dss_palm`):

    {dss_dir}/{dataset}/{dataset}_{split}.json     JSON lines, one example per line
    {dss_dir}/{dataset}/llm/{split}_CoT_{k}.json   a JSON list of raw completions for
                                                   lines [k*B, (k+1)*B) of that split

with B (the chunk size) 500 for svamp, 1000 for cqa, 5000 for anli1, 5500 for esnli.
Completions are aligned with lines by position only, so the importer checks every chunk
has exactly B completions (the last one the remainder) before pairing them.

Each line becomes one `CacheRecord` with id `{dataset}/{split}/{position}`, its
position in the source split, the input built as the reference builds it, the gold
label, and one teacher sample parsed by `dss_jax.data.parsers`.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Iterator, Optional

from dss_jax import files
from dss_jax.cli import UserError
from dss_jax.data import parsers, report, sources
from dss_jax.data.cache import CacheRecord, CacheWriter, TeacherSample

TEACHER = "palm-540b"
PROMPT_ID = "dss-paper-cot"


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder of the paper's layout is missing; the message names it."""


class MalformedFileError(UserError, ValueError):
    """A file of the paper's layout does not hold what it should; the message names it."""


def split_path(dss_dir: str | os.PathLike, dataset: str, split: str) -> pathlib.Path:
    return files.path(dss_dir) / dataset / f"{dataset}_{split}.json"


def completions_path(dss_dir: str | os.PathLike, dataset: str, split: str, k: int) -> pathlib.Path:
    return files.path(dss_dir) / dataset / "llm" / f"{split}_CoT_{k}.json"


def _check_dir(dss_dir: str | os.PathLike, dataset: str) -> None:
    root = files.path(dss_dir)  # a local folder or a gs:// prefix
    if not root.is_dir():
        raise MissingFileError(
            f"--dss_dir {root} is not a directory; expected the paper's datasets folder "
            f"holding {', '.join(d + '/' for d in sources.DATASETS)} (e.g. ../shared/data/dss_palm)"
        )
    if not (root / dataset).is_dir():
        raise MissingFileError(
            f"{root / dataset} not found; expected {dataset}/{dataset}_<split>.json and "
            f"{dataset}/llm/<split>_CoT_<k>.json under {root}"
        )


def read_rows(dss_dir: str | os.PathLike, dataset: str, split: str) -> list[dict[str, Any]]:
    """The JSON lines of `{dataset}_{split}.json`; errors name the file and line."""
    sources.get_spec(dataset)
    _check_dir(dss_dir, dataset)
    path = split_path(dss_dir, dataset, split)
    if not path.is_file():
        present = sorted(p.name for p in path.parent.glob(f"{dataset}_*.json"))
        raise MissingFileError(
            f"{path} not found; expected the {split!r} split of {dataset} as JSON lines "
            f"(present: {', '.join(present) or 'none'})"
        )
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise MalformedFileError(f"{path}:{lineno}: not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise MalformedFileError(f"{path}:{lineno}: expected a JSON object")
            rows.append(row)
    return rows


def read_completions(dss_dir: str | os.PathLike, dataset: str, split: str, n_rows: int) -> list[str]:
    """All completions of a split, checked against the chunk layout and `n_rows`."""
    chunk = sources.get_spec(dataset).chunk_size
    n_chunks = max(1, -(-n_rows // chunk))
    completions: list[str] = []
    for k in range(n_chunks):
        path = completions_path(dss_dir, dataset, split, k)
        expected = min(chunk, n_rows - k * chunk)
        if not path.is_file():
            raise MissingFileError(
                f"{path} not found; {split_path(dss_dir, dataset, split).name} has {n_rows} lines, "
                f"so {n_chunks} completion file(s) of up to {chunk} are expected "
                f"({split}_CoT_0.json .. {split}_CoT_{n_chunks - 1}.json)"
            )
        try:
            with path.open(encoding="utf-8") as f:
                chunk_completions = json.load(f)
        except json.JSONDecodeError as e:
            raise MalformedFileError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(chunk_completions, list) or not all(isinstance(c, str) for c in chunk_completions):
            raise MalformedFileError(f"{path}: expected a JSON list of completion strings")
        if len(chunk_completions) != expected:
            raise MalformedFileError(
                f"{path}: holds {len(chunk_completions)} completions, expected {expected} "
                f"(lines {k * chunk}..{k * chunk + expected - 1} of the split, chunk size {chunk})"
            )
        completions += chunk_completions
    extra = completions_path(dss_dir, dataset, split, n_chunks)
    if extra.exists():
        raise MalformedFileError(f"{extra}: more completion files than the {n_rows} lines of the split need")
    return completions


def records_from_rows(
    dataset: str,
    split: str,
    rows: list[dict[str, Any]],
    completions: Optional[list[str]] = None,
    teacher: str = TEACHER,
    prompt_id: str = PROMPT_ID,
    where: str = "<rows>",
) -> Iterator[CacheRecord]:
    """Cache records of one split; with `completions`, one parsed teacher sample each."""
    family = sources.family_of(dataset)
    for position, row in enumerate(rows):
        row_where = f"{where}: line {position + 1}"
        samples: tuple[TeacherSample, ...] = ()
        if completions is not None:
            parsed = parsers.parse_completion(family, completions[position])
            samples = (TeacherSample(parsed.rationale, parsed.label, completions[position], teacher, prompt_id),)
        meta = {}
        if sources.source_id(row) is not None:
            meta["source_id"] = sources.source_id(row)
        yield CacheRecord(
            id=f"{dataset}/{split}/{position}",
            input=sources.build_input(dataset, row, row_where),
            label=sources.gold_label(dataset, row, row_where),
            samples=samples,
            dataset=dataset,
            split=split,
            position=position,
            meta=meta,
        )


def import_split(dss_dir: str | os.PathLike, dataset: str, split: str) -> list[CacheRecord]:
    """The records of one split of the released files, with the PaLM completions."""
    rows = read_rows(dss_dir, dataset, split)
    completions = read_completions(dss_dir, dataset, split, len(rows))
    return list(records_from_rows(dataset, split, rows, completions, where=str(split_path(dss_dir, dataset, split))))


def write_cache(records: list[CacheRecord], output: str | os.PathLike, overwrite: bool = False) -> None:
    """Writes a complete cache file atomically (a temporary file, then a rename)."""
    output = files.path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; delete it or pass overwrite=True (--overwrite)")
    with files.atomic_output(output) as tmp, CacheWriter(tmp, fsync=False) as writer:
        writer.write_all(records)
        writer.sync()


def import_to_cache(
    dss_dir: str | os.PathLike,
    dataset: str,
    split: str,
    output: str | os.PathLike,
    overwrite: bool = False,
) -> report.CacheReport:
    records = import_split(dss_dir, dataset, split)
    write_cache(records, output, overwrite=overwrite)
    return report.summarize(records, sources.family_of(dataset))
