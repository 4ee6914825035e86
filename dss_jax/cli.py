"""How every binary ends on a user's mistake: one line, `NAME: error: WHAT`, exit code 2.

    from dss_jax import cli
    ...
    raise cli.UserError(f"{path}:{line}: 'meta' must be an object, got a list")
    ...
    if __name__ == "__main__":
        cli.run(main, "train")          # absl flags, t5x's --gin.NAME=VALUE shorthand

A `UserError` (or a `SystemExit` carrying a message, which older code and absl raise) is
a mistake the user can fix: a bad setting, a missing or malformed file, a directory that
would be overwritten. It prints as a single line naming the file, line or key and what
to do, never a traceback. Anything else is a bug in dss_jax and keeps its traceback.
`--verbosity=1` (absl's flag, `-v 1`) shows the traceback of a user error too, and the
libraries' INFO logs that a binary hides by default (`quiet_libraries`).

Error classes of the library that describe such mistakes (cache format, missing paper
files, prompts, ...) derive from `UserError`, so a binary needs no list of them.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import re
import sys
import tempfile
import traceback
from typing import Callable, Sequence

EXIT_USAGE = 2

# An OSError with one of these on a path the user named (a MODEL_DIR that is a file, a
# read-only output folder, a full disk, a file-size limit) is the user's to fix, not a bug
# in dss_jax.
_ENVIRONMENT_ERRNOS = {
    errno.EFBIG,
    errno.ENOENT,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENOSPC,
    errno.EROFS,
    errno.EDQUOT,
    errno.ENAMETOOLONG,
    errno.ENOTEMPTY,
    errno.EFBIG,  # a file-size limit: a full disk by another name
}


class UserError(Exception):
    """A mistake the user can fix; its message is one line saying where and what to do."""


def error_line(name: str, message: object) -> str:
    """`NAME: error: MESSAGE` on one line (the lines of a multi-line message are joined)."""
    # gin appends "In call to configurable 'NAME' (<function ...>)" to errors raised inside
    # a configurable: the message already says what is wrong.
    text = re.sub(r"\n\s*In call to configurable .*", "", str(message)).strip() or "unknown error"
    for prefix in (f"{name}: error: ", f"dss_jax.{name}: error: ", "error: "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return f"{name}: error: " + " ".join(line.strip() for line in text.splitlines() if line.strip())


def fail(name: str, message: object, code: int = EXIT_USAGE) -> None:
    """Prints the one error line to stderr and exits with `code`."""
    sys.stderr.flush()
    print(error_line(name, message), file=sys.stderr, flush=True)
    raise SystemExit(code)


# Library messages that say nothing a dss_jax user can act on, shown only with --verbosity=1:
# seqio warns about shuffling uncached data on every run (dss_jax's input position makes
# restarts exact); orbax logs a missing metadata file for every checkpoint it reads.
_IRRELEVANT = ("Using an uncached FunctionDataset for training", "Metadata file does not exist")
_OWN_DIRS = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d) + os.sep for d in ("dss_jax", "tasks")
)


class _LibraryChatter(logging.Filter):
    """Keeps dss_jax's own INFO lines (progress, evaluations, checkpoints, outputs) and
    every library's warnings and errors; drops the libraries' INFO (orbax alone logs
    about 40 lines per checkpoint) and the few warnings in _IRRELEVANT."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.pathname.startswith(_OWN_DIRS):
            return True
        if record.levelno < logging.WARNING:
            return False
        return not any(text in str(record.msg) for text in _IRRELEVANT)


class _QuietFirstImport:
    """A meta-path finder that runs the first import of one module with the process's
    stderr (file descriptor 2) sent to a temporary file: TensorFlow's native libraries
    print CUDA probing notices there before any log level applies. What the import printed
    is shown after all if the import fails."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _SilentLoader(spec.loader)
        return spec


class _SilentLoader:
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                self.loader.exec_module(module)
            except BaseException:
                os.dup2(saved, 2)
                captured.seek(0)
                sys.stderr.write(captured.read().decode(errors="replace"))
                raise
            finally:
                os.dup2(saved, 2)
                os.close(saved)


def quiet_native_startup() -> None:
    """No TensorFlow C++ start-up notices (CUDA probing on a CPU machine): its log level,
    and its first import with stderr captured (shown if the import fails)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietFirstImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFirstImport("tensorflow"))


def quiet_libraries() -> None:
    """Default logging of a binary: its own INFO, the libraries' WARNING and above, and no
    TensorFlow C++ start-up notices; `--verbosity=1` keeps everything. Call after flags
    are parsed (a binary that imports TensorFlow with its modules is covered by
    `_quiet_if_a_binary`, when this module is imported)."""
    if _verbose():
        return
    from absl import logging as absl_logging

    quiet_native_startup()
    absl_logging.set_verbosity(absl_logging.INFO)
    handler = absl_logging.get_absl_handler()
    if not any(isinstance(f, _LibraryChatter) for f in handler.filters):
        handler.addFilter(_LibraryChatter())


def _verbose() -> bool:
    try:
        from absl import flags

        return flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].value >= 1
    except Exception:  # no absl flags defined: stay quiet
        return False


def guard(main: Callable, name: str) -> Callable:
    """`main` with user errors turned into the one-line report."""

    from absl import app

    def guarded(*args, **kwargs):
        try:
            quiet_libraries()
            return main(*args, **kwargs)
        except (UserError, app.UsageError) as e:
            if _verbose():
                traceback.print_exc()
            fail(name, e)
        except OSError as raised:
            e = _unproxied(raised)
            if e.errno not in _ENVIRONMENT_ERRNOS or not e.filename:
                raise
            if _verbose():
                traceback.print_exc()
            fail(name, describe_os_error(e))
        except SystemExit as e:
            if isinstance(e.code, str):  # sys.exit("message"): a user error in older code
                if _verbose():
                    traceback.print_exc()
                fail(name, e.code)
            raise

    return guarded


def _unproxied(e: OSError) -> OSError:
    """The OSError itself: gin re-raises an error from inside a configurable as a proxy
    that has lost errno and the file name (gin.utils.augment_exception_message_and_reraise);
    the error it stands for is its context."""
    while e.errno is None and isinstance(e.__context__, OSError):
        e = e.__context__
    return e


# Object-store URLs. Those etils.epath serves (files.OBJECT_STORES) are read and written
# where their fsspec client is installed; others (gcs://, hdfs://) would be taken by os.path
# for a local directory named "gcs:". http(s) (a teacher's endpoint) is not one.
_CLOUD_PATH = re.compile(r"(?<![A-Za-z0-9+.\-])(gs|gcs|s3|az|abfs|hdfs)://[^\s'\"]*")


def refuse_cloud_paths(texts: Sequence[str], where: str = "") -> None:
    """A UserError naming the first object-store path in `texts` (command line arguments,
    gin bindings) that no binary can read or write here, before anything is read or
    written: a scheme epath does not serve, or one whose client is not installed."""
    import importlib.util

    from dss_jax import files

    for text in texts:
        for found in _CLOUD_PATH.finditer(text):
            scheme = found.group(1)
            client = files.OBJECT_STORES.get(scheme)
            if client is None:
                hint = " (write gs:// for Cloud Storage)" if scheme == "gcs" else ""
                served = ", ".join(f"{s}://" for s in files.OBJECT_STORES)
                raise UserError(
                    f"{where}{text.strip()}: {scheme}:// paths are not served{hint}; use {served} or a local path"
                )
            if importlib.util.find_spec(client) is None:
                raise UserError(
                    f"{where}{text.strip()}: {scheme}:// paths need the {client} package: pip install {client}"
                )


def run(main: Callable, name: str, argv: Sequence[str] | None = None) -> None:
    """absl.app.run for a binary: the gin shorthand rewritten, user errors as one line."""
    from absl import app

    from dss_jax import gin_utils

    def parse_flags(args):
        from absl import flags

        try:
            return flags.FLAGS(args)
        except flags.Error as e:  # an unknown flag, a bad value: absl would say FATAL and exit 1
            fail(name, f"{e} (--helpshort lists the flags)")

    try:
        refuse_cloud_paths((sys.argv if argv is None else argv)[1:])
    except UserError as e:
        fail(name, e)
    try:
        try:
            app.run(
                guard(main, name),
                argv=gin_utils.rewrite_gin_args(sys.argv if argv is None else argv),
                flags_parser=parse_flags,
            )
        except SystemExit as e:  # raised before main: flag parsing, the gin shorthand
            if isinstance(e.code, str):
                fail(name, e.code)
            raise
    except SystemExit as e:
        _exit(e.code)
        raise


def _exit(code) -> None:
    """Ends a binary's process without the native libraries' teardown: after Python's own
    exit handlers (logging, JAX's distributed runtime) and with every stream flushed,
    TensorFlow's and XLA's destructors spend about 3 s of every run doing nothing a
    user needs (every file a binary writes is closed before main returns). Only when
    this process is a dss_jax binary; otherwise the SystemExit goes on as usual."""
    if not _is_binary_process():
        return
    import atexit

    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code or 0)


def describe_os_error(e: OSError) -> str:
    """'PATH: No space left on device' (both paths of a failed rename or copy); a path in
    the project's cache directory says which setting moves it."""
    where = str(e.filename) + (f" -> {e.filename2}" if e.filename2 else "")
    text = f"{where}: {e.strerror or os.strerror(e.errno)}"
    cache = os.path.abspath(project_cache_dir())
    if os.path.abspath(str(e.filename)).startswith(cache + os.sep) or os.path.abspath(str(e.filename)) == cache:
        text += (
            f" (in DSS_CACHE_DIR={project_cache_dir()}, where generated data, vocabularies and compiled programs go: "
            "set DSS_CACHE_DIR to a folder you can write to, with room)"
        )
    return text


def child_error(what: str, returncode: int, log_path: str) -> UserError:
    """A child binary that failed, as one line: the child's own `NAME: error:` line when it
    printed one (a user error the caller can fix the same way), else its exit code; both
    with where its whole log is."""
    last = None
    try:
        with open(log_path, errors="replace") as f:
            for line in f:
                if re.match(r"^[\w.]+: error: ", line):
                    last = line.strip()
    except OSError:
        pass
    cause = last or f"exit {returncode}"
    return UserError(f"{what} failed: {cause} (whole log: {log_path})")


DEFAULT_CACHE_DIR = os.path.expanduser("~/.cache/dss_jax")
COMPILATION_CACHE_BYTES = 4 << 30


def project_cache_dir() -> str:
    """Where generated files go (imported caches, trained vocabularies, compiled programs):
    $DSS_CACHE_DIR or ~/.cache/dss_jax."""
    return os.environ.get("DSS_CACHE_DIR") or DEFAULT_CACHE_DIR


def use_compilation_cache() -> str | None:
    """Keeps compiled XLA programs in PROJECT_CACHE_DIR/xla (at most 4 GiB, least recently
    used first out), so a run that compiles what an earlier one did (a resume, the next
    point of a sweep, eval of the same model) loads it instead of compiling again: about
    12 s of a tiny run's start-up on this CPU. A loaded program is the one compiled, so
    results are bit-identical. $JAX_COMPILATION_CACHE_DIR, when set, wins; set it empty
    to turn the cache off. Returns the directory in use, or None."""
    import jax

    if "JAX_COMPILATION_CACHE_DIR" in os.environ:  # jax read it itself
        return os.environ["JAX_COMPILATION_CACHE_DIR"] or None
    path = os.path.join(project_cache_dir(), "xla")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:  # a read-only or full cache: jax would warn at every compile
        logging.warning("compiled programs are not cached: %s", describe_os_error(e))
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    if jax.config.jax_compilation_cache_max_size == -1:  # jax's default: unbounded
        jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_BYTES)
    return path


def _argv_verbosity(argv: Sequence[str]) -> int:
    """absl's -v/--verbosity as written on the command line (flags are not parsed yet)."""
    level = 0
    for i, arg in enumerate(argv):
        m = re.match(r"^--?(?:v|verbosity)(?:=(-?\d+))?$", arg)
        if m:
            value = m.group(1) if m.group(1) is not None else (argv[i + 1] if i + 1 < len(argv) else "0")
            level = int(value) if re.fullmatch(r"-?\d+", value) else level
    return level


def _is_binary_process() -> bool:
    """Whether this process runs a dss_jax binary (`python -m dss_jax.NAME`)."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None) or ""
    package = os.path.dirname(os.path.abspath(__file__))
    return os.path.dirname(os.path.abspath(main_file)) == package


def _quiet_if_a_binary() -> None:
    """A binary (`python -m dss_jax.NAME`) that imports TensorFlow with its own modules does
    so before its flags are parsed: silence TensorFlow's start-up from here, the first
    dss_jax module it imports. Library users importing dss_jax are left alone."""
    if _is_binary_process() and _argv_verbosity(sys.argv) < 1:
        quiet_native_startup()


_quiet_if_a_binary()
