"""Memory planner: hand-derived numbers, the 560B preset from shapes only, the CLI, and the
planner's state bytes == the bytes each of 8 fake devices really holds (subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from agentic_jax import models, parallel
from agentic_jax.parallel import memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAN = [sys.executable, os.path.join(ROOT, "launch", "plan.py")]


def test_per_device_bytes_by_hand():
  x = jax.ShapeDtypeStruct((128, 64), jnp.float32)
  sizes = {"data": 2, "fsdp": 2, "tensor": 2}
  assert parallel.per_device_bytes(x, P("tensor", "fsdp"), sizes) == 128 * 64 * 4 // 4
  assert parallel.per_device_bytes(x, P(None, ("data", "fsdp")), sizes) == 128 * 64 * 4 // 4
  assert parallel.per_device_bytes(x, P(), sizes) == 128 * 64 * 4


def test_replicated_params_are_the_whole_model():
  cfg = models.presets.get("youtu_llm_tiny")  # dense: no router state
  state = memory.state_bytes(cfg, {"data": 8})
  n = models.count_params(cfg)
  assert state["params"] == state["gradients"] == 4 * n
  assert state["optimizer"] == 2 * 4 * n + 4  # mu, nu (f32) and the int32 step count
  assert "grad accum" not in state
  assert memory.state_bytes(cfg, {"data": 8}, grad_accum=4)["grad accum"] == 4 * n


def test_full_longcat_flash_plan_from_shapes_by_hand():
  """560B on data 8 x fsdp 32 x expert 16: every routed-expert array is split 16 x 32 = 512
  ways, every other parameter exactly 32 ways (embed or a latent rank over fsdp; tensor = 1),
  and the router bias (28 layers x 768 slots, f32) is replicated."""
  cfg = models.presets.get("longcat_flash")
  start = time.time()
  state = memory.state_bytes(cfg, {"data": 8, "fsdp": 32, "expert": 16})
  assert time.time() - start < 30
  experts = 28 * 512 * 3 * 6144 * 2048
  total = models.count_params(cfg)
  assert total == 560_664_958_976
  want_params = 4 * (experts // 512 + (total - experts) // 32)
  assert state["gradients"] == want_params
  assert state["params"] == want_params + 28 * 768 * 4
  assert state["optimizer"] == 2 * want_params + 4


def test_activation_estimate_by_hand():
  # remat "full" keeps only each layer's input: layers * tokens * d * bytes.
  cfg = models.presets.get("longcat_flash_tiny", remat_policy="full")
  act = memory.activation_bytes(cfg, {"data": 1}, batch_per_device=2, seq_len=8)
  assert act["saved"] == 2 * 16 * 64 * 4
  # logits (f32) + their gradient, plus the embedding output: 16 tokens * (2*128*4 + 64*4).
  assert act["logits+embed"] == 16 * (2 * 128 * 4 + 64 * 4)
  act_tp = memory.activation_bytes(cfg, {"tensor": 2}, batch_per_device=2, seq_len=8)
  assert act_tp["logits+embed"] == 16 * (2 * 64 * 4 + 64 * 4)  # vocab split over tensor
  assert act_tp["recompute peak"] < act["recompute peak"]  # heads / FFN width split too
  # Without remat nothing is recomputed and every layer keeps everything.
  none = memory.activation_bytes(cfg.replace(remat_policy="none"), {"data": 1},
                                 batch_per_device=2, seq_len=8)
  assert none["recompute peak"] == 0
  # 2 layers, each its full set (= the one-layer recompute peak) plus its input.
  assert none["saved"] == pytest.approx(2 * act["recompute peak"] + act["saved"], abs=2)
  dots = memory.activation_bytes(cfg.replace(remat_policy="dots"), {"data": 1},
                                 batch_per_device=2, seq_len=8)
  assert act["saved"] < dots["saved"] < none["saved"]


def test_per_device_batch():
  sizes = {"data": 2, "fsdp": 2, "tensor": 2, "expert": 4}
  assert memory.per_device_batch(64, sizes, grad_accum=2) == 2  # 64 / (2*2*4) / 2
  with pytest.raises(ValueError, match="does not split"):
    memory.per_device_batch(24, sizes)


def test_plan_fits_verdict():
  cfg = models.presets.get("longcat_flash_tiny")
  plan = memory.plan_memory(cfg, {"data": 1}, batch_per_device=1, seq_len=16,
                            device_memory_gib=1e-3, reserve=0.5)
  assert plan.total == sum(b for _, b, _ in plan.rows)
  assert plan.usable_bytes == int(1e-3 * 1024 ** 3 * 0.5)
  assert plan.fits is False and "DOES NOT FIT" in plan.table()
  assert memory.plan_memory(cfg, {"data": 1}, batch_per_device=1, seq_len=16).fits is None


# -------------------------------------------------------------------- CLI


def _plan(*args, timeout=120):
  return subprocess.run(PLAN + list(args), cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_cli_full_preset_json():
  r = _plan("--model=longcat_flash", "--mesh=data:8,fsdp:32,expert:16", "--per_device_batch=1",
            "--seq_len=4096", "--device_memory_gib=80", "--json")
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout)
  assert out["mesh"] == {"data": 8, "fsdp": 32, "tensor": 1, "expert": 16}
  assert out["total"] == sum(out["bytes"].values())
  assert out["bytes"]["params"] == memory.state_bytes(
      models.presets.get("longcat_flash"), out["mesh"])["params"]
  assert out["fits"] is True


def test_cli_with_training_config():
  r = _plan("--config=configs/midtrain.py:longcat_flash", "--mesh=data:8,fsdp:32,expert:16")
  assert r.returncode == 0, r.stderr
  assert "data=8 x fsdp=32 x expert=16 (4096 devices)" in r.stdout
  assert "note: config data.batch_size" in r.stdout  # 1024 rows cannot cover 4096 shards
  assert "FITS" in r.stdout
  r = _plan("--config=configs/midtrain.py:tiny", "--num_devices=8", "--per_device_batch=2",
            "--config.model.remat_policy=dots")
  assert r.returncode == 0, r.stderr
  assert "remat=dots" in r.stdout


def test_cli_errors():
  r = _plan("--model=longcat_flash_tiny", "--mesh=data:3,tensor:0", "--per_device_batch=1")
  assert r.returncode == 2 and "--mesh.tensor" in r.stderr
  r = _plan("--model=longcat_flash_tiny", "--mesh=expert:3", "--per_device_batch=1")
  assert r.returncode == 2 and "'expert', size 4" in r.stderr
  r = _plan("--mesh=data:2", "--per_device_batch=1")
  assert r.returncode == 2 and "--model" in r.stderr
  r = _plan("--model=deepseek_v3_tiny", "--mesh=data:2", "--per_device_batch=1",
            "--device_memory_gib=0.00001")
  assert r.returncode == 1 and "DOES NOT FIT" in r.stdout


def test_cli_config_errors_are_one_line():
  # a mistyped config key was a KeyError traceback here (launch/train.py already caught it)
  r = _plan("--config=configs/midtrain.py:tiny", "--config.modle.x=1", "--num_devices=8")
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
  assert r.stderr.strip().splitlines() == [r.stderr.strip()]
  assert "--config.modle.x" in r.stderr and 'Did you mean "model"' in r.stderr
  r = _plan("--config=configs/midtrain.py:bogus")
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert "unknown variant 'bogus'" in r.stderr


# ------------------------------------------------------ against real arrays


def test_plan_equals_bytes_on_devices():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8 "
                       "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
  r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "planner_worker.py")], cwd=ROOT,
                     env=env, capture_output=True, text=True, timeout=400)
  lines = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
  assert r.returncode == 0 and lines, r.stderr[-5000:]
  cases = json.loads(lines[-1][len("RESULT "):])["cases"]
  assert len(cases) == 2
  for case in cases:
    plan, actual = case["plan"], case["actual"]
    # Every split is even, so all 8 devices hold the same number of bytes.
    for key in actual:
      assert len(set(actual[key])) == 1, (case["preset"], key, actual[key])
    assert plan["params"] == actual["params"][0], case
    assert plan["optimizer"] == actual["optimizer"][0], case
    assert plan["gradients"] == actual["trainable"][0], case


# ------------------------------------------------------------- RL jobs


def test_rl_plan_by_hand():
  """The RL plan's rows: params, the reference (a copy of the variables), AdamW state; the
  decode cache of ceil(rollout rows / batch shards) rows; the update's activations of one
  minibatch; the total = the rows of no phase + the largest phase."""
  cfg = models.presets.get("longcat_flash_tiny")
  mesh = {"data": 2, "fsdp": 2}
  plan = memory.plan_rl_memory(cfg, mesh, step_rows=16, minibatches=2, seq_len=32,
                               rollout_rows=10, prompt_len=16, cache_len=24)
  state = memory.state_bytes(cfg, mesh)
  assert plan.bytes_of("reference") == plan.bytes_of("params") == state["params"]
  assert plan.bytes_of("optimizer") == state["optimizer"]
  assert plan.bytes_of("gradients") == state["gradients"]
  # the decoder's rows are replicated (rl/sampler.py): every device holds all 10 rows' cache
  assert plan.bytes_of("decode cache") == memory.decode_cache_bytes(cfg, 10, 24)
  assert plan.bytes_of("prefill") == memory.forward_bytes(cfg, mesh, batch_per_device=10,
                                                          seq_len=16, last_logits_only=True)
  split = memory.plan_rl_memory(cfg, mesh, step_rows=16, minibatches=2, seq_len=32,
                                rollout_rows=10, prompt_len=16, cache_len=24, rollout_shards=4)
  assert split.bytes_of("decode cache") == memory.decode_cache_bytes(cfg, 3, 24)  # ceil(10 / 4)
  act = memory.activation_bytes(cfg, mesh, batch_per_device=2, seq_len=32)  # 16 / (4 x 2)
  assert plan.bytes_of("act saved") == act["saved"]
  assert plan.bytes_of("logits+embed") == act["logits+embed"]
  # the reference forward runs one minibatch's rows at a time (rl/step.py's chunks), without
  # a backward pass: 16 rows / (4 batch shards x 2 chunks) = 2 rows per device
  assert plan.bytes_of("ref forward") == memory.forward_bytes(cfg, mesh, batch_per_device=2,
                                                              seq_len=32)
  one = memory.plan_rl_memory(cfg, mesh, step_rows=16, minibatches=1, seq_len=32,
                              rollout_rows=10, prompt_len=16, cache_len=24)
  assert one.bytes_of("ref forward") == memory.forward_bytes(cfg, mesh, batch_per_device=4,
                                                             seq_len=32)
  # expert-parallel: the reference's all-to-all carries one chunk's tokens, 2 rows x 32
  ep = cfg.replace(moe_dispatch="expert_parallel")
  ep_mesh = {"data": 2, "expert": 2}
  ep_plan = memory.plan_rl_memory(ep, ep_mesh, step_rows=16, minibatches=2, seq_len=32,
                                  rollout_rows=10, prompt_len=16, cache_len=24)
  assert ep_plan.bytes_of("a2a reference") == memory.exchange_bytes(ep, ep_mesh, 2 * 32) > 0
  phases = plan.phase_bytes()
  assert set(phases) == {"rollout", "reference", "update"}
  always = sum(plan.bytes_of(n) for n in ("params", "reference", "optimizer", "fsdp gather"))
  assert plan.total == always + max(phases.values()) < sum(b for _, b, _ in plan.rows)
  assert plan.peak_phase == max(phases, key=phases.get)
  assert "[update]" in plan.table() and "peak: " in plan.table()
  with pytest.raises(ValueError, match="do not split into 4 minibatches over 4 batch shards"):
    memory.plan_rl_memory(cfg, mesh, step_rows=8, minibatches=4, seq_len=32, rollout_rows=8,
                          prompt_len=16, cache_len=24)


def test_forward_bytes_by_hand():
  """A forward without gradient: one layer's set with the scores over one key block
  (chunked attention), the residual stream and embedding output, f32 logits per token."""
  cfg = models.presets.get("youtu_llm_tiny", attention_impl="chunked", attention_chunk_size=8,
                           dtype="float32")
  n = 2 * 32
  layer = sum(memory._per_token_terms(cfg, 8, 1)["dense"].values())  # pylint: disable=protected-access
  want = n * (layer + 2 * 4 * cfg.hidden_size + 4 * cfg.vocab_size)
  assert memory.forward_bytes(cfg, {"data": 1}, batch_per_device=2, seq_len=32) == int(want)
  xla = cfg.replace(attention_impl="xla")  # scores over the whole row
  assert (memory.forward_bytes(xla, {"data": 1}, batch_per_device=2, seq_len=32)
          > memory.forward_bytes(cfg, {"data": 1}, batch_per_device=2, seq_len=32))
  # a prefill's head on the last position only: logits of 2 rows, not 2 x 32 tokens
  last = n * (layer + 2 * 4 * cfg.hidden_size) + 2 * 4 * cfg.vocab_size
  assert memory.forward_bytes(cfg, {"data": 1}, batch_per_device=2, seq_len=32,
                              last_logits_only=True) == int(last)


def test_gathered_module_is_the_largest_layer_or_head():
  ep = models.presets.get("longcat_flash", moe_dispatch="expert_parallel")
  assert memory.gathered_module_bytes(ep, {"data": 8, "expert": 8}) == 0  # nothing gathered
  # one scmoe layer: the routed experts split over expert and tensor (expert_mlp), the rest
  # over tensor (heads, FFN width) or whole; no more than the two dense FFNs and the MLAs
  got = memory.gathered_module_bytes(ep, {"fsdp": 16, "tensor": 4, "expert": 8})
  experts = 28 * 512 * 3 * 6144 * 2048 * 4 // 28 // (8 * 4)
  assert experts < got < experts + 2 * 3 * 6144 * 12288 * 4 // 4 + 10 ** 9
  # the other dispatches hold every expert's weights on each device (models/moe_mesh.py)
  dropless = models.presets.get("longcat_flash")
  assert dropless.moe_dispatch == "dropless"
  experts_whole = 512 * 3 * 6144 * 2048 * 4
  assert memory.gathered_module_bytes(dropless, {"data": 8, "expert": 8}) == experts_whole
  whole = memory.gathered_module_bytes(dropless, {"fsdp": 16, "tensor": 4, "expert": 8})
  assert whole - got == experts_whole // 4 - experts


def test_exchange_bytes_by_hand():
  cfg = models.presets.get("longcat_flash", moe_dispatch="expert_parallel", capacity_factor=2.0)
  # m = 100 tokens, K = 12 slots: C = ceil(2 * 1200 / 8) = 300 rows per destination, sent and
  # received, d = 6144 values of bf16
  assert memory.exchange_bytes(cfg, {"expert": 8}, 100) == 2 * 8 * 300 * 6144 * 2
  assert memory.exchange_bytes(cfg, {"expert": 8}, 100, capacity_factor=8.0) == (
      2 * 8 * 1200 * 6144 * 2)  # C = m K: never drops
  assert memory.exchange_bytes(cfg, {"fsdp": 8}, 100) == 0  # no expert axis
  assert memory.exchange_bytes(cfg.replace(moe_dispatch="dropless"), {"expert": 8}, 100) == 0


# The pods the full-size RL configs are sized for (configs/flow_grpo.py): the accelerator each
# is documented with in README.md.
RL_PODS = {"youtu_llm": "h100", "longcat_flash": "v5p"}


@pytest.mark.parametrize("name", ["flow_grpo", "grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("variant", sorted(RL_PODS))
def test_cli_full_rl_configs_fit_their_pods(name, variant):
  r = _plan(f"--config=configs/{name}.py:{variant}", f"--accelerator={RL_PODS[variant]}",
            "--json")
  assert r.returncode == 0, r.stdout + r.stderr
  out = json.loads(r.stdout)
  assert out["fits"] is True and out["device_bytes"] == int(
      memory.ACCELERATORS[RL_PODS[variant]] * 1024 ** 3)
  b = out["bytes"]
  assert b["reference"] == b["params"] > 0 and b["decode cache"] > 0 and b["ref forward"] > 0
  assert out["total"] == (b["params"] + b["reference"] + b["optimizer"] + b["fsdp gather"]
                          + max(out["phases"].values()))
  assert out["rollout_split"] == "batch"
  if variant == "longcat_flash":  # the expert-parallel exchange is planned in every phase
    assert b["a2a rollout"] > 0 and b["a2a reference"] > 0 and b["a2a update"] > 0
  # every episode fills a row of its own (the most rows a step can pack): one per episode
  assert out["step_rows"] % (out["batch_shards"] * out["minibatches"]) == 0
  if name == "flow_grpo":
    _check_worst_case_packing(f"configs/{name}.py:{variant}", out["step_rows"])


def _check_worst_case_packing(config_name, step_rows):
  """pack_batch of tasks_per_step x group_size transcripts that each fill a row packs exactly
  the planner's step_rows (whole groups per minibatch, padded to row_bucket)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from agentic_jax.rl import step as step_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  rl = config_lib.load_config(os.path.join(ROOT, config_name)).rl
  n, t = rl.tasks_per_step * rl.group_size, rl.seq_len
  full = np.ones((n, t), np.int32)
  mask = np.zeros((n, t), np.float32)
  mask[:, t - rl.max_new_tokens:t - 1] = 1.0  # one policy turn at the end of each transcript
  batch = {"inputs": full, "targets": full, "positions": np.broadcast_to(np.arange(t), (n, t)),
           "segment_ids": full, "mask": mask, "old_logp": np.zeros((n, t), np.float32),
           "group_id": np.repeat(np.arange(rl.tasks_per_step), rl.group_size),
           "traj_id": np.arange(n), "turn_index": np.zeros(n, np.int32),
           "rewards": np.zeros(n, np.float32), "truncated": np.zeros(n, bool),
           "sample_mask": np.ones(n, bool), "response_len": np.full(n, rl.max_new_tokens - 1)}
  packed, stats = step_lib.pack_batch(batch, seq_len=t, sample_by="turn",
                                      sample_len=rl.max_new_tokens, row_bucket=rl.row_bucket,
                                      sample_bucket=rl.sample_bucket, minibatches=rl.minibatches,
                                      whole_groups=True)
  assert packed["inputs"].shape == (step_rows, t), (packed["inputs"].shape, step_rows, stats)


def test_cli_rl_too_small_mesh_does_not_fit():
  """The same batch on too few devices is reported as not fitting, exit 1: Youtu-LLM on 2
  (tensor 2: each holds 4 times the rollout), LongCat-Flash on 256 (twice the state and rows
  per device)."""
  for config, mesh, accel in (("youtu_llm", "tensor:2", "h100"),
                              ("longcat_flash", "fsdp:4,tensor:8,expert:8", "v5p")):
    r = _plan(f"--config=configs/flow_grpo.py:{config}", f"--mesh={mesh}",
              f"--accelerator={accel}")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "DOES NOT FIT" in r.stdout and "[reference]" in r.stdout


def test_cli_rl_errors():
  r = _plan("--config=configs/flow_grpo.py:youtu_llm", "--per_device_batch=2")
  assert r.returncode == 2 and "does not apply to an RL config" in r.stderr
  r = _plan("--config=configs/flow_grpo.py:youtu_llm", "--accelerator=h100",
            "--device_memory_gib=40")
  assert r.returncode == 2 and "not both" in r.stderr
  r = _plan("--config=configs/flow_grpo.py:youtu_llm", "--accelerator=tpu9")
  assert r.returncode == 2 and "unknown" in r.stderr and "v5p" in r.stderr
  # a mesh the config's row bucket does not split over: the RL check's own message
  r = _plan("--config=configs/flow_grpo.py:youtu_llm", "--mesh=fsdp:16")
  assert r.returncode == 2 and "config.rl.row_bucket" in r.stderr


def test_cli_rl_rollout_split():
  """The rollout rows are planned split over the batch shards (rl/sampler.py's default):
  LongCat-Flash's 64 rows over 64 shards hold 1 row's cache each; --rollout_split=replicated
  plans all of them on every device."""
  args = ("--config=configs/flow_grpo.py:longcat_flash", "--accelerator=v5p", "--json")
  rep, split = (json.loads(_plan(*args, *extra).stdout)
                for extra in (("--rollout_split=replicated",), ()))
  assert split["rollout_split"] == "batch" and split["batch_shards"] == 64
  assert 63 * split["bytes"]["decode cache"] < rep["bytes"]["decode cache"] < (
      64 * split["bytes"]["decode cache"])
  assert split["phases"]["rollout"] < rep["phases"]["rollout"]
