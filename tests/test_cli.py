"""agentic_jax/cli.py: every launch script turns a user's flag mistake into one line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from agentic_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("train", "plan", "convert", "generate", "eval", "check_data", "train_tokenizer")


def test_fail_writes_one_line_and_exits(capsys):
  with pytest.raises(SystemExit) as e:
    cli.fail("bad value\n  in   two lines", 3)
  assert e.value.code == 3
  assert capsys.readouterr().err == "error: bad value in two lines\n"


def test_last_line_drops_the_traceback_and_the_class():
  text = "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: unknown variant 'q'\n"
  assert cli.last_line(text) == "unknown variant 'q'"
  assert cli.last_line("plain") == "plain"


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_flag_is_one_line(script):
  r = subprocess.run([sys.executable, os.path.join(ROOT, "launch", f"{script}.py"), "--no_such_flag=1"],
                     cwd=ROOT, capture_output=True, text=True, timeout=120,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert r.returncode == 2, r.stderr
  assert r.stderr == "error: Unknown command line flag 'no_such_flag' (--helpfull lists the flags)\n"
