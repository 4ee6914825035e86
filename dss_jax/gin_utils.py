"""The t5x command-line interface for gin, shared by the train, eval, infer, sweep and
annotate binaries.

    --gin_file=FILE            repeatable; later files override earlier ones
    --gin_bindings='A.b = 1'   repeatable; applied after the files
    --gin.NAME=VALUE           shorthand for --gin_bindings='NAME = VALUE' (t5x style)
    --gin_search_paths=DIRS    comma-separated folders to look for gin files in

The repository's `gin/` folder is always searched last, so `--gin_file=models/tiny.gin`
works from anywhere. `parse_gin` checks the config before any work and stops on the
first mistake with one line (`GinConfigError`) that names the file:line or binding:

- a syntax error, with the fix ("strings need quotes: --gin.MODEL_DIR=\"'/tmp/x'\"");
- an unknown configurable or parameter, with the nearest known names;
- a `%MACRO` the config reads that nothing sets, with the flag that sets it;
- a macro set on the command line that no binding reads, directly or through other
  macros ("did you mean TRAIN_STEPS?"). A macro set in a file and read by nothing is
  allowed, since one file can serve binaries that read different macros (a task file
  read by train and annotate); it is logged, as a warning when its name is close to one
  that is read.

A gin file, an `include` and a search path may be a gs:// URL (read through dss_jax.files).
A T5X user's gin file (t5x/examples/t5/t5_1_1/base.gin, configs/runs/finetune.gin, ...) is
translated as it is read (dss_jax.t5x_gin), and so is a --gin binding on T5X's names.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util  # noqa: F401  (gin's resource reader uses it without importing it)
import inspect
import io
import logging
import os
import re
import tokenize
from typing import Iterable, Iterator, Optional, Sequence

from absl import flags

import gin
from dss_jax import cli, files
from gin import config_parser

REPO_GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")
MACRO = "gin.macro"  # the selector gin files a macro's value under: _CONFIG[(NAME, MACRO)]


class GinConfigError(cli.UserError):
    """A gin file or binding the user can fix; the message is one line naming it."""


class _QuietSearch(logging.Filter):
    """Drops gin's own logs of probing the search path: it logs an ERROR "Path not found"
    for every folder that does not hold an included file, even when a later one does;
    a file that is really missing still fails `parse_gin` with its name."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.pathname.endswith(os.path.join("gin", "resource_reader.py"))


logging.getLogger().addFilter(_QuietSearch())  # gin logs through the root logger


def _is_file(path: str) -> bool:
    """Whether a gin file is there, local or on an object store."""
    if files.is_remote(path):
        return files.path(path).is_file()
    return os.path.isfile(path)


def _open_text(path: str):
    """A gin file opened for reading, local or on an object store (read whole, named by
    its URL, for gin's messages)."""
    if not files.is_remote(path):
        return open(path)
    text = io.StringIO(files.path(path).read_text())
    text.name = files.absolute(path)
    return text


def _real(path: str) -> str:
    """Where a gin file really is (symlinks resolved; a URL as it is)."""
    return files.absolute(path) if files.is_remote(path) else os.path.realpath(path)


# gin reads a file, or an `include`, through the first reader whose check passes: local
# files with `open`, gs:// URLs with ours.
gin.config.register_file_reader(_open_text, lambda path: files.is_remote(path) and _is_file(path))


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


def parse_gin(
    gin_files: Sequence[str],
    gin_bindings: Sequence[str],
    search_paths: Sequence[str] = (),
    required_macros: Sequence[str] = (),
    require_files: bool = True,
) -> None:
    """Parses files, then bindings; fails before any work on a syntax error, an unknown
    name, an unset macro or a command-line macro that nothing reads.

    required_macros: macros the binary's code needs even if no file reads them.
    """
    dirs = [files.absolute(p) for p in list(search_paths) + [REPO_GIN_DIR]]
    for path in dirs:
        if path not in gin.config._LOCATION_PREFIXES:  # a sweep parses once per run
            gin.add_config_file_search_path(path)
    if require_files and not gin_files:
        raise GinConfigError("no --gin_file given; e.g. --gin_file=runs/train.gin --gin_file=models/tiny.gin")
    from dss_jax import t5x_gin  # it reads files with this module's helpers

    paths = [resolve_gin_file(f, dirs) for f in gin_files]
    t5x = None  # what T5X's files said, once one is read (dss_jax.t5x_gin)
    for path in paths:
        t5x_gin.add_search_path(path)
        check_includes(path)
        if t5x_gin.is_t5x_file(path):
            t5x = t5x or t5x_gin.Session()
            t5x_gin.parse_file(path, t5x)
            continue
        with _one_line_errors(path=path):
            gin.parse_config_file(path)
    # One binding at a time (gin joins them into one string) so that an error names its binding.
    for binding in gin_bindings:
        if t5x_gin.is_t5x_binding(binding, t5x):
            t5x_gin.parse_binding(binding, t5x)
            continue
        with _one_line_errors(binding=binding):
            gin.parse_config(binding)
    # A path no binary can read or write here (gcs://, gs:// without gcsfs) is refused as on the command line.
    for binding, value in _bound_strings():
        cli.refuse_cloud_paths([value], f"gin binding {binding} = ")
    check_macros(paths, gin_bindings, required_macros, read_elsewhere=t5x.macros_read if t5x else ())
    if t5x is not None:
        t5x_gin.finish(t5x)


def _bound_strings() -> Iterator[tuple[str, str]]:
    """(binding, string) for every string value gin binds, in lists and dicts too."""

    def strings(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from strings(item)
        elif isinstance(value, dict):
            for item in value.values():
                yield from strings(item)

    for (scope, selector), params in gin.config._CONFIG.items():
        for param, value in params.items():
            name = scope if selector == MACRO else f"{scope + '/' if scope else ''}{selector}.{param}"
            for text in strings(value):
                yield name, text


def resolve_gin_file(name: str, dirs: Sequence[str]) -> str:
    """The first of NAME, DIR/NAME for DIR in the search path that exists."""
    absolute = os.path.isabs(name) or files.is_remote(name)
    candidates = [name] if absolute else [name] + [os.path.join(d, name) for d in dirs]
    for path in candidates:
        if _is_file(path):
            return files.absolute(path)
    raise GinConfigError(
        f"--gin_file={name}: not found (looked in: {', '.join(['.'] + list(dirs))}); "
        "check the name, or add its folder with --gin_search_paths"
    )


def bindings_in_file(path: str, configurable: str) -> dict:
    """{parameter: value} that a gin file binds on `configurable` (unscoped), read without
    binding anything (a model file's architecture, for tools that build a config aside
    from the run's gin state, e.g. dss_jax.aot)."""
    with _open_text(path) as f:
        statements = config_parser.ConfigParser(f.read(), gin.config.ParserDelegate(skip_unknown=True))
        return {
            s.arg_name: s.value
            for s in statements
            if isinstance(s, config_parser.BindingStatement) and not s.scope and s.selector == configurable
        }


def check_includes(path: str) -> None:
    """A GinConfigError naming FILE:LINE of an `include` that leads back to a file being
    read (gin itself recurses until Python's stack runs out). Includes are found where gin
    finds them; one that is not found is left for gin to report."""

    def walk(path: str, reading: list[str]) -> None:
        reading = reading + [_real(path)]
        with _one_line_errors(path=path), _open_text(path) as f:
            statements = list(config_parser.ConfigParser(f, _NamesOnly()))
        for statement in statements:
            if not isinstance(statement, config_parser.IncludeStatement):
                continue
            included = _find_include(statement.filename)
            if included is None:
                continue
            if _real(included) in reading:
                cycle = reading[reading.index(_real(included)) :] + [_real(included)]
                raise GinConfigError(
                    f"{_display(path)}:{statement.location.line_num}: include {statement.filename!r} leads back to "
                    f"a file it is read from ({' -> '.join(map(_display, cycle))}); remove the include that "
                    "closes the cycle"
                )
            walk(included, reading)

    walk(path, [])


def _find_include(name: str) -> Optional[str]:
    """Where gin will find an `include`: the first search path that has it, or None."""
    prefixes = [""] if os.path.isabs(name) or files.is_remote(name) else gin.config._LOCATION_PREFIXES
    for prefix in prefixes:
        if _is_file(os.path.join(prefix, name)):
            return os.path.join(prefix, name)
    return None


# --- errors gin raises while parsing, as one line -------------------------------------

# gin appends where an error happened to its message: '\n  In file "F", line N\n    TEXT'
# (innermost first for includes) or '\n  In bindings string line N'.
_GIN_LOCATION = re.compile(r'\n\s*In file "(?P<file>[^"]*)", line (?P<line>\d+)')


@contextlib.contextmanager
def _one_line_errors(path: Optional[str] = None, binding: Optional[str] = None) -> Iterator[None]:
    """Turns what gin raises on a bad file (PATH) or BINDING into a `GinConfigError`."""
    try:
        yield
    except SyntaxError as e:
        raise GinConfigError(_syntax_message(e, binding)) from e
    except tokenize.TokenError as e:  # the text ended inside brackets or a triple-quoted string
        what = "a bracket or quote that opens is never closed"
        if binding is not None:
            raise GinConfigError(f"gin binding {_one_line(binding)!r}: {what}") from e
        raise GinConfigError(f"{_display(path or '?')} (or a file it includes): {what}") from e
    except (ValueError, OSError, ModuleNotFoundError) as e:  # unknown names, missing includes, bad imports
        text = str(e)
        what = text.split("\n")[0].strip().rstrip(".") + _gin_hint(text)
        m = _GIN_LOCATION.search(text)
        if binding is not None:
            raise GinConfigError(f"gin binding {_one_line(binding)!r}: {what}") from e
        if m:
            raise GinConfigError(f"{_display(m.group('file'))}:{m.group('line')}: {what}") from e
        raise GinConfigError(f"gin configuration error: {what}") from e


def _syntax_message(e: SyntaxError, binding: Optional[str]) -> str:
    text = _one_line(binding if binding is not None else (e.text or ""))
    fix = _value_fix(text, on_command_line=binding is not None)
    what = fix or f"cannot parse it ({(e.msg or 'syntax error').splitlines()[0]}); a binding reads NAME = VALUE"
    if binding is not None:
        return f"gin binding {text!r}: {what}"
    return f"{_display(e.filename or '?')}:{e.lineno}: {text!r}: {what}"


def _value_fix(text: str, on_command_line: bool) -> str:
    """What is wrong with `NAME = VALUE` whose VALUE gin cannot parse, and the fix; or ''."""
    m = re.fullmatch(r"([\w./]+)\s*=\s*(.+)", text)
    if not m:
        return ""
    name, value = m.groups()
    if value[0] in "[{(":
        return f"cannot parse the value {value}; check its brackets, commas and quotes"
    bare = value.strip("'\"")
    fixed = repr(bare)
    fix = f'--gin.{name}="{fixed}"' if on_command_line else f"{name} = {fixed}"
    also = f" (or %{bare} for a macro)" if bare.isidentifier() else ""
    return f"cannot parse the value {value}; strings need quotes: {fix}{also}"


def _gin_hint(message: str) -> str:
    """'; did you mean ...?' for gin's unknown-name errors, or advice for a missing file."""
    m = re.match(r"No configurable matching (?:reference )?'@?([^'(]+)", message)
    if m:
        name = m.group(1).rsplit("/", 1)[-1]  # without its scope
        return (
            did_you_mean(name, _configurable_names(qualified="." in name))
            or "; check the name, and that a gin file imports the module that defines it"
        )
    m = re.match(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", message)
    if m:
        replaced = REPLACED.get(f"{m.group(1).rsplit('.', 1)[-1]}.{m.group(2)}")
        return f"; {replaced}" if replaced else did_you_mean(m.group(2), _parameter_names(m.group(1)))
    if message.startswith("Unable to open file"):
        return "; check the name, or add its folder with --gin_search_paths"
    return ""


# Bindings of earlier versions that a gin file may still hold: what to write instead.
_MODEL_FIELDS = (
    "the model is now spelled out as T5Config.<field> bindings (gin/models/*.gin): include "
    "a models/ file, and bind a field itself, e.g. T5Config.d_model = 64"
)
REPLACED = {
    "model_config.size": _MODEL_FIELDS,
    "model_config.variant": _MODEL_FIELDS + " (T5 v1.0: T5Config.feed_forward = 'relu', "
    "T5Config.tie_word_embeddings = True; Flan-T5 has the v1.1 shapes)",
    "model_config.overrides": "bind each field on T5Config instead, e.g. "
    "model_config.overrides = {'dtype': 'bfloat16'} is now T5Config.dtype = 'bfloat16'",
}


def _configurable_names(qualified: bool) -> list[str]:
    configurables = [c for _, c in gin.config._REGISTRY.items() if not (c.module or "").startswith("gin")]
    return [c.selector if qualified else c.name for c in configurables]


def _parameter_names(configurable: str) -> list[str]:
    try:
        c = gin.config._REGISTRY.get_match(configurable)
        params = inspect.signature(c.wrapped).parameters
    except (KeyError, TypeError, ValueError):
        return []
    names = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n != "self"]
    return [n for n in names if (c.allowlist is None or n in c.allowlist) and n not in (c.denylist or ())]


def did_you_mean(name: str, candidates: Iterable[str], cutoff: float = 0.6) -> str:
    """'; did you mean A or B?' for the candidates closest to NAME (any case), or ''."""
    by_lower: dict[str, str] = {}
    for c in sorted(set(candidates)):
        if c != name:
            by_lower.setdefault(c.lower(), c)
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=cutoff)
    return f"; did you mean {' or '.join(by_lower[c] for c in close)}?" if close else ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _display(path: str) -> str:
    """PATH as a user would type it: gin/... inside the repository, else relative to here
    (a URL as it is)."""
    if files.is_remote(path):
        return path
    path = os.path.abspath(path)
    repo = os.path.dirname(REPO_GIN_DIR)
    for root in (os.getcwd(), repo):
        if path.startswith(root + os.sep):
            return os.path.relpath(path, root)
    return path


# --- macros: every one the config reads is set, every one the command line sets is read ---


def unbound_macros() -> list[str]:
    """Macros referenced in the parsed config (`%NAME`) that have no value, or only
    `%gin.REQUIRED` (T5X's run files mark what the user must set so)."""
    config = gin.config._CONFIG  # gin keeps bindings here; there is no public walk over references
    missing = []
    for name in _macro_references(config):
        if (not macro_is_set(name)) and name not in missing:
            missing.append(name)
    return missing


def macro_is_set(name: str) -> bool:
    """Whether a macro has a value other than `%gin.REQUIRED`."""
    params = gin.config._CONFIG.get((name, MACRO))
    if params is None:
        return False
    value = params.get("value")
    return not (
        isinstance(value, gin.config.ConfigurableReference) and value.scoped_selector == "gin.REQUIRED/gin.constant"
    )


def macros_read(required: Sequence[str] = ()) -> set[str]:
    """Macros some binding reads, directly or through other macros, plus `required`.

    A macro that only an unread macro refers to is not read either: the walk starts at
    the bindings of configurables and follows macro values from there.
    """
    config = gin.config._CONFIG
    todo = list(required)
    for key, params in config.items():
        if key[1] != MACRO:
            todo.extend(_macro_references(params))
    read: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in read:
            read.add(name)
            todo.extend(_macro_references(config.get((name, MACRO), {})))
    return read


def _macro_references(params) -> list[str]:
    # (`iterate_references(..., to=gin.config.macro)` matches nothing: the registered
    # configurable wraps that function, so macros are recognised by their key.)
    return [ref.config_key[0] for ref in gin.config.iterate_references(params) if ref.config_key[1] == MACRO]


def check_macros(
    files: Sequence[str], bindings: Sequence[str], required: Sequence[str] = (), read_elsewhere: Iterable[str] = ()
) -> None:
    """Fails on a macro that is read but unset, or set on the command line but unread;
    logs macros that a file sets and nothing reads. `read_elsewhere`: macros read by
    what is not gin's (a T5X file's bindings that dss_jax has built in or ignores)."""
    read = macros_read(required) | set(read_elsewhere)
    sites = macro_sites(files, bindings)
    missing = unbound_macros() + [m for m in required if not macro_is_set(m)]
    missing = list(dict.fromkeys(missing))
    if missing:
        hint = " ".join(f"--gin.{m}=..." for m in missing)
        unread_near = [
            f"{site} sets {name}"
            for name, (site, _) in sites.items()
            if name not in read and did_you_mean(name, missing, cutoff=0.8)
        ]
        also = f" ({'; '.join(unread_near)}: misspelt?)" if unread_near else ""
        required_at = [sites[m][0] for m in missing if m in sites and (m, MACRO) in gin.config._CONFIG]
        also += f" (%gin.REQUIRED at {', '.join(required_at)})" if required_at else ""
        raise GinConfigError(f"gin macro(s) {', '.join(missing)} not set; pass e.g. {hint}{also}")
    unread_cli = [(name, site) for name, (site, on_cli) in sites.items() if on_cli and name not in read]
    if unread_cli:
        raise GinConfigError("; ".join(_unread_message(name, site, read) for name, site in unread_cli))
    for name, (site, _) in sites.items():
        if name not in read:
            near = did_you_mean(name, read, cutoff=0.8)
            # Allowed: a shared file may set macros only another binary reads.
            (logging.warning if near else logging.info)(
                "%s: macro %s is set but nothing in this config reads it%s", site, name, near
            )


def _unread_message(name: str, site: str, read: set[str]) -> str:
    hint = did_you_mean(name, read) or (
        f"; this config reads {', '.join(sorted(read))}" if read else "; this config reads no macros"
    )
    return f"macro {name} is set on {site} but nothing in this config reads it{hint}"


def macro_sites(files: Sequence[str], bindings: Sequence[str]) -> dict[str, tuple[str, bool]]:
    """{macro: (where it was last set, set on the command line?)}, in parse order.

    Where: 'FILE:LINE' (the included file where it is), or
    "the command line ('NAME = VALUE')".
    """
    sites: dict[str, tuple[str, bool]] = {}
    for path in files:
        with _open_text(path) as f:
            _file_macro_sites(f, sites)
    for binding in bindings:
        for statement in config_parser.ConfigParser(binding, _NamesOnly()):
            if isinstance(statement, config_parser.BindingStatement) and not statement.arg_name:
                sites[_macro_name(statement)] = (f"the command line ({_one_line(binding)!r})", True)
    return sites


def _file_macro_sites(f, sites: dict[str, tuple[str, bool]]) -> None:
    for statement in config_parser.ConfigParser(f, _NamesOnly()):
        if isinstance(statement, config_parser.BindingStatement) and not statement.arg_name:
            sites[_macro_name(statement)] = (f"{_display(f.name)}:{statement.location.line_num}", False)
        elif isinstance(statement, config_parser.IncludeStatement):
            with _open_text(_included_path(statement.filename)) as included:
                _file_macro_sites(included, sites)


def _macro_name(statement: config_parser.BindingStatement) -> str:
    return f"{statement.scope}/{statement.selector}" if statement.scope else statement.selector


def _included_path(name: str) -> str:
    """Where gin found an `include` (it already parsed it): the first search path that has it."""
    prefixes = [""] if os.path.isabs(name) or files.is_remote(name) else gin.config._LOCATION_PREFIXES
    for prefix in prefixes:
        if _is_file(os.path.join(prefix, name)):
            return os.path.join(prefix, name)
    raise GinConfigError(f"include {name!r}: not found")  # gin read it a moment ago; only a race gets here


class _NamesOnly(config_parser.ParserDelegate):
    """Reads statements for their names and places; references are not looked up."""

    def configurable_reference(self, scoped_name, evaluate):
        return None

    def macro(self, name):
        return None
