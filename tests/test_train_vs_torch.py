"""benchmarks/train_vs_torch.py's premise: both engines train the same model the same way.

On the tiny config, our real train step and transformers' LongcatFlashForCausalLM (our
initial weights converted, torch AdamW with the benchmark's parameter groups) give the same
loss at step 0 (same model and loss), at step 1 (the first AdamW update matches: lr, clipping,
which tensors decay) and at step 2 (Adam's moments carried over). A copy of the torch engine
with half the learning rate is the control: it must drift apart at step 1, or the comparison
could not tell optimizers apart.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

# The Python 3.12 CI leg has no torch (its CPU wheel): skip there.
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTOL = 1e-4
STEPS = 3


def _bench():
  spec = importlib.util.spec_from_file_location(
      "train_vs_torch", os.path.join(ROOT, "benchmarks", "train_vs_torch.py"))
  mod = importlib.util.module_from_spec(spec)
  saved = list(sys.path)
  try:  # the script puts the repo and benchmarks/ on sys.path for its own imports
    spec.loader.exec_module(mod)
  finally:
    sys.path[:] = saved
  return mod


@pytest.fixture(scope="module")
def run():
  tv = _bench()
  engines, info = tv.build_engines("tiny", ("eager", "eager"))
  ours, eager, control = engines
  for group in control.opt.param_groups:
    group["lr"] *= 0.5
  losses = {e: [e.step() for _ in range(STEPS)] for e in engines}
  return tv, info, losses[ours], losses[eager], losses[control], eager


def test_step0_loss_equal(run):
  tv, _, ours, eager, control, _ = run
  assert tv.rel(eager[0], ours[0]) <= RTOL, (eager[0], ours[0])
  assert tv.rel(control[0], ours[0]) <= RTOL  # same weights: the lr cannot matter yet


def test_losses_agree_after_adamw_steps(run):
  tv, _, ours, eager, _, _ = run
  for s in range(1, STEPS):
    assert tv.rel(eager[s], ours[s]) <= RTOL, (s, eager, ours)
    assert ours[s - 1] - ours[s] > 0.05, ours  # the steps train: agreement is not trivial


def test_control_with_other_lr_drifts_apart(run):
  tv, _, ours, _, control, _ = run
  assert tv.rel(control[1], ours[1]) > 100 * RTOL, (control, ours)


def test_decay_groups_follow_our_mask(run):
  _, _, _, _, _, eager = run
  decayed, plain = eager.opt.param_groups
  names = {id(p): n for n, p in eager.model.named_parameters()}
  decayed_names = [names[id(p)] for p in decayed["params"]]
  plain_names = [names[id(p)] for p in plain["params"]]
  assert decayed["weight_decay"] == pytest.approx(0.1) and plain["weight_decay"] == 0.0
  assert "lm_head.weight" in decayed_names and "model.embed_tokens.weight" in decayed_names
  assert any("experts.gate_up_proj" in n for n in decayed_names)
  assert plain_names and all("norm" in n for n in plain_names), plain_names
  assert all(p.ndim >= 2 for p in decayed["params"])
