"""Rules for the values a setting may take, and the check that names a broken one.

    RULES = {"train.batch_size": settings.positive_int, "OptimizerConfig.eps": settings.number(0, open_low=True)}
    settings.check({"train.batch_size": -8}, RULES, macros={"train.batch_size": "BATCH_SIZE"})
    # SettingError: BATCH_SIZE (train.batch_size) must be a positive integer, got -8; set it with --gin.BATCH_SIZE=...

A rule takes a value and returns what is wrong with it (a message fragment) or None.
`gin_values` reads the values a parsed gin config binds, following macros, so a binary
can check them before any configurable is built (an object that fails in its own
constructor would otherwise report the problem from deep inside gin).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Iterable, Mapping, Optional

from dss_jax.cli import UserError

Rule = Callable[[Any], Optional[str]]


class SettingError(UserError, ValueError):
    """A setting with a value it cannot take."""


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)  # True is an int to Python


def positive_int(v: Any) -> Optional[str]:
    return None if _is_int(v) and v >= 1 else "must be a positive integer"


def nonnegative_int(v: Any) -> Optional[str]:
    return None if _is_int(v) and v >= 0 else "must be an integer >= 0"


def integer(v: Any) -> Optional[str]:
    return None if _is_int(v) else "must be an integer"


def boolean(v: Any) -> Optional[str]:
    return None if isinstance(v, bool) else "must be True or False"


def text(v: Any) -> Optional[str]:
    return None if isinstance(v, str) and v.strip() else "must be a non-empty string (in quotes)"


def number(
    low: Optional[float] = None, high: Optional[float] = None, *, open_low: bool = False, open_high: bool = False
) -> Rule:
    """A finite real number in [low, high] (`open_low`/`open_high`: without that end)."""

    def check(v: Any) -> Optional[str]:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            return "must be a finite number"
        if low is not None and (v <= low if open_low else v < low):
            return f"must be {'>' if open_low else '>='} {low}"
        if high is not None and (v >= high if open_high else v > high):
            return f"must be {'<' if open_high else '<='} {high}"
        return None

    return check


def one_of(choices: Iterable[Any]) -> Rule:
    choices = tuple(choices)
    names = " or ".join(map(repr, choices)) if len(choices) == 2 else f"one of {', '.join(map(repr, choices))}"
    return lambda v: None if v in choices else f"must be {names}"


def optional(rule: Rule) -> Rule:
    """`rule`, or None."""

    def check(v: Any) -> Optional[str]:
        problem = None if v is None else rule(v)
        return problem and f"{problem} (or None)"

    return check


def feature_lengths(v: Any) -> Optional[str]:
    """TASK_FEATURE_LENGTHS of a DSS task: a length for each of its four features, no other."""
    from dss_jax.data.paired import PAIRED_TEXT_FEATURES

    example = "{" + ", ".join(f"'{k}': 128" for k in PAIRED_TEXT_FEATURES) + "}"
    if not isinstance(v, Mapping) or not v:
        return f"must be a dict of feature name -> length, e.g. {example}"
    for k, n in v.items():
        if not isinstance(k, str) or positive_int(n):
            return f"must map feature names to positive integers ({k!r}: {n!r} does not)"
    missing = [k for k in PAIRED_TEXT_FEATURES if k not in v]
    unknown = sorted(k for k in v if k not in PAIRED_TEXT_FEATURES)
    if missing or unknown:
        # T5X's tasks have 'inputs' and 'targets'; a DSS task has two of each.
        what = "; ".join(
            part
            for part in (
                f"lacks {', '.join(map(repr, missing))}" if missing else "",
                f"has {', '.join(map(repr, unknown))}, which no DSS feature is called" if unknown else "",
            )
            if part
        )
        return f"must give the DSS features' lengths ({what}), e.g. {example}"
    return None


def check(values: Mapping[str, Any], rules: Mapping[str, Rule], macros: Mapping[str, str] = {}) -> None:
    """Raises SettingError for the first of `values` (`Configurable.param` -> value) that
    breaks its rule, naming the setting (and the macro it is set through) and the flag."""
    for name, value in values.items():
        rule = rules.get(name)
        problem = rule(value) if rule is not None else None
        if problem:
            macro = macros.get(name)
            where = f"{macro} ({name})" if macro else name
            raise SettingError(f"{where} {problem}, got {value!r}; set it with --gin.{macro or name}=...")


def check_gin(rules: Mapping[str, Rule]) -> None:
    """`check` over what the parsed gin config binds to the names in `rules`."""
    values, macros = gin_values(rules)
    check(values, rules, macros)


def gin_values(names: Iterable[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The values the parsed gin config binds to `Configurable.param` names (unbound ones
    and ones bound to `@configurable()` references left out), and for each one set
    through a macro, the macro that holds the value."""
    import gin

    values, macros = {}, {}
    for name in names:
        configurable, param = name.rsplit(".", 1)
        try:
            bound = gin.get_bindings(configurable, resolve_references=False)
        except (ValueError, KeyError):
            continue  # not registered in this binary
        if param not in bound:
            continue
        value, macro = _follow_macros(bound[param])
        if isinstance(value, gin.config.ConfigurableReference):
            continue  # built at run time; checked where it is used
        values[name] = value
        if macro:
            macros[name] = macro
    return values, macros


def _follow_macros(value: Any) -> tuple[Any, Optional[str]]:
    """(the value a chain of gin macros ends in, the macro that holds it)."""
    import gin

    macro = None
    for _ in range(100):  # gin rejects cycles; this only bounds the walk
        if not (isinstance(value, gin.config.ConfigurableReference) and value.configurable.name == "macro"):
            break
        macro = value.scoped_selector.split("/")[0]
        value = gin.query_parameter(f"{macro}/macro.value")
    return value, macro
