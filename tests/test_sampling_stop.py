"""Stop rule of generate_arrays (stop ids that count only once an arm id was emitted), inactive
rows, decode_config for expert_parallel, and the rollout Sampler's bucketing."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic_jax import models, sampling
from agentic_jax.rl.sampler import Sampler, StopRule

N_NEW = 24
PROMPTS = [[5 + i, 6, 7 + 2 * i, 8][: 2 + i % 3] for i in range(12)]


@pytest.fixture(scope="module")
def model():
  cfg = models.presets.get("longcat_flash_tiny", num_layers=1)  # one layer: faster compiles
  return cfg, models.init_variables(cfg, jax.random.key(11))


ALL_ACTIVE = jnp.ones((len(PROMPTS),), bool)


@pytest.fixture(scope="module")
def free_run(model):
  """Unstopped sampled outputs (temperature 1): the stream the stop rule must cut."""
  cfg, variables = model
  tokens, lengths = sampling.pad_prompts(PROMPTS)
  out, logp, num = sampling.generate_arrays(
      cfg, variables, jnp.asarray(tokens), jnp.asarray(lengths), jax.random.key(5),
      max_new_tokens=N_NEW, temperature=1.0, active=ALL_ACTIVE)
  assert np.asarray(num).tolist() == [N_NEW] * len(PROMPTS)
  return np.asarray(out), np.asarray(logp)


def reference_cut(row, eos, stops, arms):
  """Python reference: index after the finishing token, or None if the row never finishes."""
  armed = not arms
  for i, t in enumerate(row):
    if t == eos or (armed and t in stops):
      return i + 1
    if t in arms:
      armed = True
  return None


def _pick_rule(out):
  """(eos, stop, arm) ids under which the rows show every case: a stop id before the arm id
  (ignored), a stop after it, an eos finish, and a row that never finishes."""
  counts = np.bincount(out.ravel(), minlength=128)
  frequent = [int(t) for t in np.argsort(-counts)[:14]]
  for eos, stop, arm in itertools.permutations(frequent, 3):
    cases = set()
    for row in out.tolist():
      cut = reference_cut(row, eos, (stop,), (arm,))
      if cut is None:
        cases.add("open")
      elif row[cut - 1] == eos:
        cases.add("eos")
      else:
        cases.add("stop")
        if stop in row[:row.index(arm)]:
          cases.add("stop_before_arm_ignored")
    if cases == {"open", "eos", "stop", "stop_before_arm_ignored"}:
      return eos, stop, arm
  raise AssertionError("no id triple exercises every case; change the seed")


def test_stop_rule_matches_python_reference(model, free_run):
  cfg, variables = model
  out, logp = free_run
  eos, stop, arm = _pick_rule(out)
  tokens, lengths = sampling.pad_prompts(PROMPTS)
  cut_out, cut_logp, num = map(np.asarray, sampling.generate_arrays(
      cfg, variables, jnp.asarray(tokens), jnp.asarray(lengths), jax.random.key(5),
      max_new_tokens=N_NEW, temperature=1.0, eos_id=eos, stop_ids=(stop,), arm_ids=(arm,),
      active=ALL_ACTIVE))
  for i, row in enumerate(out.tolist()):
    cut = reference_cut(row, eos, (stop,), (arm,)) or N_NEW
    assert num[i] == cut, i
    assert cut_out[i, :cut].tolist() == row[:cut]
    assert not cut_out[i, cut:].any() and not cut_logp[i, cut:].any()
    np.testing.assert_allclose(cut_logp[i, :cut], logp[i, :cut], atol=1e-6)
    finishes = reference_cut(row, eos, (stop,), (arm,)) is not None
    assert StopRule(eos, (stop,), (arm,)).finished(row[:cut]) == finishes


def test_inactive_rows_emit_nothing_and_leave_others_unchanged(model, free_run):
  cfg, variables = model
  out, _ = free_run
  tokens, lengths = sampling.pad_prompts(PROMPTS)
  active = np.arange(len(PROMPTS)) % 3 != 1
  got, _, num = map(np.asarray, sampling.generate_arrays(
      cfg, variables, jnp.asarray(tokens), jnp.asarray(lengths), jax.random.key(5),
      max_new_tokens=N_NEW, temperature=1.0, active=jnp.asarray(active)))
  assert num.tolist() == [N_NEW if a else 0 for a in active]
  np.testing.assert_array_equal(got[active], out[active])
  assert not got[~active].any()


def test_bad_stop_rules_are_rejected():
  with pytest.raises(ValueError, match="both stop and arm"):
    sampling.check_stop_rule((3, 4), (4,))
  with pytest.raises(ValueError, match="never stop"):
    sampling.check_stop_rule((), (4,))
  with pytest.raises(ValueError, match="tuple of non-negative ints"):
    sampling.check_stop_rule([3], ())
  with pytest.raises(ValueError, match="both stop and arm"):
    StopRule(eos_id=2, stop_ids=(9,), arm_ids=(9,))


def test_stop_rule_finished_on_policy_turns():
  rule = StopRule()  # eos 2, stop <|end_turn|> 9 once <|tool_call|> 7 was emitted
  assert rule.finished([6, 40, 9, 7, 41, 9])          # thought, then a closed tool call
  assert not rule.finished([6, 40, 9])                # the thought's <|end_turn|> does not stop
  assert not rule.finished([6, 40, 9, 7, 41])         # unclosed tool call: truncated
  assert rule.finished([6, 40, 2])                    # </s>
  assert not rule.finished([2, 40])                   # finished earlier: not a valid row


def test_decode_config_expert_parallel_uses_dropless(model):
  cfg, _ = model
  ep = cfg.replace(moe_dispatch="expert_parallel")
  assert sampling.decode_config(ep).moe_dispatch == "dropless"
  assert sampling.decode_config(ep) == sampling.decode_config(cfg.replace(moe_dispatch="capacity"))
  dense = models.presets.get("youtu_llm_tiny")
  assert sampling.decode_config(dense) == dense


def test_step_config_sizes_moe_blocks_to_the_step(model):
  cfg, _ = model  # 4 FFN experts, top-2, dropless_block_size 128 after decode_config
  cfg = cfg.replace(moe_dispatch="dropless", dropless_backend="blocked")
  # rows per expert = ceil(tokens * 2 / 4), rounded up to a power of two, at least 8
  for tokens, block in ((1, 8), (16, 8), (17, 16), (64, 32), (200, 128), (4096, 128)):
    assert sampling.step_config(cfg, tokens).dropless_block_size == block, tokens
  assert sampling.step_config(cfg, 16).replace(dropless_block_size=128) == cfg
  ragged = cfg.replace(dropless_backend="ragged_dot")
  assert sampling.step_config(ragged, 16) == ragged


def test_sampler_buckets_shapes_without_changing_samples(model, free_run):
  """Batch padding and wider left padding leave each row's samples unchanged (per-row draws do
  not depend on the batch size); also checks a rule without arm ids (every stop id counts)."""
  cfg, variables = model
  out, logp = free_run
  stop = int(np.argmax(np.bincount(out.ravel())))
  sampler = Sampler(cfg, max_new_tokens=N_NEW, temperature=1.0, prompt_bucket=16, batch_bucket=8,
                    stop=StopRule(eos_id=None, stop_ids=(stop,), arm_ids=()))
  gens = sampler.generate(variables, [np.asarray(p) for p in PROMPTS], seed=5)
  assert sampler.shapes_used == {(16, 16)}  # 12 rows -> 2 buckets of 8; width 4 -> 16
  stopped = 0
  for i, g in enumerate(gens):
    cut = reference_cut(out[i].tolist(), None, (stop,), ())
    stopped += cut is not None
    assert g.tokens.tolist() == out[i, :cut or N_NEW].tolist() and g.truncated == (cut is None)
    np.testing.assert_allclose(g.logprobs, logp[i, :cut or N_NEW], atol=1e-6)
  assert 0 < stopped < len(PROMPTS)
  # same seed: same samples; another seed: different ones (9 rows: the same bucket)
  again = sampler.generate(variables, [np.asarray(p) for p in PROMPTS[:9]], seed=5)
  assert [g.tokens.tolist() for g in again] == [g.tokens.tolist() for g in gens[:9]]
  other = sampler.generate(variables, [np.asarray(p) for p in PROMPTS[:9]], seed=6)
  assert [g.tokens.tolist() for g in other] != [g.tokens.tolist() for g in again]
  assert sampler.shapes_used == {(16, 16)}
  with pytest.raises(ValueError, match=r"contexts\[1\] must be a non-empty 1-D int array"):
    sampler.generate(variables, [np.asarray([1, 2]), np.asarray([], np.int32)], seed=0)
  with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1"):
    Sampler(cfg, max_new_tokens=0)


def test_step_config_shrinks_the_block_for_both_spellings_of_blocked_dropless(model):
  """moe_dispatch="dropless_blocked" (flat name) gets the small decode block as the two-level
  "dropless" + dropless_backend="blocked" does (a literal name check once missed the flat one)."""
  cfg, _ = model
  two_level = cfg.replace(moe_dispatch="dropless", dropless_backend="blocked",
                          dropless_block_size=128)
  flat = two_level.replace(moe_dispatch="dropless_blocked")
  assert sampling.step_config(two_level, 16).dropless_block_size == 8
  assert sampling.step_config(flat, 16).dropless_block_size == 8
  ragged = two_level.replace(dropless_backend="ragged_dot")
  assert sampling.step_config(ragged, 16).dropless_block_size == 128
