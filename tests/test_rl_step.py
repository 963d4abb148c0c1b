"""agentic_jax/rl/step.py on a 1-layer model and hand-built policy batches: the loss through the
whole jitted step against an independent float64 numpy computation (Flow-GRPO paper weighting
with dynamic sampling and recomputed old log-probs; GRPO over 2 epochs x 2 minibatches with
clipping), gradient direction, masked positions and padding rows. Two steps and one gradient
are compiled in all (module fixtures), to keep the file cheap."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from agentic_jax.rl import step as step_lib
from agentic_jax.train import config as config_lib
from agentic_jax.train import state as state_lib
from tests.rl_fixtures import FLOW_ROWS, VOCAB, T, make_batch, np_k3, np_logp, pack, rl_test_config
from tests.rl_fixtures import setup


def source_rows(packed, b):
  """The policy-batch row held by each forward row (the tests' rows are one per forward row)."""
  out = []
  for j in range(packed["inputs"].shape[0]):
    n = int((packed["segment_ids"][j] > 0).sum())
    hits = [r for r in range(len(b["inputs"])) if b["sample_mask"][r]
            and int((b["segment_ids"][r] > 0).sum()) == n
            and np.array_equal(b["inputs"][r, :n], packed["inputs"][j, :n])]
    out.append(hits[0] if hits else -1)
  return np.array(out)


def np_pg(logp, old, a, lo, hi):
  r = np.exp(np.clip(logp - old, -20, 20))
  return np.maximum(-a * r, -a * np.clip(r, 1 - lo, 1 + hi))


def grpo_adv(gap_sign, gap):
  """Two-member group, rewards differing by `gap`: mean +- gap/2, unbiased std gap/sqrt(2),
  A = (+-gap/2) / (gap/sqrt(2) + 1e-6)."""
  return gap_sign * (gap / 2) / (gap / np.sqrt(2) + 1e-6)


# ----------------------------------------------------------------- Flow-GRPO paper, recompute
# (the rows: FLOW_ROWS in tests/rl_fixtures.py)


@pytest.fixture(scope="module")
def flow():
  config = rl_test_config("flow_grpo", **{"rl.old_logp": "recompute",
                                          "rl.loss_options.dynamic_sampling": True})
  model_cfg, state, ref = setup(config, seed=1)
  b = make_batch(FLOW_ROWS, seed=3)
  variables = step_lib.variables_of(state.params, state.router_state)
  logp = np_logp(model_cfg, variables, b)
  b["old_logp"] = np.where(b["mask"] > 0, logp - 0.01, 0).astype(np.float32)  # "sampler" values
  step = jax.jit(step_lib.make_rl_step(model_cfg, config))
  return dict(config=config, model_cfg=model_cfg, state=state, ref=ref, b=b, logp=logp, step=step,
              packed=pack(b))


def test_flow_grpo_paper_loss_through_the_full_step_equals_numpy(flow):
  b, logp = flow["b"], flow["logp"]
  ref_logp = np_logp(flow["model_cfg"], flow["ref"], b)
  # recompute: old = logp, so ratio 1 and pg = -A. Group 2 (all rewards equal) is dropped by
  # dynamic sampling; the padding row never counts. Trajectory-level stats over the G=2
  # trajectory rewards of groups 0 ({1, 0}) and 1 ({0.5, 0}); every turn gets its trajectory's A.
  a = np.array([grpo_adv(1, 1), grpo_adv(1, 1), grpo_adv(-1, 1), grpo_adv(1, .5),
                grpo_adv(-1, .5), 0, 0, 0])
  keep = np.array([1, 1, 1, 1, 1, 0, 0, 0], bool)
  m = b["mask"].astype(np.float64) * keep[:, None]
  turns = np.array([2, 2, 1, 1, 1, 1, 1, 1])  # T_i of each row's trajectory
  per_row = lambda x: (m * x).sum(1) / np.maximum(m.sum(1), 1)  # noqa: E731
  agg = lambda x: np.sum(per_row(x) / (turns * 2 * 2))  # noqa: E731  (1/Q)(1/G)(1/T_i)(1/|a|)
  expected = agg(-a[:, None] * np.ones_like(logp)) + 0.001 * agg(np_k3(logp, ref_logp))

  assert step_lib.check_packed(flow["packed"], minibatches=1)["rows"] == 7
  _, metrics = flow["step"](flow["state"], flow["ref"], flow["packed"])
  assert float(metrics["first_loss"]) == pytest.approx(expected, rel=2e-5, abs=1e-7)
  assert (int(metrics["groups_kept"]), int(metrics["groups_dropped"]),
          int(metrics["rows_dropped"])) == (2, 1, 2)
  assert int(metrics["train_tokens"]) == m.sum()
  assert float(metrics["kl"]) == pytest.approx((m * np_k3(logp, ref_logp)).sum() / m.sum(), rel=2e-5)
  # sampler log-probs were set 0.01 below the recomputed ones on every trainable token
  assert float(metrics["old_logp_diff_max"]) == pytest.approx(0.01, abs=2e-5)
  assert float(metrics["old_logp_diff_mean"]) == pytest.approx(0.01, abs=2e-5)


def test_padding_rows_and_masked_positions_change_nothing(flow):
  b = flow["b"]
  s1, m1 = flow["step"](flow["state"], flow["ref"], flow["packed"])
  pert = {k: v.copy() for k, v in b.items()}
  rng = np.random.default_rng(9)
  for k in ("inputs", "targets"):  # the padding row: anything at all; the packer leaves it out
    pert[k][7] = rng.integers(3, VOCAB, T)
  pert["rewards"][7] = 7.0
  off = b["mask"] == 0  # masked-out positions of every row: targets and old log-probs
  pert["targets"] = np.where(off, (b["targets"] + 17) % VOCAB, pert["targets"]).astype(np.int32)
  pert["old_logp"] = np.where(off, -5.0, b["old_logp"]).astype(np.float32)
  packed2 = pack(pert)
  assert not np.array_equal(packed2["targets"], flow["packed"]["targets"])
  s2, m2 = flow["step"](flow["state"], flow["ref"], packed2)
  assert float(m1["first_loss"]) == float(m2["first_loss"])
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
               s1.params, s2.params)
  assert int(s1.step) == 1 and int(m1["skipped"]) == 0


def test_pack_batch_turn_samples_and_first_fit():
  # two trajectory rows: row 0 = 2 turns (runs 2-3 and 6-7, observation 4-5 between),
  # row 1 = 1 turn, length 3; seq_len 8 puts row 1 alone (8 + 3 > 8)... and a 3rd row of
  # length 4 joins it (3 + 4 <= 8): first-fit decreasing.
  b = make_batch([dict(group=0, traj=0, reward=1.0, mask=[0, 0, 1, 1, 0, 0, 1, 1]),
                  dict(group=0, traj=1, reward=0.0, mask=[0, 1, 1, 0, 0, 0, 0, 0],
                       seg=[1, 1, 1, 0, 0, 0, 0, 0]),
                  dict(group=1, traj=0, reward=0.5, mask=[0, 0, 1, 0, 0, 0, 0, 0],
                       seg=[1, 1, 1, 1, 0, 0, 0, 0])], seed=11)
  b["truncated"][0] = True
  b["targets"][0, 3] = step_lib._STOP_IDS[0]  # turn 0 of row 0 ends with <|end_turn|>
  packed, stats = step_lib.pack_batch(b, seq_len=8, sample_by="turn", sample_len=4, row_bucket=2)
  assert stats == {"sequences": 3, "forward_rows": 2, "samples": 4, "sample_slots": 4,
                   "tokens": 15, "token_slots": 16}
  np.testing.assert_array_equal(packed["segment_ids"][1], [1, 1, 1, 1, 2, 2, 2, 0])
  np.testing.assert_array_equal(packed["positions"][1], [0, 1, 2, 3, 0, 1, 2, 0])
  np.testing.assert_array_equal(packed["inputs"][1, 4:7], b["inputs"][1, :3])
  np.testing.assert_array_equal(packed["index"][0, :, :2], [[2, 3], [6, 7]])
  np.testing.assert_array_equal(packed["turn_index"][0], [0, 1])
  np.testing.assert_array_equal(packed["tool_len"][0], [2, 0])
  np.testing.assert_array_equal(packed["truncated"][0], [False, True])  # only the turn w/o stop
  # forward row 1: row 2 (longer) at offset 0, row 1 at offset 4; slots in row order
  np.testing.assert_array_equal(packed["index"][1, 0, :2], [5, 6])
  np.testing.assert_array_equal(packed["index"][1, 1, :1], [2])
  np.testing.assert_array_equal(packed["old_logp"][0, 1, :2], b["old_logp"][0, 6:8])
  rowwise, _ = step_lib.pack_batch(b, seq_len=8, sample_by="row", sample_len=4)
  assert rowwise["index"].shape[1] == 2 and rowwise["tool_len"][0, 0] == 2
  with pytest.raises(ValueError, match="row 0: a sample of 4 trainable tokens > sample_len=3"):
    step_lib.pack_batch(b, seq_len=8, sample_by="row", sample_len=3)
  with pytest.raises(ValueError, match=r"row 0: 8 positions > config.rl.seq_len=7"):
    step_lib.pack_batch(b, seq_len=7, sample_by="turn", sample_len=4)


# ----------------------------------------------------------------- GRPO, 2 epochs x 2 minibatches

DELTA = np.array([[0, 0, 0.1, -0.35, 0, 0.35, 0.05, 0],  # old = logp + delta: ratio exp(-delta)
                  [0, 0, 0.3, -0.1, 0, 0, 0, 0],
                  [0, 0, 0, 0.25, -0.25, 0, 0, 0],
                  [0, 0, -0.3, 0.2, 0.1, 0, 0, 0]])


def test_grpo_minibatch_loss_through_the_full_step_equals_numpy():
  config = rl_test_config("grpo", **{"rl.ppo_epochs": 2, "rl.minibatches": 2})
  model_cfg, state, ref = setup(config)
  rows = [dict(group=0, traj=0, reward=1.0, mask=[0, 0, 1, 1, 0, 1, 1, 0]),  # 4: observation
          dict(group=0, traj=1, reward=0.0, mask=[0, 0, 1, 1, 0, 0, 0, 0]),
          dict(group=1, traj=0, reward=0.5, mask=[0, 0, 1, 1, 1, 0, 0, 0], seg=[1] * 6 + [0, 0]),
          dict(group=1, traj=1, reward=0.0, mask=[0, 0, 1, 1, 1, 0, 0, 0])]
  b = make_batch(rows)
  variables = step_lib.variables_of(state.params, state.router_state)
  logp = np_logp(model_cfg, variables, b)
  b["old_logp"] = np.where(b["mask"] > 0, logp + DELTA, 0).astype(np.float32)
  ref_logp = np_logp(model_cfg, ref, b)
  a = np.array([grpo_adv(1, 1), grpo_adv(-1, 1), grpo_adv(1, .5), grpo_adv(-1, .5)])
  pg = np_pg(logp, b["old_logp"].astype(np.float64), a[:, None], 0.2, 0.2)
  k3 = np_k3(logp, ref_logp)
  # the first update's minibatch: the first half of epoch 0's permutation of the forward rows
  fwd0 = np.asarray(jax.random.permutation(
      jax.random.fold_in(state_lib.step_key(state), 0), 4))[:2]
  rows0 = source_rows(pack(b, row_bucket=2), b)[fwd0]
  m = b["mask"][rows0].astype(np.float64)
  seq_mean = lambda x: np.mean((m * x[rows0]).sum(1) / m.sum(1))  # noqa: E731
  expected = seq_mean(pg) + 0.04 * seq_mean(k3)

  packed = pack(b, row_bucket=2)
  new_state, metrics = jax.jit(step_lib.make_rl_step(model_cfg, config))(state, ref, packed)
  assert float(metrics["first_loss"]) == pytest.approx(expected, rel=2e-5, abs=1e-7)
  r = np.exp(-DELTA)[rows0]
  clipped = ((a[rows0, None] > 0) & (r > 1.2)) | ((a[rows0, None] < 0) & (r < 0.8))
  assert clipped.sum() > 0
  # sampler vs pre-update log-probs, on the first minibatch ("sampler" mode)
  assert float(metrics["old_logp_diff_max"]) == pytest.approx(np.abs(DELTA[rows0] * m).max(), abs=1e-5)
  assert int(new_state.step) == 1 and int(metrics["updates"]) == 4 and int(metrics["skipped"]) == 0
  assert all(np.isfinite(float(metrics[k]))
             for k in ("loss", "kl", "entropy", "grad_norm", "approx_kl", "clip_frac", "lr"))
  assert not np.allclose(np.asarray(jax.tree.leaves(new_state.params)[0]),
                         np.asarray(jax.tree.leaves(state.params)[0]))
  assert step_lib.check_packed(packed, minibatches=2)["rows"] == 4
  with pytest.raises(ValueError, match="not divisible by config.rl.minibatches"):
    step_lib.check_packed({k: v[:3] for k, v in packed.items()}, minibatches=2)


# ----------------------------------------------------------------- the minibatch loss's gradient

@pytest.fixture(scope="module")
def grad_setup():
  config = rl_test_config("grpo")
  model_cfg, state, ref = setup(config, seed=2)
  loss_fn = step_lib.make_loss_fn(model_cfg, config)
  value_grad = jax.jit(jax.value_and_grad(lambda p, r: loss_fn(p, state.router_state, r)[0]))
  return model_cfg, state, value_grad


def _mb(b, old, adv, ref_logp):
  """A minibatch for make_loss_fn from policy-layout rows (one sample per row, L = T)."""
  packed = pack(b)
  rows = source_rows(packed, b)
  assert list(rows) == list(range(len(rows)))  # the tests below keep rows in place
  idx = packed["index"]
  take = lambda x: np.take_along_axis(x, idx[:, 0], 1)[:, None]  # noqa: E731  [F, 1, L]
  # the minibatch is the whole rollout batch here: its own (GRPO) weights are the carried ones
  weights = step_lib.objective_from_config(rl_test_config()).token_weights(
      packed["mask"][:, 0], sample_mask=packed["sample_mask"][:, 0])[:, None]
  return {**{k: packed[k] for k in step_lib.TOKEN_KEYS}, "index": idx, "old_logp": take(old),
          "ref_logp": take(ref_logp), "mask": packed["mask"], "adv": np.asarray(adv)[:, None],
          "keep": packed["sample_mask"], "group_id": packed["group_id"],
          "traj_id": packed["traj_id"], "weights": np.asarray(weights)}


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_sgd_step_moves_masked_logp_with_the_advantage(grad_setup, sign):
  model_cfg, state, value_grad = grad_setup
  b = make_batch([dict(group=0, traj=0, reward=1.0, mask=[0, 0, 0, 1, 1, 0, 1, 1]),
                  dict(group=1, traj=0, reward=0.0, mask=[0, 0, 0, 1, 1, 0, 1, 1], valid=False)],
                 seed=5)  # the padding row is left out by the packer
  variables = step_lib.variables_of(state.params, state.router_state)
  logp0 = np_logp(model_cfg, variables, b).astype(np.float32)
  # ref = current policy: the k3 term's gradient is 0 there, only the advantage pushes
  rows = _mb(b, logp0, np.array([sign], np.float32), logp0)
  _, grads = value_grad(state.params, rows)
  new = jax.tree.map(lambda p, g: p - 0.05 * g, state.params, grads)
  logp1 = np_logp(model_cfg, step_lib.variables_of(new, state.router_state), b)
  change = (logp1 - logp0)[0][b["mask"][0] > 0]
  assert sign * change.sum() > 1e-4, change


def test_masked_positions_have_exactly_zero_gradient(grad_setup):
  model_cfg, state, value_grad = grad_setup
  b = make_batch([dict(group=0, traj=0, reward=1.0, mask=[0, 0, 1, 1, 0, 0, 1, 1]),
                  dict(group=0, traj=1, reward=0.0, mask=[0, 1, 1, 0, 0, 1, 1, 0])], seed=6)
  rng = np.random.default_rng(0)
  old = np.where(b["mask"] > 0, -rng.uniform(0.5, 3, b["mask"].shape), 0).astype(np.float32)
  refl = np.where(b["mask"] > 0, -rng.uniform(0.5, 3, b["mask"].shape), 0).astype(np.float32)
  rows = _mb(b, old, np.array([0.7, -0.7], np.float32), refl)
  loss0, g0 = value_grad(state.params, rows)
  off = b["mask"] == 0  # perturb every masked-out position: target, old/ref log-probs (nan, -inf)
  pert = _mb({**b, "targets": np.where(off, (b["targets"] + 17) % VOCAB, b["targets"]).astype(np.int32)},
             np.where(off, np.nan, old).astype(np.float32), np.array([0.7, -0.7], np.float32),
             np.where(off, -np.inf, refl).astype(np.float32))
  pert["old_logp"][pert["mask"] == 0] = np.nan  # the sample slots' padding too
  loss1, g1 = value_grad(state.params, pert)
  assert np.isfinite(float(loss0)) and float(loss0) == float(loss1)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), g0, g1)
  pert2 = dict(rows)  # not vacuous: changing trainable targets changes the loss
  pert2["targets"] = np.where(~off, (b["targets"] + 17) % VOCAB, b["targets"]).astype(np.int32)
  assert float(value_grad(state.params, pert2)[0]) != float(loss0)


def test_bad_config_values_are_named():
  with pytest.raises(ValueError, match="config.rl.old_logp"):
    step_lib.make_rl_step(config_lib.model_config(rl_test_config().model),
                          rl_test_config(**{"rl.old_logp": "cached"}))
  with pytest.raises(ValueError, match="config.rl.loss_options.*clip_eps_low"):
    step_lib.objective_from_config(rl_test_config(**{"rl.loss_options.clip_eps_low": 2.0}))
