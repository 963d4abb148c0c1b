"""Calculator / tool-use arithmetic environment and its seeded task sources.

Tasks have an exact rational answer, at three levels: "word" (multi-step word problems, the
mid-training source "calculator"), "basic" (one- or two-step arithmetic such as
"What is 37 + 45?" or "What is 12 * 7 - 5?" and short word problems, easy enough that a tiny
mid-trained model succeeds sometimes) and "multistep" (three or four steps composed from
intermediate results, "What is 7 * 8 + 5 * 9?", with the basic level's short prompt and small
numbers); "mixed" draws half its tasks from the basic and half from the multistep templates
(the recipe's tasks: a tiny model mid-trained on multistep episodes alone does not learn to copy
numbers from the question, one mid-trained on the mix solves most basic and some multistep
tasks, which leaves RL room on both). The environment offers
`calc(EXPRESSION)` (evaluated by our own parser, `arith.evaluate`) and `answer(VALUE)` (ends the
episode, reward 1 if VALUE equals the answer exactly, else 0).

    tasks = make_tasks(seed=0, num_tasks=64)                  # word problems, for RL
    tasks = make_tasks(seed=0, num_tasks=64, level="basic")   # one/two-step arithmetic
    env = CalculatorEnv()
    obs = env.reset(tasks[0]); result = env.step("calc(3 * 4)")

`make_problem` also returns the worked solution (a list of `Step`s) that the scripted agent follows.
"""

from __future__ import annotations

import dataclasses
import random
from fractions import Fraction
from typing import Callable, Optional

from agentic_jax.data.builtin import arith
from agentic_jax.data.builtin.protocol import (
    INFO_ERROR, INFO_TOOL, ActionError, StepResult, Tool, error_result, limited_step, parse_action,
    tools_help)

TOOLS = {
    "calc": Tool("calc", "calc(EXPRESSION)",
                 "evaluates an expression exactly: numbers, + - * / // % ** and parentheses"),
    "answer": Tool("answer", "answer(VALUE)",
                   "submits the final answer (a number such as 42, -3.5 or 7/3) and ends the task"),
}
SYSTEM_PROMPT = ("You solve arithmetic word problems step by step with tools. Call exactly one tool "
                 "per turn, written as NAME(ARGUMENT):\n" + tools_help(TOOLS))
# The basic level's tasks need no tool manual: a one-line prompt keeps its episodes ~75 tokens
# (the full prompt alone is ~180), so a tiny model sees 3x more of them per training token.
BASIC_SYSTEM_PROMPT = "Use one tool per turn: calc(EXPRESSION) computes, answer(VALUE) submits."


@dataclasses.dataclass(frozen=True)
class CalcTask:
  id: str
  question: str
  answer: Fraction


@dataclasses.dataclass(frozen=True)
class Step:
  thought: str
  expr: str  # may refer to earlier results as {r0}, {r1}, ... (filled from the observations)


@dataclasses.dataclass(frozen=True)
class Problem:
  task: CalcTask
  steps: tuple[Step, ...]
  template: str


class CalculatorEnv:
  """reset(CalcTask) -> question; step(action) -> StepResult. At most `max_steps` tool calls."""

  system_prompt = SYSTEM_PROMPT
  tools = TOOLS

  def __init__(self, max_steps: int = 12, level: str = "word"):
    if level not in LEVELS:
      raise ValueError(f"calculator level must be one of {list(LEVELS)}, got {level!r}")
    self.max_steps = max_steps
    if level != "word":  # else the class attribute (subclasses may override it)
      self.system_prompt = BASIC_SYSTEM_PROMPT
    self._task: Optional[CalcTask] = None
    self._steps = 0
    self._done = True

  def reset(self, task: CalcTask) -> str:
    if not isinstance(task, CalcTask):
      raise TypeError(f"CalculatorEnv.reset expects a CalcTask, got {type(task).__name__}")
    self._task, self._steps, self._done = task, 0, False
    return task.question

  def step(self, action: str) -> StepResult:
    return limited_step(self, action, limit_note="step limit reached; no answer was given")

  def _dispatch(self, action: str) -> StepResult:
    try:
      act = parse_action(action, TOOLS)
    except ActionError as e:
      return error_result(str(e), e.tool)
    if act.name == "calc":
      try:
        value = arith.evaluate(act.arg)
      except arith.CalcError as e:
        return error_result(str(e), "calc")
      return StepResult(arith.format_value(value), False, 0.0, {INFO_TOOL: "calc", INFO_ERROR: False})
    try:
      value = arith.parse_number(act.arg)
    except arith.CalcError as e:
      return error_result(f"answer: {e}", "answer")
    correct = value == self._task.answer
    return StepResult("correct" if correct else "incorrect", True, 1.0 if correct else 0.0,
                      {INFO_TOOL: "answer", INFO_ERROR: False, "correct": correct})


# ---------------------------------------------------------------------------------------------
# Word-problem templates. Each draws numbers from `rng`, computes the answer with Fractions here
# (independently of the parser) and lists the calculator steps of a worked solution.

_NAMES = ("Maya", "Omar", "Lena", "Tariq", "Ines", "Kofi", "Yuki", "Sven", "Amara", "Diego")
_F = arith.format_value


def _hours(n: int) -> str:
  return f"{n} hour" if n == 1 else f"{n} hours"


def _shopping(rng: random.Random):
  name = rng.choice(_NAMES)
  item1, item2 = rng.choice([("notebooks", "pens"), ("apples", "pears"), ("stamps", "envelopes"),
                             ("tickets", "programmes"), ("candles", "matches")])
  a, b = rng.randint(2, 9), rng.randint(2, 9)
  p, q = Fraction(rng.randint(4, 20), 4), Fraction(rng.randint(2, 12), 4)
  total = a * p + b * q
  bill = next(x for x in (10, 20, 50, 100, 200) if x > total)
  question = (f"{name} buys {a} {item1} at ${_F(p)} each and {b} {item2} at ${_F(q)} each, paying "
              f"with a ${bill} bill. How much change, in dollars, does {name} get back?")
  steps = [Step(f"First, the cost of the {item1}.", f"{a} * {_F(p)}"),
           Step(f"Next, the cost of the {item2}.", f"{b} * {_F(q)}"),
           Step("Add both costs to get the total.", "{r0} + {r1}"),
           Step("The change is the bill minus the total.", f"{bill} - {{r2}}")]
  return question, steps, bill - total


def _average_speed(rng):
  vehicle = rng.choice(["train", "bus", "cyclist", "ferry"])
  d1, d2 = rng.randint(20, 240), rng.randint(20, 240)
  t1, t2 = rng.randint(1, 5), rng.randint(1, 5)
  question = (f"A {vehicle} covers {d1} km in {_hours(t1)}, then {d2} km in {_hours(t2)}. What is "
              "its average speed over the whole trip, in km/h?")
  steps = [Step("Total distance first.", f"{d1} + {d2}"),
           Step("Then the total time.", f"{t1} + {t2}"),
           Step("Average speed is total distance divided by total time.", "{r0} / {r1}")]
  return question, steps, Fraction(d1 + d2, t1 + t2)


def _packing(rng):
  size = rng.choice([6, 10, 12, 15, 24])
  n = rng.randint(50, 500)
  if n % size == 0:
    n += rng.randint(1, size - 1)
  thing, box = rng.choice([("eggs", "boxes"), ("bottles", "crates"), ("muffins", "trays")])
  question = (f"A bakery has {n} {thing} and packs them into {box} of {size}. After filling as many "
              f"{box} as possible, how many more {thing} would be needed to fill one more?")
  steps = [Step(f"Count the full {box}.", f"{n} // {size}"),
           Step(f"Find how many {thing} are left over.", f"{n} % {size}"),
           Step("The shortfall is a full load minus the leftover.", f"{size} - {{r1}}")]
  return question, steps, Fraction(size - n % size)


def _discount_tax(rng):
  item = rng.choice(["jacket", "lamp", "bicycle", "kettle", "backpack"])
  price, d, t = rng.randint(20, 400), rng.choice([10, 15, 20, 25, 30, 40]), rng.choice([5, 8, 10, 12])
  question = (f"A {item} costs ${price}. It is discounted by {d}%, and then a sales tax of {t}% is "
              "added to the discounted price. What is the final price in dollars?")
  steps = [Step("Apply the discount first.", f"{price} * (100 - {d}) / 100"),
           Step("Then add the tax on the discounted price.", f"{{r0}} * (100 + {t}) / 100")]
  return question, steps, Fraction(price) * (100 - d) / 100 * (100 + t) / 100


def _garden(rng):
  w, h = rng.randint(6, 40), rng.randint(6, 40)
  s = rng.randint(2, min(w, h) - 1)
  question = (f"A rectangular garden measures {w} m by {h} m. A square pond with sides of {s} m is "
              "dug inside it. How many square metres of garden are left?")
  steps = [Step("Area of the garden.", f"{w} * {h}"),
           Step("Area of the square pond.", f"{s} ** 2"),
           Step("Subtract the pond from the garden.", "{r0} - {r1}")]
  return question, steps, Fraction(w * h - s * s)


def _compound(rng):
  p, r, n = 100 * rng.randint(1, 50), rng.choice([2, 3, 4, 5, 6, 10]), rng.randint(2, 5)
  question = (f"A savings account starts with ${p} and earns {r}% interest per year, compounded "
              f"yearly. What is the balance after {n} years, in dollars?")
  steps = [Step("The yearly growth factor.", f"1 + {r} / 100"),
           Step(f"Growth over {n} years.", f"{{r0}} ** {n}"),
           Step("Multiply by the starting amount.", f"{p} * {{r1}}")]
  return question, steps, p * (1 + Fraction(r, 100)) ** n


def _test_average(rng):
  scores = [rng.randint(55, 100) for _ in range(4)]
  target = sum(scores) // 4 + rng.randint(-5, 5)
  while not 0 <= 5 * target - sum(scores) <= 100:
    target = sum(scores) // 4 + rng.randint(-5, 5)
  name = rng.choice(_NAMES)
  question = (f"{name} scored {', '.join(map(str, scores[:3]))} and {scores[3]} on four tests. What "
              f"score on the fifth test gives an average of exactly {target} over all five?")
  steps = [Step("Sum of the four scores so far.", " + ".join(map(str, scores))),
           Step("The total needed over five tests.", f"{target} * 5"),
           Step("The fifth score is the difference.", "{r1} - {r0}")]
  return question, steps, Fraction(5 * target - sum(scores))


def _recipe(rng):
  k, m = rng.randint(2, 8), rng.randint(3, 20)
  if m == k:
    m += 1
  g = 25 * rng.randint(4, 32)
  what = rng.choice(["flour", "sugar", "rice", "oats"])
  question = (f"A recipe for {k} servings uses {g} g of {what}. How many grams of {what} are "
              f"needed for {m} servings?")
  steps = [Step(f"Grams of {what} per serving.", f"{g} / {k}"),
           Step(f"Scale up to {m} servings.", f"{{r0}} * {m}")]
  return question, steps, Fraction(g * m, k)


def _temperature(rng):
  f = rng.randint(-40, 110)
  question = f"A thermometer reads {f} degrees Fahrenheit. What is that in degrees Celsius?"
  steps = [Step("Subtract 32 first.", f"{f} - 32"),
           Step("Then multiply by 5/9.", "{r0} * 5 / 9")]
  return question, steps, Fraction(f - 32) * 5 / 9


def _work_rate(rng):
  a = rng.randint(2, 12)
  b = rng.choice([x for x in range(2, 13) if x != a])
  question = (f"One pump fills a tank in {a} hours and a second pump fills it in {b} hours. Working "
              "together, how many hours do they need to fill the tank?")
  steps = [Step("Their combined rate in tanks per hour.", f"1 / {a} + 1 / {b}"),
           Step("The time is one tank divided by the combined rate.", "1 / {r0}")]
  return question, steps, 1 / (Fraction(1, a) + Fraction(1, b))


def _marathon(rng):
  n, m, b = rng.randint(3, 6), rng.randint(80, 150), rng.randint(5, 20)
  question = (f"A movie marathon shows {n} films of {m} minutes each, with a {b}-minute break "
              "between consecutive films. How many hours does the marathon last?")
  steps = [Step("Minutes of film.", f"{n} * {m}"),
           Step("Minutes of breaks: one fewer break than films.", f"({n} - 1) * {b}"),
           Step("Total minutes.", "{r0} + {r1}"),
           Step("Convert minutes to hours.", "{r2} / 60")]
  return question, steps, Fraction(n * m + (n - 1) * b, 60)


TEMPLATES: dict[str, Callable] = {
    "shopping": _shopping, "average_speed": _average_speed, "packing": _packing,
    "discount_tax": _discount_tax, "garden": _garden, "compound": _compound,
    "test_average": _test_average, "recipe": _recipe, "temperature": _temperature,
    "work_rate": _work_rate, "marathon": _marathon,
}


# ---------------------------------------------------------------------------------------------
# Basic level: one or two calculator steps, small numbers (digits are one token each, so short
# numbers keep the calls a tiny model must copy short).

_THINGS = ("apples", "marbles", "stickers", "coins", "cards", "books", "shells", "pencils")


def _basic_add(rng):
  a, b = rng.randint(10, 99), rng.randint(10, 99)
  return f"What is {a} + {b}?", [Step("Add the two numbers.", f"{a} + {b}")], Fraction(a + b)


def _basic_sub(rng):
  a = rng.randint(20, 99)
  b = rng.randint(1, a - 1)
  return (f"What is {a} - {b}?", [Step("Subtract the second number from the first.", f"{a} - {b}")],
          Fraction(a - b))


def _basic_mul(rng):
  a, b = rng.randint(2, 19), rng.randint(2, 12)
  return f"What is {a} * {b}?", [Step("Multiply the two numbers.", f"{a} * {b}")], Fraction(a * b)


def _basic_div(rng):
  b, q = rng.randint(2, 12), rng.randint(2, 12)
  return (f"What is {b * q} / {b}?", [Step("Divide the first number by the second.",
                                           f"{b * q} / {b}")], Fraction(q))


def _basic_mul_sub(rng):
  a, b = rng.randint(2, 12), rng.randint(2, 12)
  c = rng.randint(1, a * b - 1)
  steps = [Step("First the product.", f"{a} * {b}"), Step("Then subtract.", f"{{r0}} - {c}")]
  return f"What is {a} * {b} - {c}?", steps, Fraction(a * b - c)


def _basic_add_mul(rng):
  a, b, c = rng.randint(2, 30), rng.randint(2, 30), rng.randint(2, 9)
  steps = [Step("First the sum in parentheses.", f"{a} + {b}"), Step("Then multiply.", f"{{r0}} * {c}")]
  return f"What is ({a} + {b}) * {c}?", steps, Fraction((a + b) * c)


def _basic_gets_more(rng):
  name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
  a, b = rng.randint(2, 60), rng.randint(2, 40)
  question = f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?"
  return question, [Step(f"Add the new {thing}.", f"{a} + {b}")], Fraction(a + b)


def _basic_gives_away(rng):
  name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
  a = rng.randint(10, 90)
  b = rng.randint(1, a - 1)
  question = f"{name} has {a} {thing} and gives away {b}. How many {thing} are left?"
  return question, [Step(f"Take away the {thing} given away.", f"{a} - {b}")], Fraction(a - b)


def _basic_boxes(rng):
  thing = rng.choice(_THINGS)
  a, b = rng.randint(2, 12), rng.randint(2, 12)
  question = f"There are {a} boxes with {b} {thing} in each. How many {thing} are there in total?"
  return question, [Step("Multiply boxes by the count in each.", f"{a} * {b}")], Fraction(a * b)


def _basic_share(rng):
  thing = rng.choice(_THINGS)
  b, q = rng.randint(2, 9), rng.randint(2, 12)
  question = (f"{b * q} {thing} are shared equally among {b} friends. How many {thing} does each "
              "friend get?")
  return question, [Step("Divide by the number of friends.", f"{b * q} / {b}")], Fraction(q)


def _basic_packs_left(rng):
  name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
  a, b = rng.randint(2, 9), rng.randint(2, 12)
  c = rng.randint(1, a * b - 1)
  question = (f"{name} buys {a} packs of {b} {thing} and gives away {c}. How many {thing} does "
              f"{name} have left?")
  steps = [Step(f"First count all the {thing}.", f"{a} * {b}"),
           Step(f"Then take away the {c} given away.", f"{{r0}} - {c}")]
  return question, steps, Fraction(a * b - c)


def _multi_sum_mul_sub(rng):
  a, b, c = rng.randint(2, 20), rng.randint(2, 20), rng.randint(2, 9)
  d = rng.randint(1, (a + b) * c - 1)
  steps = [Step("First the sum in parentheses.", f"{a} + {b}"),
           Step("Multiply it.", f"{{r0}} * {c}"), Step("Then subtract.", f"{{r1}} - {d}")]
  return f"What is ({a} + {b}) * {c} - {d}?", steps, Fraction((a + b) * c - d)


def _multi_two_products(rng):
  a, b, c, d = (rng.randint(2, 12) for _ in range(4))
  steps = [Step("First product.", f"{a} * {b}"), Step("Second product.", f"{c} * {d}"),
           Step("Add the two products.", f"{{r0}} + {{r1}}")]
  return f"What is {a} * {b} + {c} * {d}?", steps, Fraction(a * b + c * d)


def _multi_diff_times_sum(rng):
  a = rng.randint(10, 40)
  b = rng.randint(1, a - 1)
  c, d = rng.randint(2, 9), rng.randint(2, 9)
  steps = [Step("The difference.", f"{a} - {b}"), Step("The sum.", f"{c} + {d}"),
           Step("Multiply the two results.", f"{{r0}} * {{r1}}")]
  return f"What is ({a} - {b}) * ({c} + {d})?", steps, Fraction((a - b) * (c + d))


def _multi_mul_sub_div(rng):
  a, b = rng.randint(3, 12), rng.randint(3, 12)
  d = rng.randint(2, min(9, a * b - 1))
  # c in [1, a * b - d] with a * b - c a multiple of d: the quotient is a whole number >= 1
  c = rng.choice([c for c in range(1, a * b - d + 1) if (a * b - c) % d == 0])
  steps = [Step("First the product.", f"{a} * {b}"), Step("Subtract.", f"{{r0}} - {c}"),
           Step("Then divide.", f"{{r1}} / {d}")]
  return f"What is ({a} * {b} - {c}) / {d}?", steps, Fraction((a * b - c) // d)


def _multi_two_packs_left(rng):
  name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
  a, b, c, d = rng.randint(2, 9), rng.randint(2, 12), rng.randint(2, 9), rng.randint(2, 12)
  e = rng.randint(1, a * b + c * d - 1)
  question = (f"{name} buys {a} packs of {b} {thing} and {c} packs of {d}, then gives away {e}. "
              "How many are left?")
  steps = [Step("The first packs.", f"{a} * {b}"), Step("The second packs.", f"{c} * {d}"),
           Step(f"All the {thing}.", f"{{r0}} + {{r1}}"),
           Step(f"Take away the {e} given away.", f"{{r2}} - {e}")]
  return question, steps, Fraction(a * b + c * d - e)


def _multi_share_after_buying(rng):
  name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
  d, q = rng.randint(2, 9), rng.randint(3, 15)
  b, c = rng.randint(2, 6), rng.randint(2, 9)
  while b * c >= d * q:
    b, c = rng.randint(2, 6), rng.randint(2, 9)
  a = d * q - b * c
  question = (f"{name} has {a} {thing}, buys {b} boxes of {c} more and shares them all among "
              f"{d} friends. How many does each get?")
  steps = [Step("The new ones.", f"{b} * {c}"), Step(f"All the {thing}.", f"{a} + {{r0}}"),
           Step("Share them.", f"{{r1}} / {d}")]
  return question, steps, Fraction(q)


# Multi-step level: three or four calculator steps whose later calls use earlier results (two of
# them combine two intermediate results), small numbers as in the basic level. A tiny model
# mid-trained on scripted episodes of these still miscopies numbers between steps, so RL has room
# without any flaw planted in the data (the recipe's tasks).
MULTISTEP_TEMPLATES: dict[str, Callable] = {
    "sum_mul_sub": _multi_sum_mul_sub, "two_products": _multi_two_products,
    "diff_times_sum": _multi_diff_times_sum, "mul_sub_div": _multi_mul_sub_div,
    "two_packs_left": _multi_two_packs_left, "share_after_buying": _multi_share_after_buying,
}

BASIC_TEMPLATES: dict[str, Callable] = {
    "add": _basic_add, "sub": _basic_sub, "mul": _basic_mul, "div": _basic_div,
    "mul_sub": _basic_mul_sub, "add_mul": _basic_add_mul, "gets_more": _basic_gets_more,
    "gives_away": _basic_gives_away, "boxes": _basic_boxes, "share": _basic_share,
    "packs_left": _basic_packs_left,
}
LEVELS = ("word", "basic", "multistep", "mixed")
# level -> (task rng prefix, templates, task id prefix)
_LEVEL_STREAMS = {"word": ("calculator-task", "calc"), "basic": ("calculator-basic-task", "calc-basic"),
                  "multistep": ("calculator-multistep-task", "calc-multistep"),
                  "mixed": ("calculator-mixed-task", "calc-mixed")}


def make_problem(seed: int, index: int, level: str = "word") -> Problem:
  """Problem `index` of the stream for (`seed`, `level`) (independent of how many are drawn)."""
  if level not in LEVELS:
    raise ValueError(f"calculator level must be one of {list(LEVELS)}, got {level!r}")
  rng_prefix, id_prefix = _LEVEL_STREAMS[level]
  rng, task_id = random.Random(f"{rng_prefix}:{seed}:{index}"), f"{id_prefix}-{seed}-{index:05d}"
  if level == "mixed":  # half basic, half multistep: the easy tasks teach the copying
    templates = BASIC_TEMPLATES if rng.random() < 0.5 else MULTISTEP_TEMPLATES
  else:
    templates = {"word": TEMPLATES, "basic": BASIC_TEMPLATES, "multistep": MULTISTEP_TEMPLATES}[level]
  name = rng.choice(sorted(templates))
  question, steps, answer = templates[name](rng)
  return Problem(CalcTask(task_id, question, Fraction(answer)), tuple(steps), name)


def make_tasks(seed: int, num_tasks: int, start: int = 0, *, level: str = "word") -> list[CalcTask]:
  return [make_problem(seed, i, level).task for i in range(start, start + num_tasks)]
