"""The RA3 job across processes and on a mesh (rl/ra3.py, "Devices and processes"): a shrunk
configs/ra3.py:tiny (one round: an E-phase of 2 updates on 8 one-operation programs, a 2-step
M-phase) run by launch/train.py

  * on 2 processes x 4 fake CPU devices joined by jax.distributed (gloo collectives), every
    phase on an fsdp 4 x tensor 2 mesh (params and optimizer state split across the two
    processes; the E-phase's annotate / score decoders and its RL update on the mesh), and
  * on 1 process x 8 devices with the same meshes,

must give the same E-phase metrics (returns and the update's norms rel <= 1e-5, think rates
exactly), the same chosen annotations (WORKDIR/ra3/round_1/data.jsonl byte for byte) and the
same M-phase losses; only process 0 prints. Both start from the base model that a
1-process 1-device run of the same job trains first (init_from; its base corpus has a rationale
before every block, so the base model writes some and the E-step has choices to make), and that
run's E-phase (one device, the unsharded path) must agree with the 8-device one: sharding
changes nothing. The held-out action NLL (its annotate and score decoders) runs in these two,
on one device and on the 8-device mesh, and must agree too; the two-process run has no
held-out programs, so no evaluation (its compilations would add half the test's time). pass@1
(the sandbox, Sampler) is off: the tiny model passes nothing.

The RL loss is compared on the scale of its terms: it is -mean(A * ratio) with group-centred
advantages A, so it is a small difference of terms of size |A| ~ 3 (here ~1e-2) and a
different reduction order (another partitioning, or gloo's cross-process sums) moves it by
~1e-6 absolute, rel ~1e-4; |loss - loss'| <= 1e-5 mean|A| is the rel 1e-5 of its terms."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.launch_fixtures import cpu_env, free_port, records, rel, wait_all
from tests.train_fixtures import SMALL_MODEL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch", "train.py")

MODEL = {**SMALL_MODEL, "vocab_size": 340, "max_position_embeddings": 128}
ARGS = [
    f"--config={os.path.join(ROOT, 'configs', 'ra3.py')}:tiny", "--compile_cache=",
    "--config.ra3_data.num_programs=8", "--config.ra3_data.num_base_programs=16",
    "--config.ra3_data.min_ops=1", "--config.ra3_data.max_ops=1",
    "--config.ra3_data.vocab_size=340", "--config.ra3_data.base_rationale_rate=1.0",
    "--config.ra3.arms=('ra3',)", "--config.ra3.rounds=1", "--config.ra3.estep_steps=2",
    "--config.ra3.proposals=4", "--config.ra3.max_rationale_len=3",
    "--config.estep.rl.seq_len=128", "--config.estep.rl.row_bucket=8",
    "--config.eval.tasks=0", "--config.eval.humaneval=False",
    "--config.base.train.num_steps=80", "--config.mstep.train.num_steps=2",
] + [f"--config.{s}.{k}" for s in ("base", "mstep") for k in (
    *(f"model.{k}={v}" for k, v in MODEL.items()), "data.batch_size=4", "data.seq_len=128",
    "train.log_every=1", "train.progress=False", "optim.warmup_steps=1",
    "checkpoint.every=1000")]
EVAL = ["--config.ra3_data.num_heldout=2"]  # the held-out action NLL only
NO_EVAL = ["--config.ra3_data.num_heldout=0"]
# every mesh of the job: 8 devices as fsdp 4 x tensor 2 (4 batch shards)
MESH = [f"--config.{s}.mesh.{k}" for s in ("base", "mstep", "estep")
        for k in ("data=1", "fsdp=4", "tensor=2")]
ESTEP_CLOSE = ("return", "return_chosen", "sampled/log_likelihood", "chosen/log_likelihood",
               "rl/grad_norm", "rl/entropy")
ESTEP_SAME = ("chosen/think_rate", "sampled/think_rate", "chosen/num_new", "rl/policy_tokens")
ESTEP_LOSSES = ("rl/loss", "rl/pg_loss")  # on the scale of the advantages (module docstring)


def _estep(workdir) -> list[dict]:
  return records(os.path.join(workdir, "ra3", "round_1", "estep"))


def _annotations(workdir) -> str:
  with open(os.path.join(workdir, "ra3", "round_1", "data.jsonl")) as f:
    return f.read()


def _summary(workdir) -> dict:
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def _close(a: dict, b: dict, keys, where: str) -> None:
  for key in keys:
    assert rel(a[key], b[key]) <= 1e-5, (where, key, a[key], b[key])


def _same_e_phase(a: list[dict], b: list[dict]) -> None:
  assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
  for ra, rb in zip(a, b):
    where = f"E-step {ra['step']}"
    _close(ra, rb, ESTEP_CLOSE, where)
    for key in ESTEP_SAME:
      assert ra[key] == rb[key], (where, key, ra[key], rb[key])
    for key in ESTEP_LOSSES:
      assert abs(ra[key] - rb[key]) <= 1e-5 * rb["rl/adv_abs_mean"], (where, key, ra[key], rb[key])
  # a real E-step: rationales sampled and chosen, the policy updated
  assert all(r["sampled/think_rate"] > 0 and r["rl/train_tokens"] > 0 for r in b)
  assert any(r["chosen/think_rate"] > 0 for r in b)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("ra3_multihost")
  ref, two, one = (str(tmp / n) for n in ("ref", "two", "one"))
  # the reference: the whole job on one device (data, tokenizer, base model, E, M, eval)
  wait_all([("one device", subprocess.Popen(
      [sys.executable, LAUNCH, *ARGS, *EVAL, f"--workdir={ref}"], cwd=ROOT, env=cpu_env(1),
      text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))], timeout=600)
  start = [*ARGS, *MESH, f"--config.init_from={os.path.join(ref, 'base')}"]
  port = free_port()
  procs = [subprocess.Popen(
      [sys.executable, LAUNCH, *start, *NO_EVAL, f"--workdir={two}",
       f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=ROOT, env=cpu_env(4), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
      for i in range(2)]
  procs.append(subprocess.Popen([sys.executable, LAUNCH, *start, *EVAL, f"--workdir={one}"],
                                cwd=ROOT, env=cpu_env(8), text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE))
  logs = wait_all(list(zip(("process 0", "process 1", "single"), procs)), timeout=600)
  return {"ref": ref, "two": two, "one": one, "logs": logs}


def test_two_processes_equal_one_process(runs):
  two, one = runs["two"], runs["one"]
  _same_e_phase(_estep(two), _estep(one))
  # the chosen annotations, as the M-phase reads them
  assert _annotations(two) == _annotations(one)
  assert "<|think|>" in _annotations(one)  # rationales were written (not only the expert text)
  ma, mb = (records(os.path.join(w, "ra3", "round_1", "mstep")) for w in (two, one))
  assert [r["step"] for r in ma] == [r["step"] for r in mb] == [1, 2]
  for ra, rb in zip(ma, mb):
    _close(ra, rb, ("loss", "grad_norm"), f"M-step {ra['step']}")
  sa, sb = _summary(two), _summary(one)
  assert sa["status"] == sb["status"] == "completed"
  assert sa["ra3"]["rounds"][0]["estep"]["chosen/think_rate"] == (
      sb["ra3"]["rounds"][0]["estep"]["chosen/think_rate"])
  # the E-phase ran on the mesh across both processes; only process 0 prints the job's lines
  assert "[ra3] E-phase 1 on mesh" in runs["logs"][0] and "over 2 process(es)" in runs["logs"][0]
  assert "[ra3] E-phase 1 step 2/2" in runs["logs"][0]
  assert "[ra3]" not in runs["logs"][1] and "== ra3" not in runs["logs"][1]


def test_one_device_e_phase_equals_the_sharded_one(runs):
  ref, one = runs["ref"], runs["one"]
  _same_e_phase(_estep(ref), _estep(one))
  assert _annotations(ref) == _annotations(one)
  sa, sb = _summary(ref), _summary(one)
  for name in ("base", "ra3"):
    _close(sa[name], sb[name], ("action_nll", "action_nll_plain"), f"eval {name}")
    for key in ("think_rate", "rationale_len", "action_tokens"):
      assert sa[name][key] == sb[name][key], (name, key, sa[name][key], sb[name][key])
