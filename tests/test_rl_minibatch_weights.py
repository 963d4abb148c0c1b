"""Issue 11 parts 1-3 through the whole jitted RL step (agentic_jax/rl/step.py) on packed batches
with padding: Dr. GRPO's 1/G and L_const counted over real trajectories only (never the packed
batch's padding slots), Flow-GRPO paper weights with Q, G and T_i of the whole rollout batch
when turns and groups are split over minibatches, 1 minibatch vs k minibatches giving the same
gradient for one epoch (no clipping active), the released-code presets still recounting per
minibatch (verl), and DAPO's refill reaching the target batch size (and its config checks).

Expected values are computed by hand (the arithmetic is in the comments) from the model's own
log-probs (tests/rl_fixtures.np_logp, float64 numpy); nothing is read back from the code under
test except the packing layout and the documented minibatch schedule (which samples a
minibatch holds). The gradients are read through an "optimizer" that adds each update's
gradient into its state and returns zero updates, so every minibatch sees the same params."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agentic_jax import models
from agentic_jax.rl import loop
from agentic_jax.rl import refill as refill_lib
from agentic_jax.rl import step as step_lib
from agentic_jax.rl.rollout import Episode
from agentic_jax.train import config as config_lib
from agentic_jax.train import state as state_lib
from tests.rl_fixtures import T, make_batch, np_k3, np_logp, rl_test_config, small_rl_config
from tests.train_fixtures import ROOT

EPS = 1e-6


def accumulate_gradients() -> optax.GradientTransformation:
  """state <- state + grads, updates 0: params never move, opt_state = sum of the gradients."""
  def init(params):
    return jax.tree.map(jnp.zeros_like, params)

  def update(grads, state, params=None):
    del params
    return jax.tree.map(jnp.zeros_like, grads), jax.tree.map(jnp.add, state, grads)
  return optax.GradientTransformation(init, update)


def run_step(loss, rows, k, *, over=None, seed=1, row_bucket=4):
  """One RL step (recomputed old log-probs: every ratio is 1, nothing clips) with k minibatches;
  returns what the hand computations need."""
  config = rl_test_config(loss, **{"rl.old_logp": "recompute", "rl.minibatches": k,
                                   **(over or {})})
  model_cfg = config_lib.model_config(config.model)
  tx = accumulate_gradients()
  state = state_lib.init_state(model_cfg, tx, seed)
  ref = models.init_variables(model_cfg, jax.random.PRNGKey(seed + 100))
  b = make_batch(rows, seed=seed + 2)
  obj = step_lib.objective_from_config(config)
  whole = obj.options["minibatch_split"] == "groups"
  packed, _ = step_lib.pack_batch(b, seq_len=T, sample_by="row", sample_len=T,
                                  row_bucket=row_bucket, sample_bucket=2, minibatches=k,
                                  whole_groups=whole)
  step_lib.check_packed(packed, minibatches=k, whole_groups=whole)
  new_state, metrics = jax.jit(step_lib.make_rl_step(model_cfg, config, optimizer=tx))(
      state, ref, packed)
  return dict(config=config, model_cfg=model_cfg, state=state, ref=ref, b=b, packed=packed,
              grads=new_state.opt_state, metrics=metrics, whole=whole)


def first_minibatch_samples(run, k):
  """(group, traj, turn) of the valid samples in the first update's minibatch, from the step's
  documented schedule: epoch 0's permutation of the forward rows (split "rows") or of the k
  blocks (split "groups"), from fold_in(step_key(state), 0)."""
  p = run["packed"]
  f = p["inputs"].shape[0]
  key = jax.random.fold_in(state_lib.step_key(run["state"]), 0)
  if run["whole"]:
    block = int(jax.random.permutation(key, k)[0])
    fwd = np.arange(block * (f // k), (block + 1) * (f // k))
  else:
    fwd = np.asarray(jax.random.permutation(key, f))[: f // k]
  return {(int(p["group_id"][j, s]), int(p["traj_id"][j, s]), int(p["turn_index"][j, s]))
          for j in fwd for s in range(p["index"].shape[1]) if p["sample_mask"][j, s]}


def assert_mean_of_k_gradients_is_the_one_minibatch_gradient(run_k, run_1, k):
  jax.tree.map(lambda gk, g1: np.testing.assert_allclose(
      np.asarray(gk) / k, np.asarray(g1), rtol=2e-4, atol=2e-7), run_k["grads"], run_1["grads"])
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(run_1["grads"])) > 1e-4


# ----------------------------------------------------------------- Dr. GRPO: padding never counts

# Trajectory rows (one sample each). Sequence lengths 8, 5, 4, 3, 3 pack first-fit into 3 forward
# rows ([8], [5, 3], [4, 3]), rounded up to row_bucket 4: 4 x 2 = 8 sample slots for 5 samples.
DR_ROWS = [dict(group=0, traj=0, reward=1.0, mask=[0, 0, 0, 0, 0, 1, 1, 0]),
           dict(group=0, traj=1, reward=0.0, mask=[0, 1, 1, 1, 0, 0, 0, 0], seg=[1] * 5 + [0] * 3),
           dict(group=0, traj=2, reward=0.0, mask=[1, 1, 1, 1, 0, 0, 0, 0], seg=[1] * 4 + [0] * 4),
           dict(group=1, traj=0, reward=1.0, mask=[0, 0, 1, 0, 0, 0, 0, 0], seg=[1] * 3 + [0] * 5),
           dict(group=1, traj=1, reward=0.5, mask=[0, 1, 1, 0, 0, 0, 0, 0], seg=[1] * 3 + [0] * 5),
           dict(group=1, traj=2, reward=0.0, mask=[0, 1, 1, 0, 0, 0, 0, 0], valid=False)]  # padding
# Dr. GRPO advantages A = R - group mean: group 0 mean 1/3 -> 2/3, -1/3, -1/3; group 1 mean 3/4
# -> 1/4, -1/4 (the padding row is not a member). Ratio 1: each token's term is -A, so a
# trajectory's token sum is -A |a|: -4/3, +1, +4/3, -1/4, +1/2; total 5/4. No KL (beta 0).
DR_SUMS = {(0, 0): -4 / 3, (0, 1): 1.0, (0, 2): 4 / 3, (1, 0): -0.25, (1, 1): 0.5}
L_CONST = 4.0
DR_MODES = {  # agg -> the divisor of a trajectory's token sum: L_const x G-total, or the rows
    "seq-mean-token-sum-norm": L_CONST * 5,   # 5 trajectories, NOT the 8 sample slots
    "seq-mean-token-sum": 5.0,
}


@pytest.fixture(scope="module")
def dr_one():
  return run_step("dr_grpo", DR_ROWS, 1, over={"rl.loss_options.norm_constant": L_CONST})


@pytest.mark.parametrize("agg", sorted(DR_MODES))
def test_dr_grpo_aggregation_counts_trajectories_not_padding_slots(agg, dr_one):
  over = {"rl.loss_options.norm_constant": L_CONST, "rl.loss_options.agg": agg}
  one = dr_one if agg == "seq-mean-token-sum-norm" else run_step("dr_grpo", DR_ROWS, 1, over=over)
  p = one["packed"]
  assert p["sample_mask"].size == 8 and int(p["sample_mask"].sum()) == 5  # padding slots exist
  assert step_lib.check_packed(p, minibatches=1)["trajectories"] == 5
  div = DR_MODES[agg]
  full = sum(DR_SUMS.values()) / div  # 5/4 / 20 = 0.0625, or 5/4 / 5 = 0.25
  assert float(one["metrics"]["first_loss"]) == pytest.approx(full, rel=1e-5, abs=1e-7)
  # two minibatches: the update's loss is 2 x its share of the rollout batch's loss, with the
  # batch's 5 trajectories as G-total; at equal params the two losses average to the full one
  two = run_step("dr_grpo", DR_ROWS, 2, over=over)
  mb0 = {(g, t) for g, t, _ in first_minibatch_samples(two, 2)}
  assert 0 < len(mb0) < 5
  part = 2 * sum(DR_SUMS[gt] for gt in mb0) / div
  assert float(two["metrics"]["first_loss"]) == pytest.approx(part, rel=1e-5, abs=1e-7)
  assert float(two["metrics"]["loss"]) == pytest.approx(full, rel=1e-5, abs=1e-7)
  assert int(two["metrics"]["updates"]) == 2
  assert_mean_of_k_gradients_is_the_one_minibatch_gradient(two, one, 2)


# ----------------------------------------------------------------- Flow-GRPO paper weights

# One sequence per planner turn (AgentFlow layout), lengths 3..8, so first-fit packing mixes
# groups and turns in forward rows. Q = 3 queries:
#   group 0: traj 0 (R=1) 3 turns, traj 1 (R=0) 1 turn                 G = 2
#   group 1: traj 0 (R=1) 1 turn, traj 1 (R=0) 2 turns, traj 2 (R=0) 1  G = 3
#   group 2: traj 0 (R=1/2) 2 turns, traj 1 (R=0) 1 turn                 G = 2
def _seg(n):
  return [1] * n + [0] * (T - n)


FLOW_ROWS = [
    dict(group=0, traj=0, turn=0, reward=1.0, mask=[0, 0, 1, 1, 0, 0, 0, 0], seg=_seg(4)),
    dict(group=0, traj=0, turn=1, reward=1.0, mask=[0, 1, 1, 1, 0, 0, 0, 0], seg=_seg(5)),
    dict(group=0, traj=0, turn=2, reward=1.0, mask=[0, 0, 1, 0, 0, 0, 0, 0], seg=_seg(3)),
    dict(group=0, traj=1, turn=0, reward=0.0, mask=[0, 0, 0, 1, 1, 1, 1, 0]),
    dict(group=1, traj=0, turn=0, reward=1.0, mask=[0, 1, 1, 0, 0, 0, 0, 0], seg=_seg(3)),
    dict(group=1, traj=1, turn=0, reward=0.0, mask=[0, 0, 1, 1, 1, 0, 0, 0], seg=_seg(6)),
    dict(group=1, traj=1, turn=1, reward=0.0, mask=[0, 0, 1, 1, 0, 0, 0, 0], seg=_seg(4)),
    dict(group=1, traj=2, turn=0, reward=0.0, mask=[0, 1, 1, 1, 1, 0, 0, 0], seg=_seg(5)),
    dict(group=2, traj=0, turn=0, reward=0.5, mask=[0, 0, 1, 0, 0, 0, 0, 0], seg=_seg(3)),
    dict(group=2, traj=0, turn=1, reward=0.5, mask=[0, 1, 1, 1, 1, 1, 0, 0], seg=_seg(7)),
    dict(group=2, traj=1, turn=0, reward=0.0, mask=[0, 1, 1, 0, 0, 0, 0, 0], seg=_seg(4)),
    dict(group=2, traj=2, turn=0, reward=1.0, mask=[0, 1, 1, 0, 0, 0, 0, 0], seg=_seg(4),
         valid=False),  # padding row: no member of group 2
]
FLOW_G = {0: 2, 1: 3, 2: 2}
FLOW_T = {(0, 0): 3, (0, 1): 1, (1, 0): 1, (1, 1): 2, (1, 2): 1, (2, 0): 2, (2, 1): 1}


def flow_advantage(g, t):
  """Trajectory-level stats, unbiased std, A = (R - mean) / (std + 1e-6):
  group 0 {1, 0}: mean 1/2, std sqrt(1/2); group 1 {1, 0, 0}: mean 1/3, var (4/9 + 2/9) / 2
  = 1/3; group 2 {1/2, 0}: mean 1/4, std sqrt(1/8)."""
  r = {(0, 0): 1.0, (0, 1): 0.0, (1, 0): 1.0, (1, 1): 0.0, (1, 2): 0.0, (2, 0): 0.5,
       (2, 1): 0.0}[(g, t)]
  mean, std = {0: (0.5, math.sqrt(0.5)), 1: (1 / 3, math.sqrt(1 / 3)),
               2: (0.25, math.sqrt(1 / 8))}[g]
  return (r - mean) / (std + EPS)


def flow_terms(run):
  """Each turn sample's share of the paper loss,
  (1/Q)(1/G)(1/T_i)(1/|a|) sum_t [-A_i + 0.001 k3_t]   (ratio 1), with Q = 3 and G, T_i of the
  WHOLE rollout batch, keyed by (group, traj, turn)."""
  b = run["b"]
  variables = step_lib.variables_of(run["state"].params, run["state"].router_state)
  logp = np_logp(run["model_cfg"], variables, b)
  k3 = np_k3(logp, np_logp(run["model_cfg"], run["ref"], b))
  out = {}
  for i, row in enumerate(FLOW_ROWS):
    if not row.get("valid", True):
      continue
    g, t = row["group"], row["traj"]
    m = np.asarray(row["mask"], np.float64)
    per_token = (m * (-flow_advantage(g, t) + 0.001 * k3[i])).sum() / m.sum()
    out[(g, t, row["turn"])] = per_token / (3 * FLOW_G[g] * FLOW_T[(g, t)])
  return out


@pytest.fixture(scope="module")
def flow_one():
  return run_step("flow_grpo", FLOW_ROWS, 1, over={"rl.loss_options.minibatch_split": "rows"})


@pytest.mark.parametrize("split", ["rows", "groups"])
def test_flow_grpo_paper_weights_are_the_rollout_batchs_in_every_minibatch(split, flow_one):
  terms = flow_terms(flow_one)
  full = sum(terms.values())
  assert float(flow_one["metrics"]["first_loss"]) == pytest.approx(full, rel=2e-5, abs=1e-7)
  two = run_step("flow_grpo", FLOW_ROWS, 2, over={"rl.loss_options.minibatch_split": split})
  assert two["whole"] == (split == "groups")
  mb0 = first_minibatch_samples(two, 2)
  groups0 = {g for g, _, _ in mb0}
  if split == "rows":
    # the split cuts a trajectory's turns or a group apart (what per-minibatch recounting got
    # wrong): some trajectory or group has samples on both sides
    cut = [gt for gt in FLOW_T if 0 < sum((*gt, u) in mb0 for u in range(3)) < FLOW_T[gt]]
    cut += [g for g in groups0 if any(k[0] == g and k not in mb0 for k in terms)]
    assert cut, mb0
  else:
    # whole groups: 3 groups over 2 blocks, so one block holds 1 group and the other 2
    assert mb0 == {k for k in terms if k[0] in groups0} and len(groups0) in (1, 2)
  part = 2 * sum(terms[k] for k in mb0)
  assert float(two["metrics"]["first_loss"]) == pytest.approx(part, rel=2e-5, abs=1e-7)
  assert float(two["metrics"]["loss"]) == pytest.approx(full, rel=2e-5, abs=1e-7)
  assert int(two["metrics"]["updates"]) == 2 and float(two["metrics"]["clip_frac"]) == 0.0
  assert_mean_of_k_gradients_is_the_one_minibatch_gradient(two, flow_one, 2)


def test_whole_group_packing_and_its_check():
  b = make_batch(FLOW_ROWS, seed=4)
  packed, stats = step_lib.pack_batch(b, seq_len=T, sample_by="row", sample_len=T, row_bucket=4,
                                      sample_bucket=2, minibatches=2, whole_groups=True)
  f = packed["inputs"].shape[0]
  assert f % 4 == 0 and stats["samples"] == 11
  for g in range(3):  # every group's samples lie in one block of f / 2 forward rows
    rows = np.nonzero((packed["group_id"] == g) & packed["sample_mask"])[0]
    assert len(set(rows // (f // 2))) == 1, (g, rows)
  step_lib.check_packed(packed, minibatches=2, whole_groups=True)
  # the same batch packed without blocks splits a group (lengths mix groups in rows) ...
  plain, _ = step_lib.pack_batch(b, seq_len=T, sample_by="row", sample_len=T, row_bucket=4,
                                 sample_bucket=2)
  with pytest.raises(ValueError, match=r"group \d spans minibatch blocks"):
    step_lib.check_packed(plain, minibatches=2, whole_groups=True)


# ----------------------------------------------------------------- DAPO: over-sample and refill

def _episode(group, traj, reward):
  return Episode(task_id=f"t{group}", group_id=group, traj_id=traj, turns=[], reward=reward,
                 success=reward > 0, stop_reason="answer", transcript=None)


def _round(rewards):
  """Episodes of one rollout round: rewards[g] = the rewards of group g's rollouts."""
  return [_episode(g, t, r) for g, rs in enumerate(rewards) for t, r in enumerate(rs)]


def test_refill_collects_informative_groups_up_to_the_target():
  # round 0: groups {1,1} (all right), {0,1} (kept), {0,0} -> 1 of 3. Round 1: {1,0} kept, {1,1}
  # dropped, {0,0.5} kept -> 3 >= 3: stop, cut to the first 3 in generation order. Round 2 is
  # never sampled.
  calls = []

  def more(r):
    calls.append(r)
    return _round([[1.0, 0.0], [1.0, 1.0], [0.0, 0.5]] if r == 1 else [[0.0, 1.0]] * 3)

  out, stats = refill_lib.refill(_round([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]), more,
                                 target_groups=3, max_rounds=4)
  assert calls == [1]
  assert stats == {"dapo_fill": 1.0, "dapo_refill_rounds": 1, "dapo_groups_sampled": 6,
                   "dapo_groups_informative": 3, "dapo_episodes_sampled": 12}
  assert [(e.group_id, e.traj_id, e.reward) for e in out] == [
      (0, 0, 0.0), (0, 1, 1.0), (1, 0, 1.0), (1, 1, 0.0), (2, 0, 0.0), (2, 1, 0.5)]
  # more than enough at once: cut to the target; the batch never grows past it
  out, stats = refill_lib.refill(_round([[0.0, 1.0]] * 5), more, target_groups=3, max_rounds=4)
  assert len({e.group_id for e in out}) == 3 and stats["dapo_groups_informative"] == 5
  # bounded: nothing informative ever -> exactly max_rounds extra rounds, fill 0
  calls.clear()
  out, stats = refill_lib.refill(_round([[1.0, 1.0]] * 3), lambda r: calls.append(r) or
                                 _round([[0.0, 0.0]] * 3), target_groups=3, max_rounds=2)
  assert calls == [1, 2] and out == [] and stats["dapo_fill"] == 0.0
  assert stats["dapo_groups_sampled"] == 9
  # refill tasks depend only on (seed, step, round)
  pool = list(range(100))
  assert refill_lib.refill_tasks(pool, 0, 3, 1, 5) == refill_lib.refill_tasks(pool, 0, 3, 1, 5)
  assert refill_lib.refill_tasks(pool, 0, 3, 1, 5) != refill_lib.refill_tasks(pool, 0, 3, 2, 5)
  assert len(set(refill_lib.refill_tasks(pool, 0, 3, 1, 5))) == 5


def test_dapo_run_refills_the_batch_to_its_size(tokenizer_path, tmp_path, monkeypatch):
  """One DAPO step of the RL loop with real rollouts whose rewards are rewritten: round 0 has
  one informative group of 2, refill round 1 two; the step then trains on 2 groups x 2 episodes
  (the target), and dapo_fill says 1.0."""
  config = small_rl_config(tokenizer_path, "dapo", **{
      "train.num_steps": 1, "rl.eval_tasks": 0, "rl.minibatches": 1,
      "model.layer_type": "dense", "rl.dapo_max_refill_rounds": 3})
  real = loop._episodes
  seeds = []

  def scripted(*args):
    seed = args[-1]
    seeds.append(seed)
    eps = real(*args)
    # round 0: group 0 rewards (1, 0), group 1 (0, 0); refill round r >= 1: (1, 0) everywhere
    first = seed == loop.rollout_seed(config.seed, 1)
    rew = lambda e: float(e.traj_id == 0 and (e.group_id == 0 or not first))  # noqa: E731
    return [dataclasses.replace(e, reward=rew(e), success=bool(rew(e))) for e in eps]

  monkeypatch.setattr(loop, "_episodes", scripted)
  out = loop.run(config, str(tmp_path), handle_signals=False)
  assert out["status"] == "completed"
  assert seeds == [loop.rollout_seed(config.seed, 1), loop.rollout_seed(config.seed, 1, 1)]
  with open(tmp_path / "metrics.jsonl") as f:
    rec = json.loads(f.readline())
  assert (rec["dapo_fill"], rec["dapo_refill_rounds"], rec["dapo_groups_sampled"],
          rec["dapo_groups_informative"]) == (1.0, 1, 4, 3)
  # the step trained on the full batch: 2 groups kept by its own filter, 4 trajectory samples
  assert (rec["groups_kept"], rec["groups_dropped"], rec["samples"]) == (2, 0, 4)
  # round 0's episodes are the step's reported ones: 1 success out of 4
  assert rec["success_rate"] == 0.25



def test_flow_grpo_code_preset_recounts_per_minibatch_as_verl():
  """agg_scope "minibatch" (the released AgentFlow code on verl): the first update's loss is the
  token mean over ITS minibatch's tokens, with turn-sample statistics over the whole batch."""
  two = run_step("flow_grpo", FLOW_ROWS, 2, over={"rl.preset": "code"})
  assert not two["whole"]
  # turn-sample stats (every turn counts, unbiased std): group 0 rows R = 1, 1, 1, 0: mean 3/4,
  # var (3/16 + 9/16) / 3 = 1/4, std 1/2 -> A = (1/4) / (1/2) (traj 0), -(3/4) / (1/2) (traj 1);
  # group 1 rows 1, 0, 0, 0: mean 1/4, std 1/2 -> (3/4) / (1/2), -(1/4) / (1/2); group 2 rows
  # 1/2, 1/2, 0: mean 1/3, var (2/36 + 4/36) / 2 = 1/12 -> (1/6) / sqrt(1/12), -(1/3) / sqrt(1/12).
  s2 = math.sqrt(1 / 12)
  adv = {(0, 0): 0.25 / (0.5 + EPS), (0, 1): -0.75 / (0.5 + EPS), (1, 0): 0.75 / (0.5 + EPS),
         (1, 1): -0.25 / (0.5 + EPS), (1, 2): -0.25 / (0.5 + EPS), (2, 0): (1 / 6) / (s2 + EPS),
         (2, 1): -(1 / 3) / (s2 + EPS)}
  b = two["b"]
  logp = np_logp(two["model_cfg"], step_lib.variables_of(two["state"].params,
                                                         two["state"].router_state), b)
  k3 = np_k3(logp, np_logp(two["model_cfg"], two["ref"], b))
  mb0 = first_minibatch_samples(two, 2)
  num = den = 0.0
  for i, row in enumerate(FLOW_ROWS):
    if (row["group"], row["traj"], row["turn"]) in mb0 and row.get("valid", True):
      m = np.asarray(row["mask"], np.float64)
      num += (m * (-adv[(row["group"], row["traj"])] + 0.001 * k3[i])).sum()
      den += m.sum()
  assert float(two["metrics"]["first_loss"]) == pytest.approx(num / den, rel=2e-5, abs=1e-7)


def test_refill_config_is_checked():
  from agentic_jax.rl import config as rl_config  # pylint: disable=import-outside-toplevel
  dapo = config_lib.load_config(f"{ROOT}/configs/dapo.py:tiny")
  assert dapo.rl.dapo_max_refill_rounds == 3
  rl_config.check_rl_config(dapo)
  dapo.rl.dapo_max_refill_rounds = -1
  with pytest.raises(ValueError, match="config.rl.dapo_max_refill_rounds: expected an int >= 0"):
    rl_config.check_rl_config(dapo)
  dapo.rl.dapo_max_refill_rounds = 2
  dapo.rl.preset = "grpo_tcr"  # no dynamic sampling: nothing would ever be refilled
  with pytest.raises(ValueError, match="dapo_max_refill_rounds=2 needs config.rl.loss_options"):
    rl_config.check_rl_config(dapo)
  grpo = config_lib.load_config(f"{ROOT}/configs/grpo.py:tiny")
  assert grpo.rl.dapo_max_refill_rounds == 0
  rl_config.check_rl_config(grpo)
