"""launch/train.py on the expert mesh fsdp 2 x tensor 2 x expert 2, as one process with 8 CPU
devices and as two processes x 4 devices (jax.distributed, gloo), with the BUILT-IN agent data
(tokenizer trained by process 0, packed batches): the losses equal the one-device run of the
same command (rel <= 1e-5) for the dropless, capacity (dropping slots) and expert_parallel
dispatch. Then a two-process run whose peer is frozen mid-run ends with the watchdog's
message naming the step and the mesh (exit 3) instead of hanging, and the same command
resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.launch_fixtures import cpu_env, free_port, records, rel, wait_all

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch", "train.py")
MESH = {"data": 1, "fsdp": 2, "tensor": 2, "expert": 2}

# configs/midtrain.py:tiny shrunk: the built-in sources (few samples), batch 8 x 64,
# a 1-layer ScMoE model with zero experts; one record per step.
ARGS = [
    f"--config={os.path.join(ROOT, 'configs', 'midtrain.py')}:tiny", "--compile_cache=",
    "--config.seed=11", "--config.data.tokenizer.vocab_size=512",
    *(f"--config.data.mix.{name}.{key}={n // d}" for name, n in
      (("calculator", 48), ("pyrepo", 24), ("stdlib_edits", 48))
      for key, d in (("num_samples", 1), ("eval_num_samples", 6))),
    "--config.data.batch_size=8", "--config.data.seq_len=64", "--config.train.num_steps=3",
    "--config.train.log_every=1", "--config.train.progress=False",
    "--config.train.eval_every=3", "--config.train.eval_batches=1",
    "--config.checkpoint.every=1000", "--config.optim.warmup_steps=1",
    "--config.model.vocab_size=512", "--config.model.hidden_size=32",
    "--config.model.num_layers=1", "--config.model.num_attention_heads=2",
    "--config.model.q_lora_rank=16", "--config.model.kv_lora_rank=16",
    "--config.model.qk_nope_head_dim=8", "--config.model.qk_rope_head_dim=8",
    "--config.model.v_head_dim=8", "--config.model.intermediate_size=64",
    "--config.model.n_routed_experts=4", "--config.model.zero_expert_num=2",
    "--config.model.moe_intermediate_size=16", "--config.model.max_position_embeddings=64",
    "--config.model.dropless_block_size=16",
]
MESH_ARGS = [f"--config.mesh.{k}={v}" for k, v in MESH.items()]
DISPATCH = {  # name -> overrides; capacity at 0.5 drops slots, expert_parallel at 4 never
    "dropless": [],
    "capacity": ["--config.model.moe_dispatch=capacity", "--config.model.capacity_factor=0.5"],
    "expert_parallel": ["--config.model.moe_dispatch=expert_parallel",
                        "--config.model.capacity_factor=4.0"],
}


def _popen(args, devices):
  return subprocess.Popen([sys.executable, LAUNCH, *args], cwd=ROOT, env=cpu_env(devices),
                          text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _two_process(args):
  port = free_port()
  return [_popen([*args, f"--coordinator_address=localhost:{port}", "--num_processes=2",
                  f"--process_id={i}"], 4) for i in range(2)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("expert_mesh")
  out = {}
  # One device: the reference of dropless and expert_parallel (both exact) and of capacity.
  jobs = [(f"one/{name}", _popen([*ARGS, *DISPATCH[name], f"--workdir={tmp}/one_{name}"], 1))
          for name in ("dropless", "capacity")]
  jobs += [(f"eight/{name}", _popen([*ARGS, *MESH_ARGS, *extra, f"--workdir={tmp}/eight_{name}"], 8))
           for name, extra in DISPATCH.items()]
  wait_all(jobs, timeout=600)
  two = []
  for name in ("dropless", "capacity", "expert_parallel"):
    procs = _two_process([*ARGS, *MESH_ARGS, *DISPATCH[name], f"--workdir={tmp}/two_{name}"])
    two += [(f"two/{name}/{i}", p) for i, p in enumerate(procs)]
  wait_all(two, timeout=600)
  for form in ("one", "eight", "two"):
    for name in DISPATCH:
      path = f"{tmp}/{form}_{name}"
      if os.path.exists(path):
        out[(form, name)] = records(path)
  out["summary"] = json.load(open(f"{tmp}/two_dropless/summary.json"))
  return out


@pytest.mark.parametrize("form", ["eight", "two"])
@pytest.mark.parametrize("name", list(DISPATCH))
def test_expert_mesh_losses_equal_one_device(runs, form, name):
  ref = runs[("one", "capacity" if name == "capacity" else "dropless")]
  got = runs[(form, name)]
  assert [r["step"] for r in got] == [r["step"] for r in ref] == [1, 2, 3]
  for a, b in zip(got, ref):
    for key in ("loss", "grad_norm", "accuracy", "moe/zero_expert_share"):
      assert rel(a[key], b[key]) <= 1e-5, (form, name, a["step"], key, a[key], b[key])
    assert a["moe/dropped_slots"] == b["moe/dropped_slots"]
  assert rel(got[-1]["eval_loss"], ref[-1]["eval_loss"]) <= 1e-5
  assert len({r["loss"] for r in ref}) == 3  # three real, different steps


def test_capacity_case_really_drops(runs):
  assert sum(r["moe/dropped_slots"] for r in runs[("one", "capacity")]) > 0
  assert all(r["moe/dropped_slots"] == 0 for r in runs[("one", "dropless")])


def test_two_process_run_is_on_the_expert_mesh(runs):
  assert runs["summary"]["mesh"] == {"sizes": MESH, "processes": 2, "devices": 8}


def test_frozen_peer_ends_the_run_with_a_named_step_and_nothing_is_lost(tmp_path):
  """Process 1 is frozen (SIGSTOP) after a few steps: process 0 waits in the step's
  collectives, which never complete. With train.step_timeout_s=20 it must end with exit 3
  and one watchdog line naming the step and the mesh; its checkpoints stay readable, and
  the same two-process command resumes from the newest one."""
  workdir = str(tmp_path / "run")
  args = [*ARGS, *MESH_ARGS, f"--workdir={workdir}", "--config.train.num_steps=400",
          "--config.train.eval_every=0", "--config.checkpoint.every=2",
          "--config.train.step_timeout_s=20"]
  p0, p1 = _two_process(args)
  try:
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and p0.poll() is None:
      if os.path.exists(metrics) and open(metrics).read().count("\n") >= 4:  # complete lines
        break
      time.sleep(0.5)
    assert p0.poll() is None, p0.communicate()[1][-3000:]
    p1.send_signal(signal.SIGSTOP)
    t0 = time.monotonic()
    _, err = p0.communicate(timeout=300)
    waited = time.monotonic() - t0
  finally:
    for p in (p0, p1):
      if p.poll() is None:
        p.kill()
      p.communicate()
  assert p0.returncode == 3, err[-3000:]
  assert waited < 120
  lines = [l for l in err.splitlines() if l.startswith("[watchdog]")]
  assert len(lines) == 1, err[-3000:]
  assert "did not finish within 20 s on mesh {'data': 1, 'fsdp': 2, 'tensor': 2, 'expert': 2} " \
         "over 2 process(es) (this is process 0)" in lines[0]
  assert lines[0].startswith("[watchdog] step ") or "checkpoint" in lines[0]
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps and steps[-1] >= 2
  assert f"The newest complete checkpoint is step {steps[-1]} in " in lines[0]
  # Resume: the same command (fresh processes) continues from the newest complete checkpoint.
  resume = [a for a in args if not a.startswith("--config.train.num_steps")]
  procs = _two_process([*resume, f"--config.train.num_steps={steps[-1] + 2}"])
  outs = []
  for p in procs:
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    outs.append(out)
  assert f"resumed from step {steps[-1]}" in outs[0]
  assert f"== completed: steps {steps[-1]}->{steps[-1] + 2}" in outs[0]
