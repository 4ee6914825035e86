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

import sys
import traceback
from typing import Callable, Sequence

EXIT_USAGE = 2


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
