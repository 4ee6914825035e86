"""A deterministic scripted teacher and example set shared by the teacher/annotate tests.

Example k asks to add two numbers; the teacher answers in svamp style, except:
  k % 10 == 3  -> no answer phrase (unparsable)
  k % 10 == 6  -> sample 0 is wrong by one, the other samples are right
  k % 10 == 8  -> every sample is wrong (the teacher's label disagrees with the gold)
so voting, filtering and accuracy have something to do.
"""

from __future__ import annotations

import json
import re

PROMPT = (
    '## id: test-prompt\n## stop: ["\\n\\nQ:"]\n'
    "Q: Add 1 and 2.\nA: 1 plus 2. The answer is (1 + 2).\n\nQ: {{input}}\nA:"
)


def operands(k: int) -> tuple[int, int]:
    return 3 + k, 10 + 2 * k


def example(k: int) -> dict:
    a, b = operands(k)
    return {"id": f"ex{k:03d}", "input": f"Item {k}: add {a} and {b}.", "label": f"( {a}.0 + {b}.0 )"}


def write_inputs(path, n: int) -> list[dict]:
    records = [example(k) for k in range(n)]
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return records


def write_prompt(path) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(PROMPT)
    return str(path)


def item_of(prompt: str) -> int:
    """The example number a rendered prompt asks about (the last 'Item k:' in it)."""
    return int(re.findall(r"Item (\d+):", prompt)[-1])


def teacher(prompt: str, index: int) -> str:
    k = item_of(prompt)
    a, b = operands(k)
    if k % 10 == 3:
        return f" {a} and {b} make something, I think.\n\nQ: an invented question"
    if k % 10 == 8 or (k % 10 == 6 and index == 0):
        b += 1
    return f" We add {a} and {b} to get {a + b}. The answer is ({a} + {b}).\n\nQ: an invented question"
