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
`--verbosity=1` (absl's flag, `-v 1`) shows the traceback of a user error too.

Error classes of the library that describe such mistakes (cache format, missing paper
files, prompts, ...) derive from `UserError`, so a binary needs no list of them.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import traceback
from typing import Callable, Sequence

EXIT_USAGE = 2

# An OSError with one of these on a path the user named (a MODEL_DIR that is a file, a
# read-only output folder, a full disk) is the user's to fix, not a bug in dss_jax.
_ENVIRONMENT_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                       errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG, errno.ENOTEMPTY}


class UserError(Exception):
    """A mistake the user can fix; its message is one line saying where and what to do."""


def error_line(name: str, message: object) -> str:
    """`NAME: error: MESSAGE`, on one line (a multi-line message keeps its first line
    in front and the rest indented, so the line that names the problem comes first)."""
    text = str(message).strip() or "unknown error"
    for prefix in (f"{name}: error: ", f"dss_jax.{name}: error: ", "error: "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return f"{name}: error: {text}"


def fail(name: str, message: object, code: int = EXIT_USAGE) -> None:
    """Prints the one error line to stderr and exits with `code`."""
    sys.stderr.flush()
    print(error_line(name, message), file=sys.stderr, flush=True)
    raise SystemExit(code)


def _verbose() -> bool:
    try:
        from absl import flags

        return flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].value >= 1
    except Exception:  # noqa: BLE001  (no absl flags defined: stay quiet)
        return False


def guard(main: Callable, name: str) -> Callable:
    """`main` with user errors turned into the one-line report."""

    from absl import app

    def guarded(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (UserError, app.UsageError) as e:
            if _verbose():
                traceback.print_exc()
            fail(name, e)
        except OSError as e:
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


def run(main: Callable, name: str, argv: Sequence[str] | None = None) -> None:
    """absl.app.run for a binary: the gin shorthand rewritten, user errors as one line."""
    from absl import app

    from dss_jax import gin_utils

    try:
        app.run(guard(main, name), argv=gin_utils.rewrite_gin_args(sys.argv if argv is None else argv))
    except SystemExit as e:  # raised before main: flag parsing, the gin shorthand
        if isinstance(e.code, str):
            fail(name, e.code)
        raise


def describe_os_error(e: OSError) -> str:
    """'PATH: No space left on device' (both paths of a failed rename or copy)."""
    where = str(e.filename) + (f" -> {e.filename2}" if e.filename2 else "")
    return f"{where}: {e.strerror or os.strerror(e.errno)}"


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
