"""agentic_jax/rl/loop.py and the RL configs: exact resume (2 + stop + 2 == 4, bitwise),
SIGTERM saves and exits, a run whose every update was skipped is not a success, init_from a
mid-training workdir (and a model mismatch named), every config builds, every registry loss is
reachable, typos rejected, a 1-step smoke run of each RL config. A 1-layer model, a 400-piece
tokenizer, 2 tasks x 2 rollouts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from agentic_jax.objectives import rl_losses
from agentic_jax.rl import config as rl_config
from agentic_jax.rl import loop
from agentic_jax.rl import step as step_lib
from agentic_jax.train import checkpoint as ckpt_lib
from agentic_jax.train import config as config_lib
from agentic_jax.train import optim as optim_lib
from agentic_jax.train import state as state_lib
from tests import tensorboard_fixtures
from tests.rl_fixtures import small_rl_config
from tests.train_fixtures import ROOT

CONFIGS = {"flow_grpo": ("tiny", "tiny_code"), "grpo": ("tiny",), "dapo": ("tiny",),
           "dr_grpo": ("tiny",)}
_TIMING = ("rollout_s", "train_s")


def _final_params(config, workdir):
  model_cfg = config_lib.model_config(config.model)
  abstract = state_lib.abstract_state(model_cfg, optim_lib.make_optimizer(config.optim), config.seed)
  return ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints")).restore_latest(abstract)


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in _TIMING} for line in f]


@pytest.fixture(scope="module")
def uninterrupted(tokenizer_path, tmp_path_factory):
  config = small_rl_config(tokenizer_path)
  workdir = str(tmp_path_factory.mktemp("full"))
  return config, workdir, loop.run(config, workdir, handle_signals=False)


def test_resume_after_stop_equals_an_uninterrupted_run_bitwise(uninterrupted, tmp_path):
  config, full_dir, full = uninterrupted
  assert full["status"] == "completed" and full["final_step"] == 4
  workdir = str(tmp_path / "resumed")
  first = loop.run(config, workdir, stop_after_steps=2, handle_signals=False)
  assert first["status"] == "stopped" and first["final_step"] == 2
  assert first["success_rate_after"] is None
  second = loop.run(config, workdir, handle_signals=False)
  assert second["start_step"] == 2 and second["final_step"] == 4
  assert _records(workdir) == _records(full_dir)  # every metric of every step, incl. rewards
  a, meta_a = _final_params(config, full_dir)
  b, meta_b = _final_params(config, workdir)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
  def drop_time(d):  # wall-clock seconds differ between runs, also in the nested greedy eval
    return {k: drop_time(v) if isinstance(v, dict) else v for k, v in d.items() if k != "seconds"}
  assert drop_time(meta_a["eval_before"]) == drop_time(meta_b["eval_before"])
  for key in ("success_rate_before", "success_rate_after"):
    assert second[key] == full[key] and 0.0 <= full[key] <= 1.0


def test_outputs_and_metrics_of_a_run(uninterrupted):
  config, workdir, full = uninterrupted
  recs = _records(workdir)
  assert [r["step"] for r in recs] == [1, 2, 3, 4]
  for key in ("reward_mean", "success_rate", "kl", "entropy", "clip_frac", "turns_per_episode",
              "tokens_generated", "loss", "grad_norm", "lr", "approx_kl", "old_logp_diff_max"):
    assert all(r[key] is not None for r in recs), key
  # the sampler's and the pre-update forward's log-probs agree (same params, same tokens)
  assert max(r["old_logp_diff_max"] for r in recs) < 1e-3
  assert all(0 < r["turns_per_episode"] <= 2 and r["samples"] >= 4 for r in recs)
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["success_rate_before"] == full["success_rate_before"]
  assert summary["eval_before"]["tasks"] == 4 and summary["dropped_rows"] == 0
  assert os.path.exists(os.path.join(workdir, "rl.png"))
  # each step's sampled episodes as TensorBoard text (tensorboardX: "<tag>/text_summary")
  events = tensorboard_fixtures.read_events(os.path.join(workdir, "tb"))
  texts = [(e.step, v.tensor.string_val[0].decode()) for e in events for v in e.summary.value
           if v.tag == "rollouts/text_summary"]
  assert [step for step, _ in texts] == [1, 2, 3, 4]
  assert all("reward" in t and "turn 0 (policy)" in t and "```" in t for _, t in texts)


def test_each_steps_episodes_are_saved_for_inspection(uninterrupted):
  config, workdir, _ = uninterrupted
  from agentic_jax.rl import rollout_log  # pylint: disable=import-outside-toplevel
  recs = _records(workdir)
  rows = config.rl.tasks_per_step * config.rl.group_size
  assert sorted(os.listdir(os.path.join(workdir, "rollouts"))) == [
      f"step_{s:06d}.jsonl" for s in (1, 2, 3, 4)]
  for rec in recs:
    eps = rollout_log.read_step(workdir, rec["step"])
    assert len(eps) == min(rows, config.rl.save_rollouts_episodes)
    # the file's episodes are the ones the step's metrics were computed from
    assert np.isclose(np.mean([e["reward"] for e in eps]), rec["reward_mean"])
    assert np.isclose(np.mean([e["success"] for e in eps]), rec["success_rate"])
    assert np.isclose(np.mean([len(e["turns"]) for e in eps]), rec["turns_per_episode"])
    assert [(e["group_id"], e["traj_id"]) for e in eps] == [
        (q, g) for q in range(config.rl.tasks_per_step) for g in range(config.rl.group_size)]
    for e in eps:
      assert e["step"] == rec["step"] and e["prompt"]
      assert e["stop_reason"] in ("answer", "env_step_limit", "eos", "max_turns", "token_budget")
      for t in e["turns"]:
        assert t["role"] == "policy" and t["context_tokens"] > 0 and isinstance(t["text"], str)
        # a turn with a tool call got an observation from the environment
        assert t["tool_call"] is None or t["observation"] or e["stop_reason"] == "eos"


def test_rollout_saving_rate_and_limit(tmp_path):
  from agentic_jax.rl import rollout_log  # pylint: disable=import-outside-toplevel
  from agentic_jax.rl.rollout import Episode, TurnRecord  # pylint: disable=import-outside-toplevel
  from agentic_jax.data.tokenizer import ByteTokenizer  # pylint: disable=import-outside-toplevel
  tok = ByteTokenizer()
  ctx = np.asarray([tok.bos_id] + tok.encode("what is 2+2?"), np.int32)
  resp = np.asarray(tok.encode("4"), np.int32)
  eps = [Episode(f"t{i}", i, 0, [TurnRecord(ctx, resp, np.zeros(len(resp), np.float32), True,
                                            False, "4", "ok")], float(i), i % 2 == 1, "answer",
                 None, {"tool_errors": 0, "final_info": {"value": np.int64(4)}})
         for i in range(5)]
  path = rollout_log.write_step(str(tmp_path), 7, eps, tok, limit=3)
  assert path.endswith("rollouts/step_000007.jsonl")
  got = rollout_log.read_step(str(tmp_path), 7)
  assert [e["task_id"] for e in got] == ["t0", "t1", "t2"]
  assert got[1]["reward"] == 1.0 and got[1]["success"] is True
  assert got[0]["final_info"] == {"value": 4} and "what is 2+2?" in got[0]["prompt"]
  assert len(rollout_log.read_step(str(tmp_path), 7)) == 3
  rollout_log.write_step(str(tmp_path), 7, eps, tok, limit=0)  # a re-run step: rewritten
  assert len(rollout_log.read_step(str(tmp_path), 7)) == 5


def test_sigterm_saves_a_checkpoint_and_a_rerun_finishes(tokenizer_path, tmp_path, monkeypatch):
  config = small_rl_config(tokenizer_path, **{"train.num_steps": 2, "rl.eval_tasks": 0})
  real = loop._episodes
  calls = []

  def episodes_then_sigterm(*args, **kwargs):
    calls.append(1)
    if len(calls) == 1:
      os.kill(os.getpid(), signal.SIGTERM)  # preemption while step 1 rolls out
    return real(*args, **kwargs)

  monkeypatch.setattr(loop, "_episodes", episodes_then_sigterm)
  out = loop.run(config, str(tmp_path), handle_signals=True)
  assert out["status"] == "preempted" and out["final_step"] == 1
  assert out["checkpoints"]["steps"] == [1]
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
  again = loop.run(config, str(tmp_path), handle_signals=False)
  assert again["status"] == "completed" and again["start_step"] == 1 and again["final_step"] == 2


def test_a_stuck_update_is_reported_by_the_watchdog(tokenizer_path, tmp_path, monkeypatch):
  """An RL update that does not return within train.step_timeout_s fires the watchdog with
  the step named (the real one ends the process with status 3; here its exit is recorded and
  the stuck update released, so the run can finish)."""
  import threading  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import watchdog as watchdog_lib  # pylint: disable=import-outside-toplevel
  config = small_rl_config(tokenizer_path, **{"train.num_steps": 1, "rl.eval_tasks": 0,
                                              "train.step_timeout_s": 0.5})
  release, dogs = threading.Event(), []
  real_dog = watchdog_lib.Watchdog  # loop.watchdog_lib is this module: patched below

  def recording_dog(limit_s, where, **kw):
    dog = real_dog(limit_s, where, exit_fn=lambda code: release.set(), poll_s=0.05,
                                **kw)
    dogs.append(dog)
    return dog

  real_jit = loop._Placement.jit  # pylint: disable=protected-access

  def stuck_jit(self, *args):
    fn = real_jit(self, *args)

    def blocked(*a):
      assert release.wait(60), "the watchdog never fired"
      return fn(*a)
    return blocked

  monkeypatch.setattr(loop.watchdog_lib, "Watchdog", recording_dog)
  monkeypatch.setattr(loop._Placement, "jit", stuck_jit)  # pylint: disable=protected-access
  out = loop.run(config, str(tmp_path), handle_signals=False)
  assert out["status"] == "completed"
  assert dogs and dogs[0].fired is not None
  assert dogs[0].fired.startswith("[watchdog] the update of RL step 1 did not finish within 0.5 s "
                                  "on mesh (one device) over 1 process")


def test_every_update_skipped_is_not_a_success(tokenizer_path, tmp_path, monkeypatch):
  """A run whose every update was non-finite did not train: status all_skipped (launch/train.py
  exits 1), not completed."""
  config = small_rl_config(tokenizer_path, **{"train.num_steps": 2, "rl.eval_tasks": 0})
  real = loop.make_batch

  def nan_old_logp(*args, **kwargs):  # the sampler's log-probs: every PPO ratio non-finite
    packed, stats = real(*args, **kwargs)
    return {**packed, "old_logp": np.full_like(packed["old_logp"], np.nan)}, stats

  monkeypatch.setattr(loop, "make_batch", nan_old_logp)
  out = loop.run(config, str(tmp_path), handle_signals=False)
  assert out["status"] == "all_skipped" and out["final_step"] == 2
  recs = _records(str(tmp_path))
  assert [r["updates"] for r in recs] == [0, 0] and all(r["skipped"] > 0 for r in recs)


def test_init_from_a_midtraining_workdir(tokenizer_path, tmp_path):
  config = small_rl_config(tokenizer_path, **{"train.num_steps": 1, "rl.eval_tasks": 0})
  # a mid-training WORKDIR: tokenizer.model + an orbax checkpoint of a mid-training TrainState
  mt = tmp_path / "mt"
  os.makedirs(mt)
  with open(tokenizer_path, "rb") as src, open(mt / "tokenizer.model", "wb") as dst:
    dst.write(src.read())
  model_cfg = config_lib.model_config(config.model)
  mt_state = state_lib.init_state(model_cfg, optim_lib.make_optimizer(config.optim), seed=77)
  mt_state = mt_state.replace(step=mt_state.step + 5)
  ck = ckpt_lib.Checkpointer(str(mt / "checkpoints"), async_save=False)
  ck.save(mt_state, None, {"model": config.model.to_dict()})
  ck.close()
  cfg = small_rl_config(tokenizer_path, **{"train.num_steps": 1, "rl.eval_tasks": 0,
                                           "init_from": str(mt)})
  out = loop.run(cfg, str(tmp_path / "rl"), handle_signals=False)
  want = {"params": mt_state.params, "router_state": mt_state.router_state}
  assert out["init"]["step"] == 5
  assert out["init"]["fingerprint"] == [int(x) for x in ckpt_lib.fingerprint(want)]
  bad = small_rl_config(tokenizer_path, **{"init_from": str(mt), "model.hidden_size": 48})
  with pytest.raises(ValueError, match="hidden_size: 32 \\(init_from\\) vs 48"):
    loop.run(bad, str(tmp_path / "bad"), handle_signals=False)


# ----------------------------------------------------------------- configs

@pytest.mark.parametrize("loss,variant", [(l, v) for l, vs in CONFIGS.items() for v in vs])
def test_every_config_builds_and_resolves(loss, variant):
  config = config_lib.load_config(os.path.join(ROOT, "configs", f"{loss}.py") + f":{variant}")
  rl_config.check_rl_config(config)
  assert config.job == "rl" and config.init_from == "" and config.rl.loss == loss
  obj = step_lib.objective_from_config(config)
  assert obj.name == loss and obj.preset == config.rl.preset
  config_lib.model_config(config.model)  # the mid-training model: init_from restores into it


def test_every_registry_loss_has_a_config_and_presets_are_reachable():
  assert set(rl_losses.registered_policy_losses()) <= set(CONFIGS)
  config = config_lib.load_config(os.path.join(ROOT, "configs", "dapo.py:tiny"))
  config.rl.preset = "grpo_tcr"  # any preset of the registry through the config
  assert step_lib.objective_from_config(config).options["dual_clip_c"] == 10.0
  code = config_lib.load_config(os.path.join(ROOT, "configs", "flow_grpo.py:tiny_code"))
  assert step_lib.objective_from_config(code).options["clip_eps_high"] == 0.3


def test_typos_and_bad_values_are_rejected():
  config = config_lib.load_config(os.path.join(ROOT, "configs", "flow_grpo.py:tiny"))
  with pytest.raises(AttributeError, match="group_sise"):
    config.rl.group_sise = 4
  with pytest.raises(AttributeError, match="clip_eps_hihg"):
    config.rl.loss_options.clip_eps_hihg = 0.3
  config.rl.loss_options.clip_eps_high = 0.3  # a known option is settable and reaches the loss
  assert step_lib.objective_from_config(config).options["clip_eps_high"] == 0.3
  config.rl.preset = "papr"
  with pytest.raises(ValueError, match="unknown preset 'papr'"):
    step_lib.objective_from_config(config)
  config.rl.preset = "paper"
  config.rl.batch_mode = "episode"
  with pytest.raises(ValueError, match="config.rl.batch_mode"):
    rl_config.check_rl_config(config)
  config.rl.batch_mode = "turn"
  config.rl.seq_len = 100
  with pytest.raises(ValueError, match="config.rl.seq_len=100"):
    rl_config.check_rl_config(config)
  config.rl.seq_len = 448
  config.rl.eval_samples = 4  # several greedy episodes per task would all be the same
  with pytest.raises(ValueError, match="config.rl.eval_samples=4 needs config.rl.eval_temperature"):
    rl_config.check_rl_config(config)
  with pytest.raises(ValueError, match="unknown variant 'huge'"):
    config_lib.load_config(os.path.join(ROOT, "configs", "grpo.py:huge"))


@pytest.mark.parametrize("loss,variant", [(l, v) for l, vs in CONFIGS.items() for v in vs
                                          if (l, v) != ("flow_grpo", "tiny")])
def test_one_step_smoke_run_of_each_config(tokenizer_path, tmp_path, loss, variant):
  # flow_grpo:tiny runs in the tests above; the others once each, 1 step, no eval
  config = small_rl_config(tokenizer_path, loss, variant,
                           **{"train.num_steps": 1, "rl.eval_tasks": 0, "rl.minibatches": 1,
                              "model.layer_type": "dense"})  # compiles faster; MoE runs above
  out = loop.run(config, str(tmp_path), handle_signals=False)
  assert out["status"] == "completed" and out["final_step"] == 1
  rec = _records(str(tmp_path))[0]
  if loss == "dapo" and rec["dapo_fill"] == 0:
    # a fresh policy solves every task of a group alike, so dynamic sampling keeps no group:
    # the bounded refill ran all its rounds and the step trained on nothing
    assert rec["dapo_refill_rounds"] == config.rl.dapo_max_refill_rounds and rec["samples"] == 0
    assert rec["updates"] == 0 and rec["skipped"] == 0
    return
  assert rec["skipped"] == 0 and np.isfinite(rec["loss"]) and rec["samples"] > 0


def test_agentflow_mode_one_step(tokenizer_path, tmp_path):
  # AgentFlow episodes (scripted executor/verifier/generator): only planner turns are samples
  config = small_rl_config(tokenizer_path, **{"train.num_steps": 1, "rl.eval_tasks": 2,
                                              "rl.mode": "agentflow", "rl.minibatches": 1,
                                              "model.layer_type": "dense"})
  out = loop.run(config, str(tmp_path), handle_signals=False)
  assert out["status"] == "completed" and out["eval_after"]["tasks"] == 2
  rec = _records(str(tmp_path))[0]
  assert rec["samples"] == rec["sequences"] >= 4  # one sequence per planner turn


_MESH_CHECK = """
import sys
sys.path.insert(0, {root!r})
import jax, numpy as np
from tests.rl_fixtures import FLOW_ROWS, make_batch, pack, rl_test_config, setup
from agentic_jax.rl import loop, step as step_lib
from agentic_jax.train import optim as optim_lib, state as state_lib
assert jax.device_count() == 2
config = rl_test_config("flow_grpo", **{{"rl.minibatches": 2}})
model_cfg, state, ref = setup(config, seed=1)
packed = pack(make_batch(FLOW_ROWS, seed=3), row_bucket=4)
step_fn = step_lib.make_rl_step(model_cfg, config)
s1, m1 = jax.jit(step_fn)(state, ref, packed)
abstract = state_lib.abstract_state(model_cfg, optim_lib.make_optimizer(config.optim), 1)
place = loop._Placement(config, model_cfg, abstract)
assert place.sharded and dict(place.mesh.shape)["data"] == 2
rv = place.put_variables(ref)
s2, m2 = place.jit(step_fn, rv, packed)(jax.device_put(state, place.state), rv, place.put_batch(packed))
for k in m1:
  np.testing.assert_allclose(float(m2[k]), float(m1[k]), rtol=1e-5, atol=1e-6, err_msg=k)
jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6),
             s1.params, s2.params)
print("MESH OK", sorted({{str(x.sharding.spec) for x in jax.tree.leaves(s2.params)}})[:3])
"""


def test_step_on_a_two_device_mesh_equals_one_device():
  # data=2 mesh (config.mesh.data=-1 over 2 fake CPU devices): state, reference and batch rows
  # placed by the rules; the sharded step gives the single-device metrics and params
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.run([sys.executable, "-c", _MESH_CHECK.format(root=ROOT)], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and "MESH OK" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize("env", ["calculator", "humaneval", "pycode", "pyrepo"])
def test_default_env_options_build_every_environment(env):
  """config.rl.env_options of the RL configs holds placeholders, so switching config.rl.env alone
  gives a working environment (a set option another env lacks would be rejected)."""
  from agentic_jax import envs  # pylint: disable=import-outside-toplevel
  from agentic_jax.data.builtin import calculator  # pylint: disable=import-outside-toplevel
  config = config_lib.load_config(os.path.join(ROOT, "configs", "flow_grpo.py:tiny"))
  make_env, make_tasks = envs.make_env_factory(env, **config.rl.env_options.to_dict())
  tasks = make_tasks(0, 2, split="train")
  assert len(tasks) == 2 and make_env().system_prompt
  if env == "calculator":  # the calculator's default level
    assert make_env().system_prompt == calculator.BASIC_SYSTEM_PROMPT
  with pytest.raises(ValueError, match="config.rl.env_options.level"):
    if env == "calculator":
      envs.make_env_factory(env, level="hard")
    else:
      envs.make_env_factory(env, level="basic")


def test_progress_postfix_every_log_every_steps_and_at_the_last():
  postfix = loop._progress_postfix(5, 2)  # pylint: disable=protected-access
  rec = {"reward_mean": 0.5, "success_rate": 0.25, "kl": 0.00012, "entropy": 1.23456,
         "clip_frac": 0.0, "turns_per_episode": 1.5, "rollout_s": 2.04, "train_s": 0.31}
  assert postfix({"step": 1, **rec}) is None and postfix({"step": 3, **rec}) is None
  assert postfix({"step": 2, **rec}) == {
      "reward": "0.500", "success": "0.250", "kl": "0.0001", "entropy": "1.235", "clip": "0.000",
      "turns": "1.50", "rollout": "2.0s", "train": "0.3s"}
  assert postfix({"step": 5, "kl": None})["kl"] == "n/a"  # the last step, a missing number
