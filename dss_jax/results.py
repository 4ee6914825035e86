"""What a sweep's runs show: results.csv, results.md and the figures (sweep.py runs them).

Each finished run gives one row: the test metric of the checkpoint the grid selects
(`sweep_config.selection`: 'validation', the one its validation evaluations select,
training/selection.py; 'last', the run's last checkpoint, as grids did before; a cfg
without the key reads 'last'), that checkpoint's step, examples and real tokens, and
what the run trained on in all. budgets.csv adds each run's test metric at the
checkpoint validation selects within each budget (`sweep_config.token_budgets`,
`example_budgets`: lists, or 'auto' for every power of two): the reading at equal
compute (tokens) or equal examples seen. results.md has mean ± std over seeds and each
method minus its baseline with the standard error of the difference, for every reading;
figure.png plots the metric against the fraction of training data, figure_budgets.png
against the budgets.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import os
from typing import Optional, Sequence

from dss_jax import files
from dss_jax.training import selection

SELECTIONS = ("last", "validation")
AUTO = "auto"  # budgets: every power of two a run's evaluations span
# A budget's axis -> the running total of a validation record it bounds.
BUDGET_AXES = {"real_tokens": "real_tokens_seen", "examples": "examples_seen"}
KEY_COLUMNS = ("run", "method", "init", "size", "fraction", "seed", "rationale_weight")
COMPUTE_COLUMNS = ("steps", "examples_per_step", "rows_per_step", "real_tokens")
SELECTED_COLUMNS = ("selected_step", "selected_examples", "selected_real_tokens", "stopped_early")


# --------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------


def evaluated_steps(run_dir: str) -> list[int]:
    """Steps with a finished test evaluation (run_dir/eval/step_<N>/metrics.json)."""
    eval_dir = files.path(os.path.join(run_dir, "eval"))
    if not eval_dir.is_dir():
        return []
    return sorted(
        int(d.name[5:])
        for d in eval_dir.iterdir()
        if d.name.startswith("step_") and d.name[5:].isdigit() and (d / "metrics.json").exists()
    )


def eval_metrics(run_dir: str, step: int) -> dict:
    return json.loads(files.path(os.path.join(run_dir, "eval", f"step_{step}", "metrics.json")).read_text())


@dataclasses.dataclass(frozen=True)
class Choice:
    """The checkpoint a reading selects from one run, and whether the reading holds: a
    budget the run neither reached nor stopped early before has no value."""

    reading: str  # "converged", or a budget axis of BUDGET_AXES
    budget: Optional[float]
    evaluation: Optional[selection.Evaluation]
    reached: bool


def choices(run_dir: str, cfg: dict) -> list[Choice]:
    """Every reading's checkpoint of a run trained with validation selection: the best over
    the whole run (reached when early stopping ended it), and the best within each budget
    (reached when the run trained past the budget, or stopped early before it)."""
    model_dir = os.path.join(run_dir, "model")
    rule = selection.read_rule(model_dir) or selection.SelectionRule()
    evals = selection.read_evaluations(model_dir, rule.metric)
    tracker = selection.Tracker(rule)
    for e in evals:
        tracker.add(e)
    stopped = tracker.should_stop
    out = [Choice("converged", None, selection.best_evaluation(evals, rule.mode), stopped)]
    trained = {"real_tokens": evals[-1].real_tokens_seen if evals else 0.0}
    trained["examples"] = evals[-1].examples_seen if evals else 0.0
    for axis, setting in (("real_tokens", "token_budgets"), ("examples", "example_budgets")):
        for budget in budgets_of(cfg.get(setting) or (), [getattr(e, BUDGET_AXES[axis]) for e in evals]):
            key = "max_real_tokens" if axis == "real_tokens" else "max_examples"
            best = selection.best_evaluation(evals, rule.mode, **{key: budget})
            out.append(Choice(axis, float(budget), best, stopped or trained[axis] >= budget))
    return out


def budgets_of(setting, seen: Sequence[float]) -> list[float]:
    """A grid's budgets on one axis: the list it binds, or for AUTO the powers of two from
    the first at or above the run's first evaluation to the first at or above its last
    (`seen`: the axis's running totals there), so every run is scored within each."""
    if setting != AUTO:
        return [float(b) for b in setting]
    finite = [x for x in seen if math.isfinite(x) and x > 0]
    if not finite:
        return []
    return [float(2**k) for k in range(math.ceil(math.log2(min(finite))), math.ceil(math.log2(max(finite))) + 1)]


def steps_to_evaluate(run_dir: str, cfg: dict) -> list[int]:
    """The test evaluations a run's readings need (validation selection)."""
    return sorted({c.evaluation.step for c in choices(run_dir, cfg) if c.evaluation is not None})


def run_result(run_dir: str, cfg: dict) -> Optional[dict]:
    """The test metrics of the checkpoint the grid selects from a run, once every
    evaluation its readings need has finished; else None."""
    done = evaluated_steps(run_dir)
    if cfg.get("selection", "last") == "last":
        return eval_metrics(run_dir, done[-1]) if done else None
    if not files.path(os.path.join(run_dir, "model", "validation", "metrics.jsonl")).is_file():
        return None
    needed = steps_to_evaluate(run_dir, cfg)
    if not needed or any(s not in done for s in needed):
        return None
    best = choices(run_dir, cfg)[0].evaluation
    return eval_metrics(run_dir, best.step)


def train_compute(run_dir: str) -> dict:
    """What a run trained on, from its train/metrics.jsonl: steps, the mean examples and
    rows per step, and the real (non-padding) tokens of every step summed."""
    from dss_jax.metrics_writer import read_records

    records = read_records(os.path.join(run_dir, "model", "train", "metrics.jsonl"))
    out = {k: "" for k in COMPUTE_COLUMNS}
    previous, tokens, examples, rows = 0, 0.0, 0.0, 0.0
    for r in records:  # each record averages the steps since the previous one
        n = r["step"] - previous
        tokens += r.get("real_tokens_per_step", float("nan")) * n
        examples += r.get("examples_per_step", float("nan")) * n
        rows += r.get("rows_per_step", float("nan")) * n
        previous = r["step"]
    if previous:
        out.update(
            steps=previous,
            examples_per_step=round(examples / previous, 2),
            rows_per_step=round(rows / previous, 2),
            real_tokens=int(tokens) if math.isfinite(tokens) else "",
        )
    return out


# --------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------


def collect(runs: list, results: dict[str, dict], metric: str, out_dir: str, cfg: Optional[dict] = None) -> list[dict]:
    """Writes results.csv / results.md (and budgets.csv with budgets) and returns the
    per-run rows. `runs`: sweep.Run; `results`: {run name: its selected test metrics}."""
    from dss_jax import sweep

    cfg = cfg or {}
    validation = cfg.get("selection", "last") == "validation"
    rows, budget_rows = [], []
    for run in runs:
        res = results.get(run.name)
        if res is None:
            continue
        if metric not in res:
            raise KeyError(f"{run.name}: metric {metric!r} not in its metrics.json (has {sorted(res)})")
        run_dir = sweep.run_path(run, {"sweep_dir": out_dir})
        row = {
            **dataclasses.asdict(run),
            "run": run.name,
            metric: float(res[metric]),
            "initial_checkpoint": sweep.initial_checkpoint(run, cfg) or "",
            **train_compute(run_dir),
        }
        if validation:
            converged, *budgeted = choices(run_dir, cfg)
            e = converged.evaluation
            row.update(
                selected_step=e.step,
                selected_examples=int(e.examples_seen),
                selected_real_tokens=int(e.real_tokens_seen),
                stopped_early=converged.reached,
            )
            for c in budgeted:
                value = eval_metrics(run_dir, c.evaluation.step)[metric] if c.reached and c.evaluation else ""
                budget_rows.append(
                    {
                        **{k: row[k] for k in KEY_COLUMNS},
                        "budget_axis": c.reading,
                        "budget": c.budget,
                        "selected_step": c.evaluation.step if c.evaluation else "",
                        "reached": c.reached,
                        metric: value,
                    }
                )
        rows.append(row)
    _write_csv(
        os.path.join(out_dir, "results.csv"),
        rows,
        [*KEY_COLUMNS, metric, "initial_checkpoint", *COMPUTE_COLUMNS, *(SELECTED_COLUMNS if validation else ())],
    )
    lines = _table(aggregate(rows, metric), metric, cfg, selected=validation)
    if budget_rows:
        _write_csv(
            os.path.join(out_dir, "budgets.csv"),
            budget_rows,
            [*KEY_COLUMNS, "budget_axis", "budget", "selected_step", "reached", metric],
        )
        lines += _budget_tables(budget_rows, metric, cfg)
    files.atomic_write(os.path.join(out_dir, "results.md"), "\n".join(lines) + "\n")
    return rows


def read_budgets(path: str) -> list[dict]:
    """The rows of a budgets.csv, with numbers as numbers ("" where a run has no value)."""
    rows = list(csv.DictReader(io.StringIO(files.path(path).read_bytes().decode("utf-8"), newline="")))
    for r in rows:
        r.update(
            fraction=float(r["fraction"]), rationale_weight=float(r["rationale_weight"]), budget=float(r["budget"])
        )
    return rows


def _write_csv(path: str, rows: list[dict], fields: list[str]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    files.atomic_write(path, text.getvalue())


def _table(groups: list[dict], metric: str, cfg: dict, selected: bool) -> list[str]:
    if selected:
        lines = [
            "## The checkpoint validation selects from the whole run",
            "",
            f"{metric} on the test split of each run's best checkpoint on validation; the step, examples and real",
            "tokens trained on up to it (means over seeds); how many runs early stopping ended (the others ran",
            "out of steps while still improving).",
            "",
            f"| method | init | size | fraction | λ | runs | {metric} (mean ± std) | selected step | examples "
            "| real tokens | stopped early |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    else:
        lines = [
            f"| method | init | size | fraction | λ | runs | {metric} (mean ± std) |",
            "|---|---|---|---|---|---|---|",
        ]
    for g in groups:
        line = (
            f"| {g['method']} | {g['init'] or '-'} | {g['size']} | {g['fraction']:g} | {g['rationale_weight']:g} "
            f"| {g['n']} | {g['mean']:.4f} ± {g['std']:.4f} |"
        )
        if selected:
            line += (
                f" {g['selected_step']:.0f} | {g['selected_examples']:.0f} | {g['selected_real_tokens']:.0f} "
                f"| {g['stopped_early']}/{g['n']} |"
            )
        lines.append(line)
    return lines + _difference_lines(groups, metric, cfg)


def _difference_lines(groups: list[dict], metric: str, cfg: dict, title: str = "") -> list[str]:
    diffs = differences(groups, _pairs(cfg))
    if not diffs:
        return []
    lines = [
        "",
        f"Differences of the mean {metric} over seeds{title}, method − baseline, with the standard error of the",
        "difference, sqrt(s_a²/n_a + s_b²/n_b); larger than the noise when |Δ| > 2 SE",
        "(n/a: fewer than two runs on a side).",
        "",
        "| method − baseline | init | size | fraction | λ | Δ | SE | \\|Δ\\| > 2 SE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in diffs:
        se = "n/a" if math.isnan(d["se"]) else f"{d['se']:.4f}"
        larger = "n/a" if math.isnan(d["se"]) else ("yes" if d["larger"] else "no")
        lines.append(
            f"| {d['method']} − {d['baseline']} | {d['init'] or '-'} | {d['size']} | {d['fraction']:g} "
            f"| {d['rationale_weight']:g} | {d['diff']:+.4f} | {se} | {larger} |"
        )
    return lines


def _budget_tables(budget_rows: list[dict], metric: str, cfg: dict) -> list[str]:
    """Per budget axis: a table of mean ± std (runs) with a column per budget, and one of
    each method − baseline difference at each budget."""
    lines = []
    for axis in BUDGET_AXES:
        mine = [r for r in budget_rows if r["budget_axis"] == axis]
        if not mine:
            continue
        what = "real tokens trained on" if axis == "real_tokens" else "examples seen"
        budgets = sorted({r["budget"] for r in mine})
        per_budget = {b: aggregate([r for r in mine if r["budget"] == b and r[metric] != ""], metric) for b in budgets}
        lines += [
            "",
            f"## At equal {what}",
            "",
            f"{metric} on the test split of the checkpoint validation selects among those within each budget of",
            f"{what}, mean ± std over seeds (runs); a run that neither reached the budget nor stopped early",
            "before it has no value there.",
            "",
            "| method | init | size | fraction | λ | " + " | ".join(_short(b) for b in budgets) + " |",
            "|---" * (5 + len(budgets)) + "|",
        ]
        cells: dict[tuple, dict[float, dict]] = {}
        for b in budgets:
            for g in per_budget[b]:
                cells.setdefault(_cell(g), {})[b] = g
        for key, by_budget in sorted(cells.items()):
            values = [
                f"{by_budget[b]['mean']:.4f} ± {by_budget[b]['std']:.4f} ({by_budget[b]['n']})"
                if b in by_budget
                else "–"
                for b in budgets
            ]
            lines.append("| " + " | ".join([*key, *values]) + " |")
        diffs = [(b, d) for b in budgets for d in differences(per_budget[b], _pairs(cfg))]
        if diffs:
            lines += [
                "",
                f"Differences at each budget of {what}, method − baseline, with the standard error of the",
                "difference; larger than the noise when |Δ| > 2 SE (n/a: fewer than two runs on a side).",
                "",
                "| method − baseline | init | size | fraction | λ | budget | Δ | SE | \\|Δ\\| > 2 SE |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for b, d in diffs:
                se = "n/a" if math.isnan(d["se"]) else f"{d['se']:.4f}"
                larger = "n/a" if math.isnan(d["se"]) else ("yes" if d["larger"] else "no")
                lines.append(
                    f"| {d['method']} − {d['baseline']} | {d['init'] or '-'} | {d['size']} | {d['fraction']:g} "
                    f"| {d['rationale_weight']:g} | {_short(b)} | {d['diff']:+.4f} | {se} | {larger} |"
                )
    return lines


def _cell(g: dict) -> tuple[str, ...]:
    return (g["method"], g["init"] or "-", g["size"], f"{g['fraction']:g}", f"{g['rationale_weight']:g}")


def _short(budget: float) -> str:
    """1,000,000 -> 1M, 12,800 -> 12.8k: a budget as a column head."""
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if budget >= size:
            return f"{budget / size:g}{unit}"
    return f"{budget:g}"


def _pairs(cfg: dict) -> Sequence[Sequence[str]]:
    return cfg.get("differences") or default_differences(cfg.get("dss_label_source", "gt"))


def default_differences(dss_label_source: str = "gt") -> list[tuple[str, str]]:
    """The comparisons a grid is read by, (method, baseline): Distilling Step-by-Step
    against the baseline trained on the same labels, and against the single-task ablation
    (whose labels, like `dss`'s, come from dss_label_source)."""
    same = {"gt": ("dss_gt", "finetune"), "teacher": ("dss_teacher", "distill")}.get(dss_label_source)
    pairs = [("dss_gt", "finetune"), ("dss_teacher", "distill")]
    if same:
        pairs += [("dss", same[1]), (same[0], "single_task"), ("dss", "single_task")]
    return pairs


def differences(groups: list[dict], pairs: Sequence[Sequence[str]]) -> list[dict]:
    """method − baseline wherever both ran from the same start, size and fraction (each of
    the method's λ): the difference of their means over seeds, its standard error
    sqrt(s_a²/n_a + s_b²/n_b) (NaN with fewer than two runs on a side) and whether |Δ|
    exceeds two of them, the reading the comparison's protocol fixed."""
    by_key: dict[tuple, list[dict]] = {}
    for g in groups:
        by_key.setdefault((g["method"], g["init"], g["size"], g["fraction"]), []).append(g)
    out = []
    for method, baseline in pairs:
        for (m, init, size, fraction), mine in sorted(by_key.items()):
            if m != method or (baseline, init, size, fraction) not in by_key:
                continue
            bases = by_key[(baseline, init, size, fraction)]
            for a, base in itertools.product(mine, bases):
                if len(bases) > 1 and base["rationale_weight"] != a["rationale_weight"]:
                    continue  # a baseline run at several λ is compared at the same λ
                se = math.sqrt(a["std"] ** 2 / a["n"] + base["std"] ** 2 / base["n"])
                if min(a["n"], base["n"]) < 2:
                    se = float("nan")
                diff = a["mean"] - base["mean"]
                out.append(
                    dict(
                        method=method,
                        baseline=baseline,
                        init=init,
                        size=size,
                        fraction=fraction,
                        rationale_weight=a["rationale_weight"],
                        diff=diff,
                        se=se,
                        larger=abs(diff) > 2 * se,
                    )
                )
    return out


def aggregate(rows: list[dict], metric: str) -> list[dict]:
    """Mean and standard deviation over seeds per (init, method, size, fraction, λ), with
    the means of the selected checkpoints' step, examples and tokens when rows have them
    and how many runs stopped early."""
    keyed: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r.get("init", ""), r["method"], r["size"], r["fraction"], r["rationale_weight"])
        keyed.setdefault(key, []).append(r)
    out = []
    for (init, method, size, fraction, lam), group in sorted(keyed.items()):
        values = [float(r[metric]) for r in group]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        g = dict(init=init, method=method, size=size, fraction=fraction, rationale_weight=lam, n=len(values))
        g.update(mean=mean, std=std)
        if all("selected_examples" in r for r in group):
            for k in ("selected_step", "selected_examples", "selected_real_tokens"):
                g[k] = sum(float(r[k]) for r in group) / len(group)
            g["stopped_early"] = sum(str(r["stopped_early"]) == "True" for r in group)
        out.append(g)
    return out


def plot(rows: list[dict], metric: str, path: str, title: str = "") -> None:
    """Accuracy vs. fraction of training data, one line per method (and size, and λ);
    one panel per initialisation (e.g. pretrained and scratch side by side), on one scale."""
    plt = _pyplot()
    groups = aggregate(rows, metric)
    inits = sorted({g["init"] for g in groups}) or [""]
    fig, axes = plt.subplots(1, len(inits), figsize=(6 * len(inits), 4.2), dpi=120, sharey=True, squeeze=False)
    label_of, colours = _labels(groups, plt)
    for ax, init in zip(axes[0], inits):
        series: dict[str, list[dict]] = {}
        for g in groups:
            if g["init"] == init:
                series.setdefault(label_of(g), []).append(g)
        for label, points in sorted(series.items()):
            points.sort(key=lambda g: g["fraction"])
            ax.errorbar(
                [100 * g["fraction"] for g in points],
                [100 * g["mean"] for g in points],
                yerr=[100 * g["std"] for g in points],
                marker="o",
                capsize=3,
                label=label,
                color=colours[label],
            )
        ax.set_xlabel("% of training data")
        ax.set_title(f"{title} ({init})" if init else title)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel(f"test {metric} (%), mean ± std over seeds")
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def plot_budgets(budget_rows: list[dict], metric: str, path: str, title: str = "") -> None:
    """The metric at each budget, one line per method: a row of panels per budget axis
    (real tokens, examples seen), a panel per (initialisation, fraction)."""
    plt = _pyplot()
    rows = [r for r in budget_rows if r[metric] != ""]
    axes_used = [a for a in BUDGET_AXES if any(r["budget_axis"] == a for r in rows)]
    cells = sorted({(r["init"], r["fraction"]) for r in rows})
    if not axes_used or not cells:
        return
    fig, axes = plt.subplots(
        len(axes_used), len(cells), figsize=(5.5 * len(cells), 4 * len(axes_used)), dpi=120, sharey=True, squeeze=False
    )
    all_groups = aggregate(rows, metric)
    label_of, colours = _labels(all_groups, plt)
    for i, axis in enumerate(axes_used):
        for j, (init, fraction) in enumerate(cells):
            ax = axes[i][j]
            series: dict[str, list[tuple[float, dict]]] = {}
            for b in sorted({r["budget"] for r in rows if r["budget_axis"] == axis}):
                mine = [r for r in rows if r["budget_axis"] == axis and r["budget"] == b]
                for g in aggregate(mine, metric):
                    if (g["init"], g["fraction"]) == (init, fraction):
                        series.setdefault(label_of(g), []).append((b, g))
            for label, points in sorted(series.items()):
                ax.errorbar(
                    [b for b, _ in points],
                    [100 * g["mean"] for _, g in points],
                    yerr=[100 * g["std"] for _, g in points],
                    marker="o",
                    capsize=3,
                    label=label,
                    color=colours[label],
                )
            ax.set_xscale("log")
            ax.set_xlabel("real tokens trained on" if axis == "real_tokens" else "examples seen")
            where = ", ".join(x for x in (init, f"{100 * fraction:g}% of the data") if x)
            ax.set_title(f"{title} ({where})" if title else where)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        axes[i][0].set_ylabel(f"test {metric} (%), mean ± std")
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def _savefig(fig, path: str) -> None:
    if files.is_remote(path):  # written locally (its name gives the format), uploaded whole
        with files.atomic_output(path) as tmp:
            fig.savefig(tmp)
    else:
        fig.savefig(path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _labels(groups: list[dict], plt):
    """(the line label of a group, {label: colour}): one colour per method in every panel,
    so that panels side by side read the same."""
    from dss_jax.sweep import DSS_METHODS

    sizes = {g["size"] for g in groups}
    lams = {g["rationale_weight"] for g in groups if g["method"] in DSS_METHODS}

    def label_of(g: dict) -> str:
        label = g["method"]
        if g["method"] in DSS_METHODS and len(lams) > 1:
            label += f" (λ={g['rationale_weight']:g})"
        return label + (f" [{g['size']}]" if len(sizes) > 1 else "")

    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = {label: cycle[i % len(cycle)] for i, label in enumerate(sorted({label_of(g) for g in groups}))}
    return label_of, colours
