"""The teacher cache: validated reading, crash-safe appends, clear errors; nothing a
user wrote is dropped or overwritten."""

import errno
import json
import logging
import os

import pytest

from dss_jax.cli import UserError
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


def test_half_written_tail_is_skipped_then_moved_beside_the_cache(tmp_path, caplog):
    path = tmp_path / "c.jsonl"
    with cache.CacheWriter(path) as w:
        w.write(_rec(0))
        w.write(_rec(1))
    full = path.read_bytes()
    # A crash in the middle of writing a third record.
    torn = json.dumps(_rec(2).to_json()).encode()[:25]
    path.write_bytes(full + torn)
    assert [r.id for r in cache.read_cache(path)] == ["ex0", "ex1"]
    with caplog.at_level(logging.WARNING), cache.CacheWriter(path) as w:
        assert w.ids == {"ex0", "ex1"}
        w.write(_rec(2))
    assert path.read_bytes() == full + (json.dumps(_rec(2).to_json()) + "\n").encode()
    assert [r.id for r in cache.read_cache(path)] == ["ex0", "ex1", "ex2"]
    # The cut bytes are kept, not deleted, and the warning says where.
    (kept,) = tmp_path.glob("c.jsonl.torn-*")
    assert w.torn_path == str(kept) and kept.read_bytes() == torn
    assert str(kept) in caplog.text


def test_complete_last_record_without_newline_is_kept(tmp_path):
    # Another tool's "\n".join(...): every record complete, no final newline.
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(_rec(i).to_json()) for i in range(2)))
    assert [r.id for r in cache.read_cache(path)] == ["ex0", "ex1"]
    with cache.CacheWriter(path) as w:
        assert w.ids == {"ex0", "ex1"} and w.torn_path is None
        w.write(_rec(2))
    assert cache.read_cache(path) == [_rec(0), _rec(1), _rec(2)]
    assert not list(tmp_path.glob("*.torn-*"))


def test_blank_tail_without_newline_is_harmless(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(_rec(0).to_json()) + "\n   ")
    with cache.CacheWriter(path) as w:
        w.write(_rec(1))
    assert cache.read_cache(path) == [_rec(0), _rec(1)]
    assert not list(tmp_path.glob("*.torn-*"))


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


GOOD = {"id": "a", "input": "x", "label": None, "samples": [{"rationale": "r", "label": "1"}]}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"meta": ["a"]}, "'meta' must be a JSON object or null, got a list"),
        ({"meta": "note"}, "'meta' must be a JSON object or null, got a string"),
        ({"meta": 0}, "'meta' must be a JSON object or null, got an integer"),
        ({"position": True}, "'position' must be an integer >= 0 or null, got the boolean true"),
        ({"position": "3"}, "'position' must be an integer >= 0 or null, got a string"),
        ({"position": 1.0}, "'position' must be an integer >= 0 or null, got a number"),
        ({"position": -1}, "'position' must be an integer >= 0 or null, got -1"),
        ({"id": 7}, "required field 'id' must be a string, got an integer"),
        ({"id": ""}, "field 'id' is empty"),
        ({"input": ""}, "field 'input' is empty: a record without a problem"),
        ({"input": " \n\t"}, "field 'input' is empty"),
        ({"input": ["x"]}, "required field 'input' must be a string, got a list"),
        ({"label": True}, "field 'label' must be a string or null, got the boolean true"),
        ({"dataset": 3}, "field 'dataset' must be a string or null"),
        ({"samples": {"rationale": "r"}}, "field 'samples' must be a list, got an object"),
        ({"samples": ["r"]}, r"samples\[0\]: expected a JSON object, got a string"),
        ({"samples": [{"label": 1}]}, r"samples\[0\]: field 'label' must be a string or null"),
        ({"samples": [{"meta": ["x"]}]}, r"samples\[0\]: field 'meta' must be a JSON object or null, got a list"),
        ({"samples": [{"teacher": False}]}, r"samples\[0\]: field 'teacher' must be a string or null"),
    ],
)
def test_every_field_of_wrong_type_is_named_with_file_and_line(tmp_path, change, message):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(_rec(0).to_json()) + "\n" + json.dumps({**GOOD, **change}) + "\n")
    before = path.read_bytes()
    with pytest.raises(cache.CacheFormatError, match=r"c\.jsonl:2: .*" + message):
        cache.read_cache(path)
    with pytest.raises(cache.CacheFormatError, match=r"c\.jsonl:2: "):
        cache.CacheWriter(path)
    assert path.read_bytes() == before  # checked before anything is written
    assert issubclass(cache.CacheFormatError, UserError)


@pytest.mark.parametrize(
    "line, message",
    [
        (b'{"id": "a", "input": "caf\xe9"}', r"not valid UTF-8 \(byte 0xe9 at byte column 26\)"),
        (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
        (b'{"id": "a", "input": "x \\udc80 y"}', r'\["input"\] \(code point U\+DC80 .*unpaired UTF-16 surrogate'),
        (b'{"id": "a", "input": "x", "meta": {"k": ["\\ud800"]}}', r'\["meta"\]\["k"\]\[0\].*unpaired'),
        # Python's decoder takes these; stored and judged, they would read "nan" and "inf".
        (b'{"id": "a", "input": "x", "meta": {"score": NaN}}', "NaN is not a finite number"),
        (b'{"id": "a", "input": "x", "meta": {"score": -Infinity}}', "-Infinity is not a finite number"),
        (b'{"id": "a", "input": "x", "meta": {"score": 1e999}}', "1e999 is not a finite number"),
    ],
)
def test_unreadable_lines_are_named_before_anything_is_written(tmp_path, line, message):
    path = tmp_path / "c.jsonl"
    for terminated in (True, False):  # as the last line too: it parses or is not torn
        content = json.dumps(_rec(0).to_json()).encode() + b"\n" + line + (b"\n" if terminated else b"")
        if not terminated and b"\xe9" in line:
            continue  # an unterminated non-JSON tail is a crash's leftover (tested above)
        path.write_bytes(content)
        with pytest.raises(cache.CacheFormatError, match=r"c\.jsonl:2: .*" + message):
            cache.read_cache(path)
        with pytest.raises(cache.CacheFormatError, match=r"c\.jsonl:2: "):
            cache.CacheWriter(path)
        assert path.read_bytes() == content


def test_a_surrogate_in_a_new_record_is_refused_and_nothing_is_written(tmp_path):
    path = tmp_path / "c.jsonl"
    with cache.CacheWriter(path) as w:
        w.write(_rec(0))
        with pytest.raises(cache.CacheFormatError, match=r"'bad'.*\[\"input\"\].*unpaired"):
            w.write(cache.CacheRecord(id="bad", input="x \udc80"))
        w.write(_rec(1))
    assert cache.read_cache(path) == [_rec(0), _rec(1)]


def test_writer_on_a_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"is not a regular file \(a directory\?\)"):
        cache.CacheWriter(tmp_path)


def test_a_failed_append_names_the_cache(tmp_path):
    """A write on a full disk raises an error naming no file; the binary's one line needs it."""

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

    writer = cache.CacheWriter(tmp_path / "cache.jsonl")
    real = writer._file
    writer._file = FullDisk(real)
    with pytest.raises(OSError) as e:
        writer.write(cache.CacheRecord(id="a", input="x"))
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "cache.jsonl")
    writer._file = real
    writer.close()
