"""The module lists of conftest.py that choose tiers and caches name modules that exist: a renamed
or mistyped module would silently leave its tier (a `-m stack` leg that runs nothing of it)."""

import os

from tests import conftest

HERE = os.path.dirname(os.path.abspath(__file__))


def test_every_listed_module_exists():
  for name, modules in (("SLOW_MODULES", conftest.SLOW_MODULES),
                        ("STACK_MODULES", conftest.STACK_MODULES),
                        ("COMPILE_CACHE_MODULES", conftest.COMPILE_CACHE_MODULES)):
    missing = sorted(m for m in modules if not os.path.isfile(os.path.join(HERE, m + ".py")))
    assert not missing, f"conftest.{name} names no such test module: {missing}"


def test_stack_tier_is_small_and_not_the_slow_tier_only():
  # the second leg's budget is a few minutes: the stack tier stays a small share of the suite
  modules = [f for f in os.listdir(HERE) if f.startswith("test_") and f.endswith(".py")]
  assert 0 < len(conftest.STACK_MODULES) <= len(modules) // 4
  assert conftest.STACK_MODULES - conftest.SLOW_MODULES, "the stack tier needs fast-tier modules"
