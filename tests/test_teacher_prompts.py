"""Prompt templates: file syntax, placeholders, and built-in prompts the parsers understand."""

import re

import pytest

from dss_jax.data import parsers, safe_eval
from dss_jax.teacher import prompts
from dss_jax.teacher.prompts import PromptError

FAMILIES = ["svamp", "cqa", "anli1", "esnli"]
# What precedes the teacher's part of each exemplar in the built-in few-shot prompts.
ANSWER_CUE = {"svamp": "\nA:", "cqa": "\nA:", "anli1": "\nAnswer:", "esnli": "\nExplanation:"}
NLI_LABELS = {"entailment", "neutral", "contradiction"}


def exemplars(template, family):
    """(exemplar question, teacher part) pairs of a few-shot body, the query excluded."""
    blocks = template.body.split("\n\n")
    out = []
    for block in blocks:
        if ANSWER_CUE[family] in block and "{{" not in block:
            question, answer = block.rsplit(ANSWER_CUE[family], 1)
            out.append((question, answer))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_builtin_few_shot_exemplars_parse_with_the_family_parser(family):
    template = prompts.default_template(family, "cot")
    pairs = exemplars(template, family)
    assert len(pairs) >= 5
    labels = []
    for question, answer in pairs:
        parsed = parsers.parse_completion(family, answer)
        assert parsed.ok, (family, answer)
        labels.append(parsed.label)
        if family == "svamp":
            # The equation is over the question's numbers and gives the rationale's result.
            value = safe_eval.evaluate(parsed.label)
            assert value is not None and f"= {value:g}" in answer
            assert set(re.findall(r"\d+", parsed.label)) <= set(re.findall(r"\d+", question))
        elif family == "cqa":
            choices = re.findall(r"^\([a-e]\) (.+)$", question, flags=re.M)
            assert parsed.label in choices
        else:
            assert parsed.label in NLI_LABELS
    if family != "svamp":
        assert len(set(labels)) >= 3  # the exemplars do not all teach the same answer
    assert template.fields == ("input",)
    assert template.stop and all(template.stop)


@pytest.mark.parametrize("family", FAMILIES + ["nli"])
@pytest.mark.parametrize("kind", ["cot", "zeroshot"])
def test_builtin_prompts_render_the_input_last(family, kind):
    template = prompts.default_template(family, kind)
    text = template.render({"id": "x", "input": "Premise: {odd} braces stay.\nHypothesis: fine."})
    assert "{odd} braces stay." in text and "{{" not in text
    assert text.rstrip().endswith((":", "step by step."))
    if kind == "zeroshot":
        assert "Let's think step by step." in text


def test_every_builtin_file_loads():
    names = prompts.builtin_names()
    assert {f"{f}_{k}" for f in FAMILIES for k in ("cot", "zeroshot")} <= set(names)
    for name in names:
        assert prompts.load_builtin(name).id.startswith("dss-jax-")


def test_header_directives_and_placeholders(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text(
        '## a comment line\n## id: my-prompt\n## stop: ["\\n\\nQ:", "###"]\n## system: "Be brief."\n'
        "\n\nPremise: {{ premise }}\nHypothesis: {{hypothesis}}\n{ not a placeholder }\nAnswer:\n\n",
        encoding="utf-8",
    )
    t = prompts.load_template(path)
    assert (t.id, t.stop, t.system) == ("my-prompt", ("\n\nQ:", "###"), "Be brief.")
    assert t.fields == ("premise", "hypothesis")
    assert t.render({"premise": "P", "hypothesis": 7}) == "Premise: P\nHypothesis: 7\n{ not a placeholder }\nAnswer:"
    with pytest.raises(PromptError, match=r"uses \{\{hypothesis\}\} but record 'r1'"):
        t.render({"id": "r1", "premise": "P"})


def test_default_id_is_the_file_stem_and_stop_may_be_a_string(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text('## stop: "\\n"\nQ: {{input}}\nA:', encoding="utf-8")
    t = prompts.load_template(path)
    assert (t.id, t.stop, t.system) == ("short", ("\n",), None)


@pytest.mark.parametrize(
    "text, message",
    [
        ("## id: x\n", "no body"),
        ("Q: what?\nA:", "no {{input}}"),
        ('## stop: ["unterminated\nQ: {{input}}', "not valid JSON"),
        ("## stop: [1, 2]\nQ: {{input}}", "stop:' must be"),
        # The id is written into every cached sample: a lone surrogate would fail each write.
        ('## id: "p\\ud800"\nQ: {{input}}', "bad.txt:1: '## id:' value holds an unpaired UTF-16 surrogate"),
        ('## stop: ["\\udfff"]\nQ: {{input}}', "bad.txt:1: '## stop:' value holds an unpaired"),
    ],
)
def test_bad_templates_name_the_file(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PromptError, match=re.escape(message)) as info:
        prompts.load_template(path)
    assert str(path) in str(info.value)


def test_unreadable_prompt_files_are_named(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"## id: x\nQ: {{input}} caf\xe9\n")
    with pytest.raises(PromptError, match=re.escape(f"{path}:2: not valid UTF-8 (byte 0xe9)")):
        prompts.load_template(path)
    with pytest.raises(PromptError, match="is not a regular file"):
        prompts.load_template(tmp_path)


def test_resolve_template(tmp_path):
    assert prompts.resolve_template(None, "svamp").id == "dss-jax-svamp-cot-v1"
    assert prompts.resolve_template("zeroshot", "nli").id == "dss-jax-anli1-zeroshot-v1"
    assert prompts.resolve_template("cqa_cot", "svamp").id == "dss-jax-cqa-cot-v1"
    path = tmp_path / "p.txt"
    path.write_text("{{input}} ->", encoding="utf-8")
    assert prompts.resolve_template(str(path), "svamp").body == "{{input}} ->"
    with pytest.raises(PromptError, match="prompt file not found: .*missing.txt"):
        prompts.resolve_template(str(tmp_path / "missing.txt"), "svamp")
    with pytest.raises(PromptError, match="no built-in prompt 'nope'; built-in prompts: anli1_cot"):
        prompts.resolve_template("nope", "svamp")
    with pytest.raises(PromptError, match="no built-in prompt for dataset family 'gsm8k'"):
        prompts.resolve_template(None, "gsm8k")
