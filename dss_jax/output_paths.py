"""Where a binary may write: the checks every binary makes on its output paths before any
work, so that a refused command leaves the disk as it was (docs/robustness.md).

    from dss_jax import output_paths
    output_paths.check_outputs(
        [output_paths.Output("INFER_OUTPUT", output_path)],
        inputs={"INFER_INPUT": input_path, "CHECKPOINT_PATH": checkpoint_path},
        overwrite=overwrite,
        overwrite_setting="--gin.OVERWRITE=True",
    )

An output is refused in one line naming its setting, the path and what it collides with
when it (a) is one of the command's inputs (the same file, also through a symlink or a
hard link), (b) lies in a training run or a checkpoint (is it, is a file of it, or lies in
its train/, validation/ or checkpoint_<step>/; a new directory beside those, such as
MODEL_DIR/eval, is fine), (c) is another output of the same command, or (d) already holds
a result, unless `overwrite` (the binary's --overwrite or --gin.OVERWRITE=True). (a) to
(c) hold even with `overwrite`: nothing can be gained by writing over an input or a run.
An output that cannot be written (a directory where a file goes or the reverse, a parent
that is a file, a read-only or full file system: a small file is written and removed to
find out) is refused the same way, before the work that would have been lost.

`checkpoints.check_output_dir` adds the rules of a directory replaced whole (export,
convert); `files.naming_the_file` names the file of a write that fails anyway.

Paths may be object-store URLs (gs://bucket/x, dss_jax/files.py), with the same rules: a
prefix with objects under it is a directory, a URL names one object (an object store has
no links, so two URLs are the same file only when they are equal), and the probe writes
and removes a small object.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import uuid
from typing import Mapping, Optional, Sequence, Union

from dss_jax import files
from dss_jax.cli import UserError

PathLike = Union[str, os.PathLike]

# What marks a training run's MODEL_DIR or a checkpoint (named in checkpoints/locate.py,
# checkpoints/run.py and training/selection.py; tests/test_output_paths.py holds them equal).
LOCK_FILE = "train.lock"
CONFIG_FILE = "config.json"  # a model's: ours (d_model) or a Hugging Face one (model_type)
RUN_TASK_FILE = "task.json"
ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA")
RUN_STEP_DIR = re.compile(r"^checkpoint_\d+$")
RUN_METRICS_DIRS = ("train", "validation")  # a run's own metrics and TensorBoard logs
T5X_CHECKPOINT_FILE = "checkpoint"  # a T5X checkpoint_<step>/'s msgpack file (checkpoints/t5x.py)

PROBE_BYTES = 4096


class OutputPathError(UserError):
    """An output path that would replace or mix with something, or cannot be written."""


@dataclasses.dataclass(frozen=True)
class Output:
    """One output of a command.

    setting: how the user gave it ("INFER_OUTPUT", "--output"), for the error line.
    directory: the output is a directory the command writes into (else a file).
    files: a directory's files that the command writes, relative to it (each compared
      with the inputs, and must not be a directory).
    results: those of `files` that hold a finished result: an existing non-empty one is
      (d), unless `overwrite`.
    whole: a directory the command replaces whole (export, convert): an input inside it
      is (a); what may be replaced is `checkpoints.check_output_dir`'s to say.
    appends: a file the command extends (annotate's cache), so what it holds is no result.
    """

    setting: str
    path: PathLike
    directory: bool = False
    files: Sequence[str] = ()
    results: Sequence[str] = ()
    whole: bool = False
    appends: bool = False

    def named(self) -> str:
        return f"{self.setting}={self.path}"


def check_outputs(
    outputs: Sequence[Output],
    *,
    inputs: Optional[Mapping[str, Optional[PathLike]]] = None,
    overwrite: bool = False,
    overwrite_setting: Optional[str] = None,
    probe: bool = True,
) -> None:
    """OutputPathError for the first output that breaks a rule (see the module docstring).
    `inputs`: {setting: path} of what the command reads (None values are skipped).
    `overwrite_setting`: how the user says `overwrite`, named in the refusals; None for
    a binary with no such setting (its results are then never replaced). `probe`: write
    and remove a small file where each output goes, to find a read-only or full disk."""
    inputs = {k: v for k, v in (inputs or {}).items() if v is not None}
    not_even = f" (not even with {overwrite_setting})" if overwrite_setting else ""
    for i, out in enumerate(outputs):
        path = _real(out.path)
        for other in outputs[:i]:
            if path == _real(other.path) or _same_file(out.path, other.path):
                raise OutputPathError(
                    f"{out.named()} is also {other.setting}: each output needs a path of its own{not_even}"
                )
        inside = inside_run_or_checkpoint(path, directory=out.directory, whole=out.whole)
        if inside:
            raise OutputPathError(f"{out.named()} {inside}: give a path outside it{not_even}")
        _check_kind(out, path)
        _check_inputs(out, path, inputs, not_even)
        if probe:
            probe_writable(out.setting, out.path, path if out.directory else path.parent)
        if not overwrite:
            held = _held_result(out, path)
            if held:
                raise already_holds(out.named(), held, overwrite_setting)


def already_holds(named: str, what: str, overwrite_setting: Optional[str]) -> OutputPathError:
    """The refusal of an output that holds an earlier result `what` ("metrics.json")."""
    fix = f"pass {overwrite_setting} to replace it, or give" if overwrite_setting else "move it away or give"
    return OutputPathError(f"{named} already holds a result ({what}): {fix} another path")


def inside_run_or_checkpoint(path: pathlib.Path, *, directory: bool, whole: bool = False) -> Optional[str]:
    """How the absolute `path` lies in a training run or a checkpoint ("is a file of the
    training run /r"), or None. Directories below a run other than its own (MODEL_DIR/eval)
    are not part of it. `whole`: a directory output replaced whole may be a checkpoint
    (an earlier export), never a run: `checkpoints.check_output_dir` says which
    checkpoint may be replaced."""
    for ancestor in _ancestors(path):
        kind = run_or_checkpoint(ancestor)
        if kind is None:
            continue
        rel = path.relative_to(ancestor).parts
        if not rel:
            if whole and kind != "training run":
                continue
            return f"is the {kind} {ancestor}"
        if kind == "orbax checkpoint":  # everything in it is orbax's
            return f"lies in the {kind} {ancestor}"
        first = ancestor / rel[0]
        if rel[0] in RUN_METRICS_DIRS or RUN_STEP_DIR.match(rel[0]) or _is_orbax_item(first):
            return f"lies in {first}, part of the {kind} {ancestor}"
        if len(rel) == 1 and not directory:
            return f"would be a file of the {kind} {ancestor}"
        if len(rel) == 1 and first.is_file():
            return f"is a file of the {kind} {ancestor}"
    return None


def _is_t5x_export_step(d: pathlib.Path) -> bool:
    """A checkpoint_<step>/ dir that export --format=t5x writes: its msgpack file and the
    zarr arrays named by T5X's keys beside it."""
    names = _names(d)
    return T5X_CHECKPOINT_FILE in names and all(
        n == T5X_CHECKPOINT_FILE or n.startswith(("target.", "state.")) for n in names
    )


def run_or_checkpoint(d: pathlib.Path) -> Optional[str]:
    """The kind ("training run", "checkpoint", "orbax checkpoint", "T5X checkpoint export")
    of the directory `d`, or None: it holds train.lock, a checkpoint_<step>/ dir or a run's
    task.json; orbax's files; a model's config.json (a dss_jax or Hugging Face checkpoint);
    or nothing but checkpoint_<step>/ dirs of a `checkpoint` file and its zarr arrays
    (`target.*`, `state.*`: export --format=t5x's output)."""
    try:
        if files.is_remote(d):
            # A prefix is a directory when objects lie under it; listing an object would
            # list the object itself.
            names = {p.name for p in d.iterdir()} if d.is_dir() else set()
        else:
            names = set(os.listdir(d))
    except OSError:  # not a directory, or not readable: nothing to protect that we can see
        return None
    if names and all(RUN_STEP_DIR.match(n) and _is_t5x_export_step(d / n) for n in names):
        return "T5X checkpoint export"  # export --format=t5x's: replaced whole with --overwrite
    if LOCK_FILE in names or any(RUN_STEP_DIR.match(n) and (d / n).is_dir() for n in names):
        return "training run"
    if RUN_TASK_FILE in names and {"task", "options"} <= _json_keys(d / RUN_TASK_FILE):
        return "training run"
    if any(m in names for m in ORBAX_MARKERS):
        return "orbax checkpoint"
    if CONFIG_FILE in names and _json_keys(d / CONFIG_FILE) & {"d_model", "model_type"}:
        return "checkpoint"
    return None


def _names(d: pathlib.Path) -> set[str]:
    """The names in the directory `d` (empty when it is none)."""
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


def probe_writable(setting: str, given: PathLike, directory: pathlib.Path) -> None:
    """OutputPathError unless a file can be written in `directory` (or, when it does not
    exist yet, in its nearest existing parent, where it would be created): a small file
    is written there and removed. On an object store the object is written in `directory`
    itself, which needs no parent to exist, after no parent is found to be an object."""
    target = directory
    remote = files.is_remote(directory)
    while not target.exists() and not (remote and _is_bucket(target)):
        target = target.parent
    if target.exists() and not target.is_dir():
        raise OutputPathError(f"{setting}={given}: {target} is a file, not a directory")
    if remote:
        target = directory
    probe = target / f".dss_write_probe-{uuid.uuid4().hex}"
    if remote:  # no O_EXCL or partial writes on an object store: an object appears whole
        try:
            probe.write_bytes(b"\0" * PROBE_BYTES)
            probe.unlink()
        except Exception as e:  # the client's errors (no bucket, 401, 403) are not all OSErrors
            raise OutputPathError(f"{setting}={given}: cannot write in {target} ({_reason(e)})") from None
        return
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            data = memoryview(b"\0" * PROBE_BYTES)
            while data:  # a full disk or a file-size limit may first write part of it
                data = data[os.write(fd, data) :]
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise OutputPathError(
            f"{setting}={given}: cannot write in {target} ({e.strerror or os.strerror(e.errno)})"
        ) from None


def _reason(e: Exception) -> str:
    """Why a write failed, in one line (an object store's client puts its reply on more)."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    if isinstance(e, FileNotFoundError):
        return "no such bucket"  # a missing prefix needs no creating: the bucket is what is missing
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _real(path: PathLike) -> pathlib.Path:
    """The absolute path with every symlink of its existing part resolved (a URL as it is:
    an object store has no links)."""
    if files.is_remote(path):
        return files.path(files.absolute(path))
    return pathlib.Path(os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path)))))


def _same_file(a: PathLike, b: PathLike) -> bool:
    if files.is_remote(a) or files.is_remote(b):  # no links, no inodes: the same URL or not
        return files.is_remote(a) and files.is_remote(b) and files.absolute(a) == files.absolute(b)
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist
        return False


def _is_bucket(path) -> bool:
    """Whether the URL `path` is a bucket's root (gs://bucket), above which nothing is."""
    return "/" not in files.absolute(path).split("://", 1)[1]


def _ancestors(path: pathlib.Path) -> list:
    """`path` and its parents; for a URL, those in its bucket (epath goes on to gs:// and /)."""
    if not files.is_remote(path):
        return [path, *path.parents]
    out = [path]
    while not _is_bucket(out[-1]):
        out.append(out[-1].parent)
    return out


def _json_keys(path: pathlib.Path) -> set:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return set(data) if isinstance(data, dict) else set()


def _is_orbax_item(d: pathlib.Path) -> bool:
    return d.is_dir() and any((d / m).exists() for m in ORBAX_MARKERS)


def _check_kind(out: Output, path: pathlib.Path) -> None:
    """A file where a file goes, a directory where a directory goes; nothing else."""
    if out.directory:
        if path.exists() and not path.is_dir():
            raise OutputPathError(f"{out.named()} is a file; give a directory")
        for name in out.files:
            if (path / name).is_dir():
                raise OutputPathError(f"{out.named()}: {path / name} is a directory where a file goes")
            for parent in pathlib.PurePosixPath(name).parents[:-1]:  # those below `path`
                if (path / parent).exists() and not (path / parent).is_dir():
                    raise OutputPathError(f"{out.named()}: {path / parent} is a file where a directory goes")
        return
    if path.is_dir():
        raise OutputPathError(f"{out.named()} is a directory; give a file path")
    if path.exists() and not path.is_file():
        raise OutputPathError(f"{out.named()} is not a regular file (a device or a pipe?); give a file path")


def _check_inputs(out: Output, path: pathlib.Path, inputs: Mapping[str, PathLike], not_even: str) -> None:
    written = [(out.path, path)] + [(path / name, path / name) for name in out.files]
    for setting, source in inputs.items():
        real = _real(source)
        for given, target in written:
            if target == real or _same_file(target, source):
                which = "" if given is out.path else f" would write {target}, which"
                raise OutputPathError(
                    f"{out.named()}{which} is {setting} ({source}), which this command reads{not_even}; "
                    "give another path"
                )
        if out.directory and out.whole and path in real.parents:
            raise OutputPathError(
                f"{out.named()} holds {setting} ({source}), which this command reads, and would be "
                f"replaced whole{not_even}; give another path"
            )


def _held_result(out: Output, path: pathlib.Path) -> Optional[str]:
    """What earlier result the output holds ("12 lines", "metrics.json"), or None."""
    if out.appends:
        return None
    if not out.directory:
        return _non_empty(path)
    for name in out.results:
        if _non_empty(path / name):
            return str(path / name)
    return None


def _non_empty(path: pathlib.Path) -> Optional[str]:
    try:
        size = files.size_and_mtime_ns(path)[0] if path.is_file() else 0
    except OSError:
        return None
    return f"{size} bytes" if size else None
