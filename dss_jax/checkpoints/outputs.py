"""Writing a checkpoint or an export directory without losing anything: a run or a
checkpoint is never written over, other non-empty directories only with `overwrite`, and
the output appears whole (written beside the target, renamed into place when complete).

    staged_output_dir(target, overwrite=, replaceable=, what=)  # a context manager
    check_output_dir(...)          # the refusals alone
    holds_run_or_checkpoint(dir)   # "a training run's checkpoint_5/", or None

`save_params` and `hf_convert.export_hf_checkpoint` write through `staged_output_dir`;
both are meant to be called from one process (the convert and export binaries).

A target may be an object-store URL (gs://bucket/model): it is written in a local
directory and uploaded when complete. An object store cannot rename a directory, so its
objects appear one by one; an output replaced there has its new objects uploaded over
the old ones first, and those of the old output that the new one lacks removed after.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import pathlib
import secrets
import shutil
import tempfile
from typing import Iterator, Optional, Sequence

from dss_jax import files
from dss_jax.checkpoints.locate import ORBAX_MARKERS, RUN_STEP_DIR
from dss_jax.cli import UserError


class OutputDirError(UserError, FileExistsError):
    """An output directory that would lose what it holds; the message says what to do."""


def holds_run_or_checkpoint(d: pathlib.Path, ignore: Sequence[str] = ()) -> Optional[str]:
    """What in `d` is a training run or a checkpoint (`checkpoint_<step>/`, an orbax item),
    e.g. "a training run's checkpoint_5/", or None. Entries matching `ignore` are skipped."""
    if any((d / m).exists() for m in ORBAX_MARKERS):
        return "an orbax checkpoint"
    for entry in sorted(d.iterdir()):
        if any(fnmatch.fnmatch(entry.name, pattern) for pattern in ignore):
            continue
        if entry.is_dir() and RUN_STEP_DIR.match(entry.name):
            return f"a training run's {entry.name}/"
        if entry.is_dir() and any((entry / m).exists() for m in ORBAX_MARKERS):
            return f"the orbax checkpoint {entry.name}/"
    return None


def check_output_dir(target: str | os.PathLike, *, overwrite: bool, replaceable: Sequence[str], what: str) -> bool:
    """OutputDirError unless `target` may receive `what`: it is new or empty, or (with
    `overwrite`) holds only entries matching `replaceable`. A run or a checkpoint (other
    than a `replaceable` one) is never written over. -> whether `target` has entries."""
    target = files.path(files.absolute(target)) if files.is_remote(target) else pathlib.Path(target)
    if not target.exists():
        return False
    if not target.is_dir():
        raise OutputDirError(f"{target} is a file; the output must be a directory")
    entries = sorted(e.name for e in target.iterdir())
    if not entries:
        return False
    held = holds_run_or_checkpoint(target, ignore=replaceable)
    if held:
        raise OutputDirError(
            f"{target} holds {held}: writing {what} there would replace its files "
            "(config.json, spiece.model); pick a new or empty output directory"
        )
    listing = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
    if not overwrite:
        raise OutputDirError(
            f"{target} is not empty ({listing}); pass --overwrite (overwrite=True) to "
            f"replace it with {what}, or pick a new directory"
        )
    foreign = [e for e in entries if not any(fnmatch.fnmatch(e, p) for p in replaceable)]
    if foreign:
        raise OutputDirError(
            f"{target} holds {', '.join(foreign[:5])}, which {what} does not consist of; "
            "--overwrite replaces only such an output whole: move them or pick another directory"
        )
    return True


@contextlib.contextmanager
def staged_output_dir(
    target: str | os.PathLike, *, overwrite: bool, replaceable: Sequence[str], what: str
) -> Iterator[pathlib.Path]:
    """Yields an empty directory beside `target` to write `what` into; when the block ends
    without an error it becomes `target` (by rename, so readers never see half of it), and
    a replaced old `target` is deleted only after that. On an error the staging directory
    is removed and `target` is untouched. Its files get the modes the user's umask gives a
    new file (safetensors writes 0600, which other users and containers cannot read).
    Refusals: see `check_output_dir`. An object-store target: see the module docstring."""
    if files.is_remote(target):
        with _staged_remote_dir(target, overwrite=overwrite, replaceable=replaceable, what=what) as staging:
            yield staging
        return
    target = pathlib.Path(target).absolute()
    replace = check_output_dir(target, overwrite=overwrite, replaceable=replaceable, what=what)
    target.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    staging = target.parent / f".{target.name}.partial-{token}"
    staging.mkdir()
    try:
        yield staging
        _normal_file_modes(staging)
        if replace:
            old = target.parent / f".{target.name}.replaced-{token}"
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old)
        else:
            os.replace(staging, target)  # onto a missing or empty directory
    finally:
        if staging.exists():
            shutil.rmtree(staging)


@contextlib.contextmanager
def _staged_remote_dir(target, *, overwrite: bool, replaceable: Sequence[str], what: str) -> Iterator[pathlib.Path]:
    """`staged_output_dir` for an object-store URL: a local directory, uploaded into
    `target` when the block ends without an error (the objects of a replaced output that
    the new one lacks are removed after). Object stores keep no file modes."""
    target = files.path(files.absolute(target))
    replace = check_output_dir(target, overwrite=overwrite, replaceable=replaceable, what=what)
    old = _object_names(target) if replace else set()
    with tempfile.TemporaryDirectory(prefix="dss_stage_") as tmp:
        staging = pathlib.Path(tmp) / target.name
        staging.mkdir()
        yield staging
        files.upload_tree(staging, target)
        new = {p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()}
    for name in sorted(old - new):
        (target / name).unlink(missing_ok=True)


def _object_names(d) -> set[str]:
    """The paths of every object below the URL `d`, relative to it."""
    names, todo = set(), [""]
    while todo:  # by listings: epath's walk drops the scheme of the paths it yields
        rel = todo.pop()
        for entry in (d / rel if rel else d).iterdir():
            name = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir():
                todo.append(name)
            else:
                names.add(name)
    return names


def _normal_file_modes(directory: pathlib.Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, 0o666 & ~umask)
