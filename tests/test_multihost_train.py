"""A real two-process training run of launch/train.py on localhost: 2 processes x 4 fake CPU
devices joined by jax.distributed (gloo collectives) run 3 steps (+ a held-out eval) of a
shrunk tiny config on an fsdp 4 x tensor 2 mesh - parameters and optimizer state sharded
ACROSS the two processes - and must equal a one-process 8-device run of the same command.
Then the two-process job is rerun with one more step: it resumes from its own sharded
checkpoint (every process restores its shards, the fingerprint check runs as a collective)
and its 4th loss must equal the 4th step of the one-process run recomputed here."""

from __future__ import annotations

import ast
import json
import os

import numpy as np
import pytest

from tests.launch_fixtures import launch, records, rel, wait_all

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch", "train.py")

# configs/midtrain.py:tiny shrunk on the command line: synthetic rows (process-count
# invariant), batch 8 x 32, a 1-layer ScMoE model; one record per step, an eval at the end.
ARGS = [
    f"--config={os.path.join(ROOT, 'configs', 'midtrain.py')}:tiny", "--compile_cache=",
    "--config.data.synthetic=True", "--config.data.batch_size=8",
    "--config.data.seq_len=32", "--config.train.num_steps=3", "--config.train.log_every=1",
    "--config.train.progress=False",
    "--config.train.eval_every=3", "--config.train.eval_batches=1", "--config.checkpoint.every=1000",
    "--config.optim.warmup_steps=1", "--config.optim.lr=0.01",
    "--config.mesh.fsdp=4", "--config.mesh.tensor=2",
    "--config.model.vocab_size=128", "--config.model.hidden_size=32", "--config.model.num_layers=1",
    "--config.model.num_attention_heads=2", "--config.model.q_lora_rank=16",
    "--config.model.kv_lora_rank=16", "--config.model.qk_nope_head_dim=8",
    "--config.model.qk_rope_head_dim=8", "--config.model.v_head_dim=8",
    "--config.model.intermediate_size=64", "--config.model.n_routed_experts=4",
    "--config.model.zero_expert_num=2", "--config.model.moe_intermediate_size=16",
    "--config.model.max_position_embeddings=64", "--config.model.dropless_block_size=16",
]


def _two_process(workdir, *extra):
  return launch(LAUNCH, [*ARGS, *extra], workdir, processes=2, cwd=ROOT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("multihost")
  two_dir, one_dir = str(tmp / "two"), str(tmp / "one")
  two = _two_process(two_dir)
  one, = launch(LAUNCH, ARGS, one_dir, cwd=ROOT)
  logs = wait_all([("process 0", two[0]), ("process 1", two[1]), ("single", one)])
  first = (records(two_dir), records(one_dir))
  # The same two-process command with one more step: resumes from the step-3 checkpoint.
  resumed = wait_all(list(zip(("resumed 0", "resumed 1"),
                           _two_process(two_dir, "--config.train.num_steps=4",
                                        "--config.train.eval_every=0"))))
  return {"two_dir": two_dir, "one_dir": one_dir, "logs": logs, "first": first,
          "resumed_logs": resumed, "resumed": records(two_dir)}


def test_two_process_losses_equal_one_process(runs):
  two, one = runs["first"]
  assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3]
  for a, b in zip(two, one):
    for key in ("loss", "grad_norm", "accuracy", "moe/zero_expert_share"):
      assert rel(a[key], b[key]) <= 1e-5, (a["step"], key, a[key], b[key])
  losses = [r["loss"] for r in one]
  assert len(set(losses)) == 3  # three real, different steps
  # An untrained model predicts about uniformly over the 128-token vocabulary.
  assert abs(losses[0] - np.log(128)) < 0.1
  # The held-out eval at the end (rows of a separate synthetic stream) agrees too.
  assert rel(two[-1]["eval_loss"], one[-1]["eval_loss"]) <= 1e-5
  assert two[-1]["eval_weight"] == one[-1]["eval_weight"] > 0


def test_processes_share_the_work_and_only_process_0_reports(runs):
  p0, p1, single = runs["logs"]
  assert "[distributed] 2 processes (explicit); 8 devices, 4 per process" in p0
  assert "process 0 feeds rows [0:4) of 8" in p0  # fsdp 4 x tensor 2: 4 row blocks of 2
  assert "== completed: steps 0->3 of 3" in p0 and "== completed" in single
  # Process 1 prints none of the run's messages (its stdout only carries gloo's connection
  # lines, written from C++ threads, sometimes interleaved mid-line).
  for marker in ("[distributed]", "[data]", "[mesh]", "[model]", "[train]", "== "):
    assert marker in p0 + single and marker not in p1, marker
  summary = json.load(open(os.path.join(runs["two_dir"], "summary.json")))
  assert summary["mesh"] == {"sizes": {"data": 1, "fsdp": 4, "tensor": 2, "expert": 1},
                             "processes": 2, "devices": 8}


def test_checkpoint_written_by_both_processes_restores_on_one_device(runs):
  """The step-3 checkpoint of the two-process run (each process wrote its shards) restores
  in this single-device process and equals the one-process run's checkpoint."""
  import jax  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import optim as optim_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel
  config = _config()
  model_cfg = config_lib.model_config(config.model)
  abstract = state_lib.abstract_state(model_cfg, optim_lib.make_optimizer(config.optim), config.seed)
  states = {}
  for name in ("two_dir", "one_dir"):
    ck = ckpt_lib.Checkpointer(os.path.join(runs[name], "checkpoints"))
    assert 3 in ck.all_steps()
    ck._mgr.reload()  # pylint: disable=protected-access
    states[name] = ck._restore_step(3, abstract, None)[0]  # pylint: disable=protected-access
    ck.close()
  assert int(states["two_dir"].step) == 3
  # atol = lr / 1000: Adam turns a last-bit difference of a near-zero gradient (summed in
  # another order across processes) into an update difference of up to ~lr * 1e-3.
  for a, b in zip(jax.tree.leaves(states["two_dir"]), jax.tree.leaves(states["one_dir"])):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=1e-5, atol=1e-5)


def test_two_process_resume_continues_the_run(runs):
  p0, _ = runs["resumed_logs"]
  assert "resumed from step 3" in p0
  recs = runs["resumed"]
  assert [r["step"] for r in recs] == [1, 2, 3, 4]
  assert recs[:3] == runs["first"][0]  # the records up to the checkpoint stay as they were
  # Step 4's loss is the loss of the step-3 params: recompute it on one device here.
  assert rel(recs[3]["loss"], _step4_loss(runs["one_dir"])) <= 1e-5


def _config():
  from agentic_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.load_config(os.path.join(ROOT, "configs", "midtrain.py") + ":tiny")
  config.unlock()
  for arg in ARGS[2:]:
    key, value = arg[len("--config."):].split("=", 1)
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = ast.literal_eval(value)
  config.lock()
  return config


def _step4_loss(one_dir):
  """Loss of step 4 of the one-process run: its step-3 params on the 4th synthetic batch,
  through the single-device forward of train/eval.py (whose loss is the train metric's
  definition, tests/test_eval.py)."""
  import jax  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import input as input_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import optim as optim_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import eval as eval_lib  # pylint: disable=import-outside-toplevel
  config = _config()
  model_cfg = config_lib.model_config(config.model)
  abstract = state_lib.abstract_state(model_cfg, optim_lib.make_optimizer(config.optim), config.seed)
  ck = ckpt_lib.Checkpointer(os.path.join(one_dir, "checkpoints"))
  state = ck._restore_step(3, abstract, None)[0]  # pylint: disable=protected-access
  ck.close()
  it = input_lib.SyntheticIterator(batch_size=8, seq_len=32, vocab_size=128, seed=config.seed)
  it.set_state({"step": 3, "seed": config.seed})
  eval_step = eval_lib.make_eval_step(model_cfg, num_kinds=1, num_sources=1)
  return float(jax.jit(eval_step)(state.params, state.router_state, next(it))["loss"])
