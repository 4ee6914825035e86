"""The problem shapes of the synthetic dataset, and `generate_problem`, which draws one.

Each template draws people, things and numbers and returns a `Problem` with the given
number of operations (or None when the numbers it drew do not fit; the caller draws
again). Shapes, by operation count:

    1: combine, change_gain, change_loss, transfer, start_unknown, compare_more,
       compare_difference, equal_groups, selection, sharing, grouping, rate_total, rate_unit
    2: combine, change_sequence, compare_chain, compare_total, groups_plus, nested_groups,
       rate_two_level, shopping_change, shopping_total, combine_share, remove_share, bus
    3: combine, change_sequence, compare_chain, groups_plus, shopping_change,
       shopping_total, bus, total_then_share, difference_of_products

`transfer` and `selection` carry a number the question does not need (any problem may
also get a distractor sentence, see problems.add_distractor).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable, Optional

from dss_jax.data.synthetic.problems import (
    CALC,
    COLLECT,
    CONTAINERS,
    DAYS,
    GAINS,
    ITEMS,
    LOSSES,
    MAKERS,
    OUTER,
    PLACES,
    RATES,
    VEHICLES,
    Draw,
    Expr,
    NumberRange,
    Problem,
    add,
    add_distractor,
    check,
    div,
    join_and,
    mul,
    sub,
)

Template = Callable[[Draw, int], Optional[Problem]]
TEMPLATES: dict[str, tuple[Template, tuple[int, ...]]] = {}  # name -> (template, operation counts)


def template(*op_counts: int):
    def register(fn: Template) -> Template:
        TEMPLATES[fn.__name__] = (fn, op_counts)
        return fn

    return register


# --------------------------------------------------------------------------------------
# One operation
# --------------------------------------------------------------------------------------


@template(1, 2, 3)
def combine(d: Draw, n: int) -> Problem:
    p, obj = d.person(), d.noun()
    past, base = d.pick(COLLECT)
    when = d.rng.sample(DAYS if d.coin() else PLACES, n + 1)
    xs = [d.leaf(d.num()) for _ in range(n + 1)]
    body = [f"{p.name} {past} {join_and([f'{x} {obj} {w}' for x, w in zip(xs, when)])}."]
    expr: Expr = xs[0]
    for i, x in enumerate(xs[1:], start=1):
        say = f"Altogether {p.subj} {past} {CALC} {obj}." if i == n else f"So far that makes {CALC} {obj}."
        expr = add(expr, x, say)
    return d.problem(
        body,
        f"How many {obj} did {p.name} {base} altogether?",
        expr,
        f"{p.name} {past} {join_and([x.ref for x in xs])} {obj}.",
    )


@template(1)
def change_gain(d: Draw, n: int) -> Problem:
    p, friend, obj = d.person(), d.person(), d.noun()
    a, b = d.leaf(d.num()), d.leaf(d.num())
    gain = d.pick(GAINS)
    return d.problem(
        [f"{p.name} had {a} {obj}.", f"{p.Subj} {gain.format(n=b, obj=obj, friend=friend.name)}."],
        f"How many {obj} does {p.name} have now?",
        add(a, b, f"Now {p.subj} has {CALC} {obj}."),
        f"{p.name} had {a.ref} {obj} and {gain.format(n=b.ref, obj=obj, friend=friend.name)}.",
    )


@template(1)
def change_loss(d: Draw, n: int) -> Problem:
    p, friend, obj = d.person(), d.person(), d.noun()
    big, small = d.pair()
    a, b = d.leaf(big), d.leaf(small)
    loss = d.pick(LOSSES)
    return d.problem(
        [f"{p.name} had {a} {obj}.", f"{p.Subj} {loss.format(n=b, obj=obj, friend=friend.name)}."],
        f"How many {obj} does {p.name} have left?",
        sub(a, b, f"{p.Subj} has {CALC} {obj} left."),
        f"{p.name} had {a.ref} {obj} and {loss.format(n=b.ref, obj=obj, friend=friend.name)}.",
    )


@template(1)
def transfer(d: Draw, n: int) -> Problem:
    giver, taker, obj = d.person(), d.person(), d.noun()
    big, small = d.pair()
    other = d.num_except(big, small)
    if d.coin():  # ask about the one who receives; the giver's count is not needed
        c, b = d.leaf(other), d.leaf(small)
        body = [
            f"{giver.name} had {big} {obj} and {taker.name} had {c} {obj}.",
            f"{giver.name} gave {b} of {giver.poss} {obj} to {taker.name}.",
        ]
        return d.problem(
            body,
            f"How many {obj} does {taker.name} have now?",
            add(c, b, f"So {taker.name} has {CALC} {obj} now."),
            f"{taker.name} had {c.ref} {obj} and got {b.ref} more from {giver.name}.",
            (big,),
        )
    a, b = d.leaf(big), d.leaf(small)
    body = [
        f"{giver.name} had {a} {obj} and {taker.name} had {other} {obj}.",
        f"{giver.name} gave {b} of {giver.poss} {obj} to {taker.name}.",
    ]
    return d.problem(
        body,
        f"How many {obj} does {giver.name} have now?",
        sub(a, b, f"So {giver.name} has {CALC} {obj} now."),
        f"{giver.name} had {a.ref} {obj} and gave {b.ref} of them away.",
        (other,),
    )


@template(1)
def start_unknown(d: Draw, n: int) -> Problem:
    p, friend, obj = d.person(), d.person(), d.noun()
    if d.coin():
        big, small = d.pair()
        c, b = d.leaf(big), d.leaf(small)
        gain = d.pick(GAINS)
        return d.problem(
            [
                f"{p.name} had some {obj}.",
                f"{p.Subj} {gain.format(n=b, obj=obj, friend=friend.name)} and now has {c} {obj}.",
            ],
            f"How many {obj} did {p.name} have at first?",
            sub(c, b, f"Before that {p.subj} had {CALC} {obj}."),
            f"{p.name} has {c.ref} {obj} after getting {b.ref} more.",
        )
    c, b = d.leaf(d.num()), d.leaf(d.num())
    loss = d.pick(LOSSES)
    return d.problem(
        [
            f"{p.name} had some {obj}.",
            f"{p.Subj} {loss.format(n=b, obj=obj, friend=friend.name)} and now has {c} {obj} left.",
        ],
        f"How many {obj} did {p.name} have at first?",
        add(c, b, f"So at first {p.subj} had {CALC} {obj}."),
        f"{p.name} has {c.ref} {obj} left after losing {b.ref} of them.",
    )


@template(1)
def compare_more(d: Draw, n: int) -> Problem:
    first, second, obj = d.person(), d.person(), d.noun()
    more = d.coin()
    big, small = d.pair()
    a, b = (d.leaf(d.num()), d.leaf(d.num())) if more else (d.leaf(big), d.leaf(small))
    word = "more" if more else "fewer"
    return d.problem(
        [f"{first.name} has {a} {obj}.", f"{second.name} has {b} {word} {obj} than {first.name}."],
        f"How many {obj} does {second.name} have?",
        (add if more else sub)(a, b, f"So {second.name} has {CALC} {obj}."),
        f"{second.name} has {b.ref} {word} {obj} than {first.name}, who has {a.ref}.",
    )


@template(1)
def compare_difference(d: Draw, n: int) -> Problem:
    first, second, obj = d.person(), d.person(), d.noun()
    big, small = d.pair()
    a, b = d.leaf(big), d.leaf(small)
    question = (
        f"How many more {obj} does {first.name} have than {second.name}?"
        if d.coin()
        else f"How many fewer {obj} does {second.name} have than {first.name}?"
    )
    return d.problem(
        [f"{first.name} has {a} {obj} and {second.name} has {b} {obj}."],
        question,
        sub(a, b, f"The difference is {CALC} {obj}."),
        f"{first.name} has {a.ref} {obj} and {second.name} has {b.ref}.",
    )


@template(1)
def equal_groups(d: Draw, n: int) -> Problem:
    p, obj = d.person(), d.noun()
    box, boxes = d.pick(CONTAINERS)
    g, k = d.leaf(d.small()), d.leaf(d.num())
    return d.problem(
        [f"{p.name} has {g} {boxes} with {k} {obj} in each {box}."],
        f"How many {obj} does {p.name} have in all?",
        mul(g, k, f"That is {CALC} {obj}."),
        f"{p.name} has {g.ref} {boxes} of {k.ref} {obj}.",
    )


@template(1)
def selection(d: Draw, n: int) -> Problem:
    p, obj, other = d.person(), d.noun(), d.noun()
    box, boxes = d.pick(CONTAINERS)
    g, k = d.leaf(d.small()), d.leaf(d.num())
    unused = d.num_except(g.value, k.value)
    pair = [f"{k} {obj}", f"{unused} {other}"]
    if d.coin():
        pair.reverse()
    return d.problem(
        [f"{p.name} packed {g} {boxes}, each with {' and '.join(pair)}."],
        f"How many {obj} did {p.name} pack?",
        mul(g, k, f"So {p.subj} packed {CALC} {obj}."),
        f"There are {g.ref} {boxes} with {k.ref} {obj} in each.",
        (unused,),
    )


@template(1)
def sharing(d: Draw, n: int) -> Problem:
    p, obj = d.person(), d.noun()
    k = d.small()
    a, b = d.leaf(k * d.num()), d.leaf(k)
    return d.problem(
        [f"{p.name} has {a} {obj} and shares them equally among {b} friends."],
        f"How many {obj} does each friend get?",
        div(a, b, f"Each friend gets {CALC} {obj}."),
        f"{p.name} shares {a.ref} {obj} among {b.ref} friends.",
    )


@template(1)
def grouping(d: Draw, n: int) -> Problem:
    p, obj = d.person(), d.noun()
    box, boxes = d.pick(CONTAINERS)
    per = d.small()
    a, b = d.leaf(per * d.num()), d.leaf(per)
    return d.problem(
        [f"{p.name} has {a} {obj}.", f"{p.Subj} puts them into {boxes} with {b} {obj} in each {box}."],
        f"How many {boxes} does {p.name} fill?",
        div(a, b, f"{p.Subj} fills {CALC} {boxes}."),
        f"{p.name} puts {a.ref} {obj} into {boxes} of {b.ref}.",
    )


@template(1)
def rate_total(d: Draw, n: int) -> Problem:
    p = d.person()
    does, _, do, what, period = d.pick(RATES)
    r, t = d.leaf(d.num()), d.leaf(d.small())
    return d.problem(
        [f"{p.name} {does} {r} {what} every {period}."],
        f"How many {what} does {p.name} {do} in {t} {period}s?",
        mul(r, t, f"In total that is {CALC} {what}."),
        f"{p.name} {does} {r.ref} {what} each {period} for {t.ref} {period}s.",
    )


@template(1)
def rate_unit(d: Draw, n: int) -> Problem:
    p = d.person()
    _, did, do, what, period = d.pick(RATES)
    days = d.small()
    total, t = d.leaf(days * d.num()), d.leaf(days)
    return d.problem(
        [f"{p.name} {did} {total} {what} in {t} {period}s, the same number every {period}."],
        f"How many {what} did {p.name} {do} each {period}?",
        div(total, t, f"Each {period} that is {CALC} {what}."),
        f"{p.name} {did} {total.ref} {what} in {t.ref} {period}s.",
    )


# --------------------------------------------------------------------------------------
# Two and three operations
# --------------------------------------------------------------------------------------


@template(2, 3)
def change_sequence(d: Draw, n: int) -> Optional[Problem]:
    p, friend, obj = d.person(), d.person(), d.noun()
    start = d.leaf(d.num())
    expr: Expr = start
    total, events, refs = start.value, [], []
    for i in range(n):
        can_lose = total - 1 >= d.numbers.low
        if can_lose and d.coin():
            x = d.leaf(d.num(high=min(d.numbers.high, total - 1)))
            phrase, op = d.pick(LOSSES), sub
            total -= x.value
        else:
            x = d.leaf(d.num())
            phrase, op = d.pick(GAINS), add
            total += x.value
        events.append(phrase.format(n=x, obj=obj, friend=friend.name))
        refs.append(phrase.format(n=x.ref, obj=obj, friend=friend.name))
        say = f"So now {p.subj} has {CALC} {obj}." if i == n - 1 else f"After that {p.subj} had {CALC} {obj}."
        expr = op(expr, x, say)
    body = [f"{p.name} had {start} {obj}.", f"{p.Subj} {events[0]}."] + [f"Then {p.subj} {e}." for e in events[1:]]
    return d.problem(
        body,
        f"How many {obj} does {p.name} have now?",
        expr,
        f"{p.name} started with {start.ref} {obj}, {join_and(refs)}.",
    )


_ACTIONS = (
    ("did", "do", "push-ups"),
    ("scored", "score", "points"),
    ("made", "make", "paper planes"),
    ("sold", "sell", "tickets"),
    ("ran", "run", "laps"),
    ("picked", "pick", "strawberries"),
)


@template(2, 3)
def compare_chain(d: Draw, n: int) -> Optional[Problem]:
    did, do, what = d.pick(_ACTIONS)
    people = [d.person() for _ in range(n + 1)]
    first = d.leaf(d.num())
    expr: Expr = first
    total = first.value
    body = [f"{people[0].name} {did} {first} {what}."]
    for i in range(1, n + 1):
        if total - 1 >= d.numbers.low and d.coin():
            x, word, op = d.leaf(d.num(high=min(d.numbers.high, total - 1))), "fewer", sub
            total -= x.value
        else:
            x, word, op = d.leaf(d.num()), "more", add
            total += x.value
        body.append(f"{people[i].name} {did} {x} {word} {what} than {people[i - 1].name}.")
        expr = op(expr, x, f"{people[i].name} {did} {CALC} {what}.")
    return d.problem(
        body, f"How many {what} did {people[-1].name} {do}?", expr, f"{people[0].name} {did} {first.ref} {what}."
    )


@template(2)
def compare_total(d: Draw, n: int) -> Problem:
    first, second, obj = d.person(), d.person(), d.noun()
    more = d.coin()
    big, small = d.pair()
    a, b = (d.leaf(d.num()), d.leaf(d.num())) if more else (d.leaf(big), d.leaf(small))
    word = "more" if more else "fewer"
    second_has = (add if more else sub)(a, b, f"{second.name} has {CALC} {obj}.")
    return d.problem(
        [f"{first.name} has {a} {obj}.", f"{second.name} has {b} {word} {obj} than {first.name}."],
        f"How many {obj} do {first.name} and {second.name} have together?",
        add(a, second_has, f"Together they have {CALC} {obj}."),
        f"{first.name} has {a.ref} {obj} and {second.name} has {b.ref} {word}.",
    )


@template(2, 3)
def groups_plus(d: Draw, n: int) -> Optional[Problem]:
    p, friend, obj = d.person(), d.person(), d.noun()
    box, boxes = d.pick(CONTAINERS)
    g, k, c = d.leaf(d.small()), d.leaf(d.num()), d.leaf(d.num())
    body = [f"{p.name} bought {g} {boxes} of {obj} with {k} {obj} in each {box}.", f"{p.Subj} already had {c} {obj}."]
    bought = mul(g, k, f"The {boxes} hold {CALC} {obj}.")
    intro = f"{p.name} bought {g.ref} {boxes} of {k.ref} {obj} and had {c.ref} before."
    if n == 2:
        expr = add(bought, c, f"With the ones {p.subj} already had, that makes {CALC} {obj}.")
        return d.problem(body, f"How many {obj} does {p.name} have now?", expr, intro)
    total = g.value * k.value + c.value
    e = d.leaf(d.num(high=min(d.numbers.high, total - 1)))
    body.append(f"Then {p.subj} gave {e} {obj} to {friend.name}.")
    expr = sub(
        add(bought, c, f"Together {p.subj} had {CALC} {obj}."),
        e,
        f"After giving some to {friend.name}, {p.subj} has {CALC} {obj}.",
    )
    return d.problem(body, f"How many {obj} does {p.name} have now?", expr, intro)


@template(2)
def nested_groups(d: Draw, n: int) -> Problem:
    p, obj = d.person(), d.noun()
    shelf, shelves = d.pick(OUTER)
    box, boxes = d.pick(CONTAINERS)
    a, b, c = d.leaf(d.small()), d.leaf(d.small()), d.leaf(d.num())
    return d.problem(
        [f"{p.name}'s store has {a} {shelves}.", f"Each {shelf} holds {b} {boxes} and each {box} has {c} {obj}."],
        f"How many {obj} are in {p.name}'s store?",
        mul(mul(a, b, f"That is {CALC} {boxes}."), c, f"So there are {CALC} {obj}."),
        f"There are {a.ref} {shelves} with {b.ref} {boxes} each, and {c.ref} {obj} in every {box}.",
    )


@template(2)
def rate_two_level(d: Draw, n: int) -> Problem:
    maker, things = d.pick(MAKERS)
    r, h, days = d.leaf(d.num()), d.leaf(d.small()), d.leaf(d.small())
    return d.problem(
        [f"A {maker} makes {r} {things} every hour.", f"It works {h} hours a day."],
        f"How many {things} does the {maker} make in {days} days?",
        mul(mul(r, h, f"That is {CALC} {things} a day."), days, f"In {days.ref} days it makes {CALC} {things}."),
        f"The {maker} makes {r.ref} {things} an hour for {h.ref} hours a day.",
    )


@template(2, 3)
def shopping_change(d: Draw, n: int) -> Problem:
    p = d.person()
    (_, items), (other, _) = d.rng.sample(ITEMS, 2)
    k, price = d.leaf(d.small()), d.leaf(d.num())
    extra = d.num() if n == 3 else 0
    money = d.leaf(k.value * price.value + extra + d.num())
    cost = mul(k, price, f"The {items} cost {CALC} dollars.")
    buys = f"{k} {items} that cost {price} dollars each"
    intro = f"{p.name} has {money.ref} dollars and buys {k.ref} {items} at {price.ref} dollars each"
    if n == 2:
        return d.problem(
            [f"{p.name} has {money} dollars.", f"{p.Subj} buys {buys}."],
            f"How many dollars does {p.name} have left?",
            sub(money, cost, f"{p.Subj} has {CALC} dollars left."),
            intro + ".",
        )
    q = d.leaf(extra)
    return d.problem(
        [f"{p.name} has {money} dollars.", f"{p.Subj} buys {buys} and a {other} for {q} dollars."],
        f"How many dollars does {p.name} have left?",
        sub(
            sub(money, cost, f"After the {items} {p.subj} has {CALC} dollars."),
            q,
            f"After the {other} {p.subj} has {CALC} dollars left.",
        ),
        intro + f" and a {other} for {q.ref} dollars.",
    )


@template(2, 3)
def shopping_total(d: Draw, n: int) -> Problem:
    p = d.person()
    (_, items), (other, others) = d.rng.sample(ITEMS, 2)
    k, price = d.leaf(d.small()), d.leaf(d.num())
    first = mul(k, price, f"The {items} cost {CALC} dollars.")
    if n == 2:
        q = d.leaf(d.num())
        return d.problem(
            [f"{p.name} buys {k} {items} at {price} dollars each and a {other} for {q} dollars."],
            f"How many dollars does {p.name} spend?",
            add(first, q, f"In total {p.subj} spends {CALC} dollars."),
            f"{p.name} buys {k.ref} {items} at {price.ref} dollars each and a {other} for {q.ref} dollars.",
        )
    k2, price2 = d.leaf(d.small()), d.leaf(d.num())
    second = mul(k2, price2, f"The {others} cost {CALC} dollars.")
    return d.problem(
        [
            f"{p.name} buys {k} {items} at {price} dollars each.",
            f"{p.Subj} also buys {k2} {others} at {price2} dollars each.",
        ],
        f"How many dollars does {p.name} spend?",
        add(first, second, f"In total {p.subj} spends {CALC} dollars."),
        f"{p.name} buys {k.ref} {items} at {price.ref} dollars and {k2.ref} {others} at {price2.ref} dollars.",
    )


@template(2)
def combine_share(d: Draw, n: int) -> Problem:
    p, obj, other = d.person(), d.noun(), d.noun()
    friends = d.small()
    total = friends * d.num(low=max(2, d.numbers.low))
    a_value = d.num(low=1, high=total - 1)
    a, b, k = d.leaf(a_value), d.leaf(total - a_value), d.leaf(friends)
    return d.problem(
        [f"{p.name} had {a} {obj} and {b} {other}.", f"{p.Subj} shared all of them equally among {k} friends."],
        f"How many {obj} and {other} did each friend get?",
        div(add(a, b, f"Together that is {CALC} {obj} and {other}."), k, f"Each friend gets {CALC}."),
        f"{p.name} had {a.ref} {obj} and {b.ref} {other} to share among {k.ref} friends.",
    )


@template(2)
def remove_share(d: Draw, n: int) -> Problem:
    p, friend, obj = d.person(), d.person(), d.noun()
    box, boxes = d.pick(CONTAINERS)
    k = d.small()
    rest, b = k * d.num(), d.num()
    a, b, k = d.leaf(rest + b), d.leaf(b), d.leaf(k)
    loss = d.pick(LOSSES)
    return d.problem(
        [
            f"{p.name} had {a} {obj}.",
            f"{p.Subj} {loss.format(n=b, obj=obj, friend=friend.name)} and put the rest equally into {k} {boxes}.",
        ],
        f"How many {obj} are in each {box}?",
        div(sub(a, b, f"{p.Subj} had {CALC} {obj} left."), k, f"Each {box} gets {CALC} {obj}."),
        f"{p.name} had {a.ref} {obj}, {loss.format(n=b.ref, obj=obj, friend=friend.name)} "
        f"and split the rest into {k.ref} {boxes}.",
    )


@template(2, 3)
def bus(d: Draw, n: int) -> Optional[Problem]:
    vehicle, riders = d.pick(VEHICLES)
    big, small = d.pair()
    a, b, c = d.leaf(big), d.leaf(small), d.leaf(d.num())
    body = [f"A {vehicle} had {a} {riders}.", f"At the first stop {b} {riders} got off and {c} got on."]
    expr: Expr = add(
        sub(a, b, f"After {b.ref} got off there were {CALC} {riders}."),
        c,
        f"After {c.ref} got on there were {CALC} {riders}."
        if n == 3
        else f"So there are {CALC} {riders} on the {vehicle} now.",
    )
    if n == 3:
        total = a.value - b.value + c.value
        e = d.leaf(d.num(high=min(d.numbers.high, total - 1)))
        body.append(f"At the second stop {e} {riders} got off.")
        expr = sub(expr, e, f"After the second stop there are {CALC} {riders}.")
    return d.problem(
        body, f"How many {riders} are on the {vehicle} now?", expr, f"The {vehicle} started with {a.ref} {riders}."
    )


@template(3)
def total_then_share(d: Draw, n: int) -> Optional[Problem]:
    p, obj = d.person(), d.noun()
    box, boxes = d.pick(CONTAINERS)
    friends = d.small()
    total = friends * d.num()
    g, k = d.small(), d.num()
    if g * k + 1 > total:
        return None
    g, k, c, f = d.leaf(g), d.leaf(k), d.leaf(total - g * k), d.leaf(friends)
    return d.problem(
        [
            f"{p.name} bought {g} {boxes} of {obj} with {k} in each {box} and found {c} more {obj}.",
            f"{p.Subj} split them equally among {f} friends.",
        ],
        f"How many {obj} does each friend get?",
        div(
            add(mul(g, k, f"The {boxes} hold {CALC} {obj}."), c, f"With the ones {p.subj} found that is {CALC} {obj}."),
            f,
            f"Each friend gets {CALC} {obj}.",
        ),
        f"{p.name} has {g.ref} {boxes} of {k.ref} {obj} and {c.ref} more, shared among {f.ref} friends.",
    )


@template(3)
def difference_of_products(d: Draw, n: int) -> Optional[Problem]:
    first, second, obj = d.person(), d.person(), d.noun()
    box, boxes = d.pick(CONTAINERS)
    g1, k1, g2, k2 = d.small(), d.num(), d.small(), d.num()
    if g1 * k1 == g2 * k2:
        return None
    if g1 * k1 < g2 * k2:
        first, second = second, first
        g1, k1, g2, k2 = g2, k2, g1, k1
    g1, k1, g2, k2 = d.leaf(g1), d.leaf(k1), d.leaf(g2), d.leaf(k2)
    return d.problem(
        [
            f"{first.name} has {g1} {boxes} of {obj} with {k1} in each {box}.",
            f"{second.name} has {g2} {boxes} with {k2} {obj} in each {box}.",
        ],
        f"How many more {obj} does {first.name} have than {second.name}?",
        sub(
            mul(g1, k1, f"{first.name} has {CALC} {obj}."),
            mul(g2, k2, f"{second.name} has {CALC} {obj}."),
            f"So {first.name} has {CALC} more {obj}.",
        ),
        f"{first.name} has {g1.ref} {boxes} of {k1.ref} and {second.name} has {g2.ref} {boxes} of {k2.ref}.",
    )


def generate_problem(
    rng: random.Random, numbers: NumberRange, min_operations: int, max_operations: int, distractor_rate: float
) -> Problem:
    """One problem with min..max operations (uniform), from a template that supports it."""
    for _ in range(100):
        operations = rng.randint(min_operations, max_operations)
        names = [name for name, (_, counts) in TEMPLATES.items() if operations in counts]
        name = names[rng.randrange(len(names))]
        d = Draw(rng, numbers)
        problem = TEMPLATES[name][0](d, operations)
        if problem is None:
            continue
        problem = dataclasses.replace(problem, template=name)
        check(problem, operations)
        if rng.random() < distractor_rate:
            problem = add_distractor(d, problem)
        return problem
    raise RuntimeError(f"no problem drawn in 100 tries with numbers in [{numbers.low}, {numbers.high}]")
