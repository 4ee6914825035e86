"""The teacher cache: validated reading, crash-safe appends, clear errors."""
import json

import pytest

from dss_jax.data import cache


def _rec(i, **kw):
    return cache.CacheRecord(
        id=f"ex{i}",
        input=f"question {i}",
        label=str(i),
        samples=(cache.TeacherSample(rationale=f"because {i}", label=str(i), completion="raw", teacher="t"),),
        **kw,
    )


def test_round_trip(tmp_path):
    path = tmp_path / "c.jsonl"
    with cache.CacheWriter(path) as w:
        w.write_all([_rec(0, position=0), _rec(1, dataset="svamp", split="train", position=1)])
    records = cache.read_cache(path)
    assert records == [_rec(0, position=0), _rec(1, dataset="svamp", split="train", position=1)]
    assert records[1].parsed_samples[0].rationale == "because 1"


def test_half_written_tail_is_dropped_and_repaired(tmp_path):
    path = tmp_path / "c.jsonl"
    with cache.CacheWriter(path) as w:
        w.write(_rec(0))
        w.write(_rec(1))
    full = path.read_bytes()
    # A crash in the middle of writing a third record.
    path.write_bytes(full + json.dumps(_rec(2).to_json()).encode()[:25])
    assert [r.id for r in cache.read_cache(path)] == ["ex0", "ex1"]
    with cache.CacheWriter(path) as w:
        assert w.ids == {"ex0", "ex1"}
        w.write(_rec(2))
    assert path.read_bytes() == full + (json.dumps(_rec(2).to_json()) + "\n").encode()
    assert [r.id for r in cache.read_cache(path)] == ["ex0", "ex1", "ex2"]


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "c.jsonl"
    good = json.dumps(_rec(0).to_json())
    path.write_text(good + "\n{not json}\n" + json.dumps(_rec(1).to_json()) + "\n")
    with pytest.raises(cache.CacheFormatError, match=r"c\.jsonl:2: not valid JSON"):
        cache.read_cache(path)


def test_missing_field_and_duplicate_id(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a"}\n')
    with pytest.raises(cache.CacheFormatError, match=r"c\.jsonl:1: missing .*'input'"):
        cache.read_cache(path)
    rec = json.dumps(_rec(0).to_json())
    path.write_text(rec + "\n" + rec + "\n")
    with pytest.raises(cache.CacheFormatError, match=r"c\.jsonl:2: duplicate id 'ex0' \(first at line 1\)"):
        cache.read_cache(path)


def test_writer_refuses_duplicates_and_second_writer(tmp_path):
    path = tmp_path / "c.jsonl"
    with cache.CacheWriter(path) as w:
        w.write(_rec(0))
        with pytest.raises(ValueError, match="already in the cache"):
            w.write(_rec(0))
        with pytest.raises(RuntimeError, match="being written by another process"):
            cache.CacheWriter(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        cache.read_cache(tmp_path / "nope.jsonl")
