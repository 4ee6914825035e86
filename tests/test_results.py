"""A grid's readings from its runs' files: the checkpoint validation selects over a whole
run and within each budget of real tokens or examples, which budgets a run has a value
at, and the tables that read them."""

import csv
import json

import pytest

from dss_jax import gin_utils, results, sweep
from dss_jax.training import selection


def _run(sweep_dir, run, evals, patience, tested, tokens_per_step=100.0):
    """A finished run's files: validation records {step: accuracy}, the selection rule, and
    test metrics at the steps in `tested` (accuracy = 1 - step / 1000, so each is told apart)."""
    model = sweep_dir / "runs" / run.name / "model"
    (model / "validation").mkdir(parents=True)
    (model / "validation" / "metrics.jsonl").write_text(
        "".join(
            json.dumps(
                {"step": s, "decode/accuracy": a, "examples_seen": 16 * s, "real_tokens_seen": tokens_per_step * s}
            )
            + "\n"
            for s, a in sorted(evals.items())
        )
    )
    selection.write_rule(str(model), selection.SelectionRule(early_stopping_patience=patience))
    (model / "train").mkdir()
    last = max(evals)
    (model / "train" / "metrics.jsonl").write_text(
        json.dumps({"step": last, "real_tokens_per_step": tokens_per_step, "examples_per_step": 16, "rows_per_step": 2})
        + "\n"
    )
    for s in tested:
        d = sweep_dir / "runs" / run.name / "eval" / f"step_{s}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"accuracy": 1 - s / 1000}))


def _cfg(tmp_path, **kw):
    cfg = dict(
        sweep_dir=str(tmp_path / "sweep"),
        task_gin="tasks/synthetic.gin",
        methods=["finetune", "dss_gt"],
        sizes=["tiny"],
        fractions=[1.0],
        seeds=[0, 1],
        rationale_weights=[1.0],
        dss_label_source="gt",
        selection="validation",
        token_budgets=[250, 1000, 5000],
        example_budgets=[64],
    )
    return {**cfg, **kw}


def test_a_runs_readings_select_on_validation_within_each_budget(tmp_path):
    cfg = _cfg(tmp_path)
    run = sweep.plan(cfg)[0]
    # Stopped early at 10 (patience 3 after the best at 4): converged, so the 5000-token
    # budget it never reached still reads its best.
    _run(tmp_path / "sweep", run, {2: 0.1, 4: 0.5, 6: 0.4, 8: 0.5, 10: 0.2}, patience=3, tested=[])
    got = {
        (c.reading, c.budget): (c.evaluation and c.evaluation.step, c.reached)
        for c in results.choices(sweep.run_path(run, cfg), cfg)
    }
    assert got == {
        ("converged", None): (4, True),
        ("real_tokens", 250.0): (2, True),
        ("real_tokens", 1000.0): (4, True),
        ("real_tokens", 5000.0): (4, True),
        ("examples", 64.0): (4, True),
    }
    assert results.steps_to_evaluate(sweep.run_path(run, cfg), cfg) == [2, 4]
    assert results.run_result(sweep.run_path(run, cfg), cfg) is None  # not scored on test yet


def test_a_run_that_ran_out_of_steps_has_no_value_at_budgets_it_did_not_reach(tmp_path):
    cfg = _cfg(tmp_path)
    run = sweep.plan(cfg)[0]
    _run(tmp_path / "sweep", run, {2: 0.1, 4: 0.5, 6: 0.6}, patience=3, tested=[2, 4, 6])
    got = {
        (c.reading, c.budget): (c.evaluation and c.evaluation.step, c.reached)
        for c in results.choices(sweep.run_path(run, cfg), cfg)
    }
    assert got[("converged", None)] == (6, False)  # still improving when its steps ran out
    assert got[("real_tokens", 5000.0)] == (6, False)
    assert got[("real_tokens", 250.0)] == (2, True)


def test_the_tables_read_both_readings_with_differences_and_budgets_without_values(tmp_path):
    cfg = _cfg(tmp_path)
    runs = sweep.plan(cfg)
    scripts = {  # finetune stops early; dss_gt improves until its steps run out
        "finetune": ({2: 0.2, 4: 0.3, 6: 0.3, 8: 0.3}, 2),
        "dss_gt": ({2: 0.1, 4: 0.2, 6: 0.4, 8: 0.6}, 2),
    }
    for run in runs:
        evals, patience = scripts[run.method]
        _run(tmp_path / "sweep", run, evals, patience, tested=[2, 4, 6, 8], tokens_per_step=100 + run.seed)
    outcomes = sweep.finished(runs, cfg)
    assert {outcomes[r.name]["accuracy"] for r in runs} == {0.996, 0.992}  # finetune's step 4, dss_gt's 8
    results.collect(runs, outcomes, "accuracy", cfg["sweep_dir"], cfg)
    with open(tmp_path / "sweep" / "results.csv") as f:
        table = {(r["method"], r["seed"]): r for r in csv.DictReader(f)}
    assert table[("finetune", "0")]["selected_step"] == "4" and table[("finetune", "0")]["stopped_early"] == "True"
    assert table[("dss_gt", "1")]["selected_real_tokens"] == "808"
    assert table[("dss_gt", "1")]["stopped_early"] == "False"
    budgets = results.read_budgets(str(tmp_path / "sweep" / "budgets.csv"))
    at_5000 = {r["method"]: r["accuracy"] for r in budgets if r["budget"] == 5000}
    assert at_5000 == {"finetune": "0.996", "dss_gt": ""}  # dss_gt trained only 808 tokens
    md = (tmp_path / "sweep" / "results.md").read_text()
    assert "## At equal real tokens trained on" in md and "## At equal examples seen" in md
    assert "| dss_gt − finetune | - | tiny | 1 | 1 | -0.0040 | 0.0000 | yes |" in md
    assert "| dss_gt − finetune | - | tiny | 1 | 1 | 250 | +0.0000 |" in md
    assert "| dss_gt − finetune | - | tiny | 1 | 1 | 1k |" not in md  # no dss_gt value there
    assert "| dss_gt | - | tiny | 1 | 1 | 0.9980 ± 0.0000 (2) | – | – |" in md  # 250, 1k, 5k tokens
    results.plot_budgets(budgets, "accuracy", str(tmp_path / "f.png"))
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_auto_budgets_are_the_powers_of_two_a_run_spans_and_refuse_other_text(tmp_path):
    assert results.budgets_of("auto", [3_000.0, 40_000.0]) == [2.0**k for k in range(12, 17)]
    assert results.budgets_of([1000, 2000], [3_000.0]) == [1000.0, 2000.0]
    assert results.budgets_of("auto", [float("nan")]) == []
    cfg = _cfg(tmp_path, token_budgets="auto", example_budgets="auto")
    run = sweep.plan(cfg)[0]
    _run(tmp_path / "sweep", run, {2: 0.1, 4: 0.5, 6: 0.4}, patience=1, tested=[])
    got = [(c.reading, c.budget, c.evaluation.step) for c in results.choices(sweep.run_path(run, cfg), cfg)]
    assert ("real_tokens", 256.0, 2) in got and ("real_tokens", 512.0, 4) in got  # 200, 400, 600 tokens
    assert ("examples", 64.0, 4) in got  # 32, 64, 96 examples
    with pytest.raises(gin_utils.GinConfigError, match="token_budgets must be a list of positive numbers or 'auto'"):
        sweep.check_methods({**cfg, "token_budgets": "all"})
