"""A training run's directory: its checkpoints (orbax: the whole train state plus where
the input was), the files that describe it, and the lock that keeps a second trainer out.

    MODEL_DIR/
      checkpoint_<step>/state/     step, float32 params, optimiser state
      checkpoint_<step>/metadata/  {"step", "input_position"}: global batches consumed,
                                   the examples and real tokens trained on, the
                                   settings they were trained with, and the checksums
                                   of the state (integrity.py), checked on a resume
      config.json                  the model config (with its family), one copy for every step
      spiece.model                 the task's vocabulary (or a Hugging Face tokenizer's TOKENIZER_FILES)
      task.json                    the task and task options it trains with
      config.gin                   every gin setting of the run (config.to_step_<S>.gin: the
                                   earlier ones of a run resumed at step S with others)
      train.lock                   the trainer that holds the run (RunLock)

A resumed run continues exactly where it stopped; eval, infer and export rebuild the
model and task from the directory alone. Saves are asynchronous; every process calls save
and orbax coordinates them. A save that cannot be written (a full disk, a lost mount)
ends as one `CheckpointWriteError` naming the checkpoint, the cause and the intact
checkpoints to resume from; orbax's own tracebacks of the failed background writes are
dropped (`--verbosity=1` keeps them). A step that is already saved is not saved again.

MODEL_DIR may be an object-store URL (gs://bucket/run): orbax writes the checkpoints there
itself, the files above are uploaded whole, and the lock is an object written only where
none is (`RunLock`).
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import re
import socket
import time
from typing import Any, Mapping, Optional, Sequence, Set

import orbax.checkpoint as ocp

from dss_jax import files
from dss_jax.checkpoints import integrity
from dss_jax.checkpoints.locate import (
    CHECKSUMS_KEY,
    CONFIG_FILE,
    METADATA_ITEM,
    RUN_GIN_FILE,
    RUN_TASK_FILE,
    STATE_ITEM,
    STEP_PREFIX,
    TOKENIZER_FILES,
    TOKENIZER_JSON,
    VOCAB_FILE,
    CheckpointError,
    checkpoint_steps,
    describing_file,
    step_dir,
)
from dss_jax.checkpoints.params import unreadable_error
from dss_jax.cli import UserError

LOCK_NAME = "train.lock"


class CheckpointWriteError(UserError, OSError):
    """A checkpoint could not be written; the earlier ones are intact."""


class RunLockedError(UserError):
    """Another trainer holds the run directory."""


class RunCheckpointer:
    def __init__(
        self,
        model_dir: str,
        *,
        keep: Optional[int] = None,
        keep_steps: Optional[Set[int]] = None,
        save_period: int = 1000,
        asynchronous: bool = True,
    ):
        """keep: how many of the latest checkpoints to keep (None: all); keep_steps: a set
        of steps whose checkpoints are kept besides them, read at every save (the caller
        may add to it, e.g. the steps validation selected)."""
        self.directory = files.absolute(model_dir)  # orbax reads and writes a gs:// URL itself
        self.save_period = save_period
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if keep_steps is not None else keep,
            preservation_policy=None if keep_steps is None else _LatestAndSteps(keep, keep_steps),
            create=True,
            step_prefix=STEP_PREFIX,
            enable_async_checkpointing=asynchronous,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._pending: Optional[int] = None  # the step whose asynchronous save may still fail
        self._failed = False
        _install_orbax_log_filter()

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, metadata: dict) -> None:
        """Saves `state` as step `step`, unless that step is saved already: the train state
        only moves with the step, so the saved one is the same (a non-finite loss right
        after a checkpoint, a preemption right after one, a run resumed at its end). The
        metadata gets the checksum of every array of the state (integrity.py), computed
        on the devices that hold them."""
        if self._pending is not None:
            # orbax finishes the previous background save first, and raises its failure from
            # this call: reported as that step's, not this one's.
            self.wait()
        if step in self._manager.all_steps():
            logging.info("step %d is already saved in %s", step, step_dir(self.directory, step))
            return
        metadata = {**metadata, CHECKSUMS_KEY: integrity.record({STATE_ITEM: integrity.scan(state)})}
        with self._reporting_write_errors(step):
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    **{STATE_ITEM: ocp.args.StandardSave(state), METADATA_ITEM: ocp.args.JsonSave(metadata)}
                ),
                force=True,
            )
        self._pending = step

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores the full state into the shardings of `abstract_state`, checked against
        the checksums saved with it and for NaN and infinity: a damaged step is refused
        (DamagedCheckpointError) rather than resumed from or passed over (see `_damaged`)."""
        where = step_dir(self.directory, step)
        try:
            out = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    **{STATE_ITEM: ocp.args.StandardRestore(abstract_state), METADATA_ITEM: ocp.args.JsonRestore()}
                ),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise unreadable_error(where, f"{type(e).__name__}: {e}") from None
        state, metadata = out[STATE_ITEM], dict(out[METADATA_ITEM] or {})
        recorded_in = os.path.join(where, METADATA_ITEM, METADATA_ITEM)
        integrity.verify(state, metadata.get(CHECKSUMS_KEY), STATE_ITEM, where, recorded_in, self._damaged(step))
        return state, metadata

    def _damaged(self, step: int) -> str:
        """What to do about a damaged step on a resume. The resume does not fall back to an
        earlier step by itself: the run would then save this step again, which orbax
        skips as saved, or overwrite it; a disk that damages checkpoints needs a person's
        eyes; and moving the step aside keeps it for a look (nothing is deleted)."""
        where = step_dir(self.directory, step)
        earlier = [s for s in checkpoint_steps(self.directory) if s < step]
        then = (
            f"to resume from {STEP_PREFIX}_{earlier[-1]}, the step before it" if earlier else "to train from the start"
        )
        move = "gcloud storage mv" if files.is_remote(where) else "mv"
        return (
            f"resuming would train on from damaged weights; move it aside ({move} {where} {where}.damaged) and rerun "
            f"{then}"
        )

    def read_metadata(self, step: int) -> dict:
        """The metadata saved with a step ({"step", "input_position", ...}), without its state."""
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(**{METADATA_ITEM: ocp.args.JsonRestore()}))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise unreadable_error(step_dir(self.directory, step), f"{type(e).__name__}: {e}") from None
        return dict(out[METADATA_ITEM] or {})

    def wait(self) -> None:
        with self._reporting_write_errors(self._pending):
            self._manager.wait_until_finished()
        self._pending = None

    def close(self) -> None:
        """Waits for the last save and releases orbax's threads; after a failed save (already
        reported) it only releases them, so that failure stays the one reported."""
        if self._failed:
            try:
                self._manager.close()
            except Exception:  # the same failed write, reported once already
                logging.debug("closing after a failed save", exc_info=True)
            return
        self.wait()
        self._manager.close()

    def _reporting_write_errors(self, step: Optional[int]):
        return _WriteErrors(self, step)


class _LatestAndSteps:
    """orbax's preservation policy: the `n` latest checkpoints (all when None) and those
    at `steps` (a set the caller may grow between saves)."""

    def __init__(self, n: Optional[int], steps: Set[int]):
        self.n, self.steps = n, steps

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> list[bool]:
        first_latest = 0 if self.n is None else len(checkpoints) - self.n
        return [i >= first_latest or c.step in self.steps for i, c in enumerate(checkpoints)]


class _WriteErrors:
    """Turns a failed checkpoint write into one CheckpointWriteError."""

    def __init__(self, ckpt: RunCheckpointer, step: Optional[int]):
        self.ckpt, self.step = ckpt, step

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if error is None or isinstance(error, UserError) or not is_write_error(error):
            return False
        self.ckpt._failed = True
        try:  # an earlier save still in flight either lands or fails; then list what is intact
            self.ckpt._manager.wait_until_finished()
        except Exception:  # that one is not saved then; the listing shows it
            logging.debug("an earlier save failed too", exc_info=True)
        where = step_dir(self.ckpt.directory, self.step) if self.step is not None else self.ckpt.directory
        intact = checkpoint_steps(self.ckpt.directory)
        advice = write_error_advice(error)
        if intact:
            after = (
                f"the earlier checkpoints ({', '.join(f'{STEP_PREFIX}_{s}' for s in intact)}) are intact: "
                f"{advice} to resume from step {intact[-1]}"
            )
        else:
            after = f"there is no earlier checkpoint: {advice} to start again"
        raise CheckpointWriteError(
            f"could not write the checkpoint {where} ({write_error_cause(error)}); {after}"
        ) from error


# Failures of writing, as orbax reports them: an OSError, or tensorstore's error text with
# the OS error inside ("Failed writing: ...: No space left on device [os_error_code=28]").
_WRITE_ERROR_TEXT = re.compile(
    r"os_error_code|Errno \d+|No space left|Disk quota|Read-only file system|"
    r"Permission denied|Failed writing|File too large"
)


def _causes(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_write_error(error: BaseException) -> bool:
    return any(isinstance(e, OSError) or _WRITE_ERROR_TEXT.search(str(e)) for e in _causes(error))


def write_error_cause(error: BaseException) -> str:
    """The OS's words for a failed write, on one line (e.g. 'No space left on device')."""
    for e in _causes(error):
        if isinstance(e, OSError) and e.strerror:
            return f"{e.strerror} [Errno {e.errno}]" if e.errno else e.strerror
        m = re.search(r":\s*([^:\[\]\n]+?)\s*\[os_error_code='?(\d+)'?\]", str(e))  # tensorstore's form
        if m:
            return f"{m.group(1)} [Errno {m.group(2)}]"
    text = " ".join(str(error).split())
    return text[:300] + ("..." if len(text) > 300 else "")


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def write_error_advice(error: BaseException) -> str:
    """What to do about a failed write before rerunning, by its cause: a timed-out write
    (a TimeoutError, which Python counts among OSErrors) is no full disk."""
    text = " ".join(str(e) for e in _causes(error))
    errnos = {e.errno for e in _causes(error) if isinstance(e, OSError)}
    errnos |= {int(n) for n in re.findall(r"os_error_code='?(\d+)", text)}
    if errnos & set(_NO_SPACE) or re.search(r"No space left|Disk quota|File too large", text):
        return "free space and rerun the same command"
    if errnos & set(_NOT_WRITABLE) or re.search(r"Permission denied|Read-only file system", text):
        return "make the directory writable and rerun the same command"
    if any(isinstance(e, TimeoutError) for e in _causes(error)) or "timed out" in text:
        return "the write timed out (was the process paused, or is the storage slow?): rerun the same command"
    return "remove the cause and rerun the same command"


class _DropOrbaxTracebacks(logging.Filter):
    """Drops orbax's log records that carry a traceback: a failed background write logs one
    per thread and per array (hundreds), and the same failure is raised to the caller,
    which reports it once. `--verbosity=1` keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is None or f"{os.sep}orbax{os.sep}" not in record.pathname:
            return True
        from dss_jax import cli

        return cli._verbose()


_FILTER = _DropOrbaxTracebacks()


def _install_orbax_log_filter() -> None:
    logger = logging.getLogger("absl")  # orbax logs through absl's logger
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


class RunLock:
    """One trainer per run directory: `MODEL_DIR/train.lock` names the holder.

    The file is created exclusively and holds the holder's pid, host and start time. A
    second trainer is refused with those named. A lock left by a dead process on this host
    (a SIGKILL, an out-of-memory kill) is taken over with a warning; one from another host
    cannot be checked from here, so the message says which file to delete if that
    process is gone. Multi-host runs take it on process 0 only (see training/loop.py).
    On an object store (gs://) the lock is an object written only where none is
    (`_acquire_remote`).
    """

    def __init__(self, model_dir: str):
        self.directory = files.absolute(model_dir)
        self.path = os.path.join(self.directory, LOCK_NAME)
        self.held = False
        self._created_directory = False

    def acquire(self) -> "RunLock":
        if self.held:
            return self
        if files.is_remote(self.directory):
            return self._acquire_remote()
        if not os.path.isdir(self.directory):
            os.makedirs(self.directory)
            self._created_directory = True
        me = _holder_record()
        for _ in range(3):  # a takeover raced by another trainer: look again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_holder(self.path)
                if holder is None:  # maybe being written this instant: look once more
                    time.sleep(0.5)
                    holder = _read_holder(self.path)
                if holder is not None and not _is_dead_here(holder):
                    raise RunLockedError(_locked_message(self.path, holder)) from None
                self._take_over_stale(holder)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        self.release()
        raise _keeps_taking(self.path)

    def _acquire_remote(self) -> "RunLock":
        """The lock on an object store, which has no O_EXCL (and no /proc of another host):
        the lock object is written only if absent, with GCS's precondition ifGenerationMatch=0
        (of two trainers creating it at once, GCS lets one succeed and refuses the other),
        after a look that it is absent (a store or emulator may ignore the precondition), and
        read back: it must hold this process's record. Race window: where the precondition is
        ignored, two trainers that both find no lock and each read back its own record before
        the other's write lands both train; a takeover of a dead process's lock (deleted, then
        created) raced by a second trainer on the same host may likewise let both in. On GCS
        the creation is exclusive; the takeover needs the holder dead on this host."""
        me = _holder_record()
        fs, key = _object_store(self.path)
        for _ in range(3):  # a takeover or a creation raced by another trainer: look again
            fs.invalidate_cache(key)
            if fs.exists(key):
                holder = _read_holder_object(fs, key)
                if holder is None:  # unreadable (objects appear whole): look once more
                    time.sleep(0.5)
                    holder = _read_holder_object(fs, key)
                if holder is not None and not _is_dead_here(holder):
                    raise RunLockedError(_locked_message(self.path, holder)) from None
                self._take_over_stale_object(fs, key, holder)
                continue
            try:
                _create_object(fs, key, json.dumps(me).encode())
            except FileExistsError:  # another trainer's precondition won: look at its record
                continue
            if _read_holder_object(fs, key) == me:
                self.held = True
                return self
            # Another trainer's write replaced ours (a store without the precondition): the
            # next look names it.
        raise _keeps_taking(self.path)

    def _take_over_stale_object(self, fs, key: str, holder: Optional[dict]) -> None:
        """Deletes a dead process's lock object (an object store cannot rename one atomically;
        the creation that follows is exclusive on GCS)."""
        try:
            fs.rm(key)
        except FileNotFoundError:
            return
        logging.warning(
            "took over %s from a process that is gone (%s)",
            self.path,
            _describe(holder) if holder else "unreadable lock file",
        )

    def _take_over_stale(self, holder: Optional[dict]) -> bool:
        """Moves a dead process's lock aside (renamed, not deleted: a rename is atomic, so of
        two trainers taking over at once only one succeeds)."""
        aside = f"{self.path}.stale-{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        logging.warning(
            "took over %s from a process that is gone (%s)",
            self.path,
            _describe(holder) if holder else "unreadable lock file",
        )
        try:
            os.remove(aside)
        except OSError:
            pass
        return True

    def release(self) -> None:
        """Removes the lock if it is still this process's (idempotent)."""
        if not self.held:
            return
        self.held = False
        if files.is_remote(self.path):  # no directory to remove: an object store has none
            fs, key = _object_store(self.path)
            fs.invalidate_cache(key)
            if _is_mine(_read_holder_object(fs, key)):
                try:
                    fs.rm(key)
                except FileNotFoundError:
                    pass
            return
        holder = _read_holder(self.path)
        if _is_mine(holder):
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        if self._created_directory:
            try:  # a run that stopped before writing anything leaves no trace (rmdir: only if empty)
                os.rmdir(self.directory)
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _process_start_ticks(pid: int) -> Optional[int]:
    """A process's start time in clock ticks since boot (Linux), so that a reused pid is
    not mistaken for the lock's holder; None where /proc is not there."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _holder_record() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start_ticks": _process_start_ticks(os.getpid()),
        "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _read_holder(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            holder = json.load(f)
    except (OSError, ValueError):
        return None  # half-written by a trainer that died while creating it, or vanished
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def _is_mine(holder: Optional[dict]) -> bool:
    return holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()


def _keeps_taking(path: str) -> RunLockedError:
    return RunLockedError(
        f"{path}: another trainer keeps taking this run directory; make sure only one trainer uses this MODEL_DIR"
    )


def _object_store(url: str):
    """(the fsspec file system of an object-store URL, the object's path in it): the lock's
    own client, whose listings cache is dropped before each look (another process writes it)."""
    import fsspec

    return fsspec.core.url_to_fs(url)


def _create_object(fs, key: str, data: bytes) -> None:
    """Writes the object only if none is there: FileExistsError where the store refuses
    (GCS: ifGenerationMatch=0). A client without the create mode writes it plainly."""
    try:
        fs.pipe_file(key, data, mode="create")
    except TypeError:  # no create mode in this store's client: the look and the read-back remain
        fs.pipe_file(key, data)


def _read_holder_object(fs, key: str) -> Optional[dict]:
    try:
        holder = json.loads(fs.cat_file(key))
    except (OSError, ValueError):
        return None  # gone, or not a lock record
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def _is_dead_here(holder: dict) -> bool:
    """True when the holder ran on this host and is gone (or its pid now names another process)."""
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    recorded, now = holder.get("start_ticks"), _process_start_ticks(pid)
    return recorded is not None and now is not None and recorded != now


def _describe(holder: dict) -> str:
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}"


def _locked_message(path: str, holder: dict) -> str:
    text = (
        f"{os.path.dirname(path)} is in use by another trainer ({_describe(holder)}); "
        "wait for it to finish or choose another MODEL_DIR"
    )
    if holder.get("host") != socket.gethostname():
        text += f"; if that process is gone, delete {path}"
    return text


def write_run_task(model_dir: str | os.PathLike, task_name: str, options: Mapping[str, Any]) -> None:
    """MODEL_DIR/task.json: the task and task options a run trains with, so eval, infer and
    annotate's student backend decode and score its checkpoints the way it was trained."""
    text = json.dumps({"task": task_name, "options": dict(options)}, indent=2, sort_keys=True) + "\n"
    files.atomic_write(files.path(model_dir) / RUN_TASK_FILE, text)


def run_task(path: str | os.PathLike) -> Optional[tuple[str, Optional[str], dict]]:
    """(the file, the task, the task options) a checkpoint's run was trained with, or None
    for a checkpoint that is no run's (a converted T5). Read from the checkpoint's own run
    (`locate.describing_dir`: its dir, or the MODEL_DIR of a step), never from a directory
    above: a converted copy kept inside another run is no step of it. Runs from before
    task.json existed are read from config.gin, for the one option that changes how a
    student answers."""
    found = describing_file(path, RUN_TASK_FILE)
    if found is not None:
        try:
            data = json.loads(found.read_text())
            return str(found), data["task"], dict(data["options"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{found}: not a task record written by the train binary ({e})") from None
    gin_file = describing_file(path, RUN_GIN_FILE)
    if gin_file is None:
        return None
    targets = re.findall(r"(?m)^(?:[\w.]+/)?task_options\.label_target\s*=\s*['\"](\w+)['\"]", gin_file.read_text())
    return str(gin_file), None, ({"label_target": targets[-1]} if targets else {})


def write_run_files(
    model_dir: str | os.PathLike,
    config: Optional[Any],
    task_name: str,
    task_options: Mapping[str, Any],
    vocab_file: Optional[str],
    gin_config: str,
    resumed_at: Optional[int] = None,
) -> None:
    """config.json, spiece.model, task.json and config.gin in MODEL_DIR (see the module
    docstring), each replaced whole, so eval, infer and export rebuild the run from it. A
    run resumed at step `resumed_at` with another config.gin keeps the one it was trained
    with up to that step as config.to_step_<step>.gin."""
    model_dir = files.path(model_dir)
    files.makedirs(model_dir)
    write_run_task(model_dir, task_name, task_options)
    gin_path = model_dir / RUN_GIN_FILE
    if resumed_at and gin_path.is_file() and gin_path.read_text() != gin_config:
        earlier = model_dir / f"config.to_step_{resumed_at}.gin"
        if not earlier.exists():
            files.atomic_write(earlier, gin_path.read_text())
    files.atomic_write(gin_path, gin_config)
    if config is not None:
        files.atomic_write(model_dir / CONFIG_FILE, config.to_json())
    if vocab_file and files.path(vocab_file).exists():  # the task's vocabulary, local or gs://
        if files.path(vocab_file).name == TOKENIZER_JSON:  # with its config (EOS, BOS) and the rest
            sources = [files.path(vocab_file).parent / name for name in TOKENIZER_FILES]
            copies = [(src, model_dir / src.name) for src in sources if src.is_file()]
        else:
            copies = [(vocab_file, model_dir / VOCAB_FILE)]
        for src, dst in copies:
            with files.atomic_output(dst) as tmp:
                files.copy(src, tmp)
