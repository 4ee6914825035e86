"""The t5x command-line interface for gin, shared by the train, eval and infer binaries.

    --gin_file=FILE            repeatable; later files override earlier ones
    --gin_bindings='A.b = 1'   repeatable; applied after the files
    --gin.NAME=VALUE           shorthand for --gin_bindings='NAME = VALUE' (t5x style)
    --gin_search_paths=DIRS    comma-separated folders to look for gin files in

The repository's `gin/` folder is always searched last, so `--gin_file=models/tiny.gin`
works from anywhere. Before any work, every `%MACRO` referenced by the config must be
bound; an unbound one is reported by name with the flag that sets it.
"""

from __future__ import annotations

import importlib.util  # noqa: F401  (gin's resource reader uses it without importing it)
import logging
import os
import re
from typing import Sequence

import gin
from absl import flags

REPO_GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")


class _QuietSearch(logging.Filter):
    """Drops gin's own logs of probing the search path: it logs an ERROR "Path not found"
    for every folder that does not hold an included file, even when a later one does;
    a file that is really missing still fails `parse_gin` with its name."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.pathname.endswith(os.path.join("gin", "resource_reader.py"))


logging.getLogger().addFilter(_QuietSearch())  # gin logs through the root logger


def define_gin_flags() -> None:
    if "gin_file" in flags.FLAGS:  # already defined: several binaries' modules in one process (tests)
        return
    flags.DEFINE_multi_string("gin_file", [], "Gin files, in order; later ones win.")
    flags.DEFINE_multi_string("gin_bindings", [], "Individual gin bindings, applied after the files.")
    flags.DEFINE_list("gin_search_paths", ["."], "Folders searched for --gin_file and gin `include`s.")


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
    """Turns t5x's `--gin.NAME=VALUE` shorthand into `--gin_bindings=NAME = VALUE`."""
    out = []
    for arg in argv:
        m = re.match(r"^--gin\.([^=]+)=(.*)$", arg, flags=re.S)
        if m:
            out.append(f"--gin_bindings={m.group(1)} = {m.group(2)}")
        elif re.match(r"^--gin\.[^=]+$", arg):
            raise SystemExit(f"{arg}: a --gin.NAME shorthand needs a value, e.g. {arg}=VALUE")
        else:
            out.append(arg)
    return out


def unbound_macros() -> list[str]:
    """Macros referenced in the parsed config (`%NAME`) that have no value."""
    config = gin.config._CONFIG  # gin keeps bindings here; there is no public walk over references
    missing = []
    # (`iterate_references(..., to=gin.config.macro)` matches nothing: the registered
    # configurable wraps that function, so macros are recognised by their key.)
    for ref in gin.config.iterate_references(config):
        if ref.config_key[1] != "gin.macro":
            continue
        name = ref.config_key[0]
        if ref.config_key not in config and name not in missing:
            missing.append(name)
    return missing


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str], search_paths: Sequence[str] = (),
              required_macros: Sequence[str] = ()) -> None:
    """Parses files and bindings; fails before any work on unknown names or unset macros."""
    dirs = [os.path.abspath(p) for p in list(search_paths) + [REPO_GIN_DIR]]
    for path in dirs:
        gin.add_config_file_search_path(path)
    if not gin_files:
        raise SystemExit("no --gin_file given; e.g. --gin_file=runs/train.gin --gin_file=models/tiny.gin")
    files = [resolve_gin_file(f, dirs) for f in gin_files]
    try:
        gin.parse_config_files_and_bindings(files, list(gin_bindings), finalize_config=False)
    except (ValueError, IOError, OSError) as e:
        raise SystemExit(f"gin configuration error: {e}") from None
    missing = [m for m in unbound_macros()]
    missing += [m for m in required_macros if m not in missing and not _macro_bound(m)]
    if missing:
        hint = " ".join(f"--gin.{m}=..." for m in missing)
        raise SystemExit(f"gin macro(s) {', '.join(missing)} not set; pass e.g. {hint}")


def resolve_gin_file(name: str, dirs: Sequence[str]) -> str:
    """The first of NAME, DIR/NAME for DIR in the search path that exists."""
    candidates = [name] if os.path.isabs(name) else [name] + [os.path.join(d, name) for d in dirs]
    for path in candidates:
        if os.path.isfile(path):
            return os.path.abspath(path)
    raise SystemExit(f"--gin_file={name}: not found (looked in: {', '.join(['.'] + list(dirs))})")


def _macro_bound(name: str) -> bool:
    try:
        gin.query_parameter(f"{name}/macro.value")
        return True
    except ValueError:
        return False

