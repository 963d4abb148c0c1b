"""agentic_jax/rl/ra3.py on a shrunk configs/ra3.py:tiny (1-layer model, a few steps per phase):
the job runs both arms and writes the summary the README promises; both arms train the same
number of tokens; a run stopped in the middle and rerun gives exactly the uninterrupted result;
the job in a gs:// workdir (fake GCS) gives the local results;
RA3 with c = inf is next-token training (the same M-phases and metrics as the ntp arm); bad
config values are named before anything runs."""

from __future__ import annotations

import json
import math
import os

import pytest

from agentic_jax import fs, jobs
from agentic_jax.rl import ra3
from agentic_jax.train import config as config_lib
from tests.gcs_fixtures import gcs  # noqa: F401  (the fake GCS fixture)
from tests.train_fixtures import ROOT, SMALL_MODEL

METRICS = ("action_nll", "action_nll_plain", "pass_at_1", "pass_at_1_sampled", "think_rate")


def small_ra3(**over):
  config = config_lib.load_config(os.path.join(ROOT, "configs", "ra3.py:tiny"))
  config.unlock()
  d = config.ra3_data
  d.num_programs, d.num_base_programs, d.num_heldout, d.min_ops, d.max_ops = 12, 24, 4, 2, 2
  d.vocab_size = 340
  for m in (config.base, config.mstep):
    for k, v in {**SMALL_MODEL, "vocab_size": 340, "max_position_embeddings": 128}.items():
      m.model[k] = v
    m.data.batch_size, m.data.seq_len = 2, 128
    m.train.log_every, m.train.progress = 1, False
    m.optim.warmup_steps = 1
    m.checkpoint.every = 2
  config.base.train.num_steps = 4
  config.mstep.train.num_steps = 3
  r = config.ra3
  r.rounds, r.estep_steps, r.proposals, r.max_rationale_len = 2, 2, 2, 3
  config.estep.rl.seq_len = 128
  v = config.eval
  v.tasks, v.samples, v.max_new_tokens, v.humaneval = 2, 1, 40, False
  for key, value in over.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  config.lock()
  return config


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("ra3_full"))
  return wd, ra3.run(small_ra3(), wd, handle_signals=False)


def test_job_runs_both_arms_and_writes_the_summary(full_run):
  wd, s = full_run
  assert s["status"] == "completed" and s["job"] == "ra3"
  with open(os.path.join(wd, "summary.json")) as f:
    on_disk = json.load(f)
  for arm in ("ra3", "ntp", "base"):
    for k in METRICS:
      assert isinstance(on_disk[arm][k], float), (arm, k)
    assert 0.0 <= on_disk[arm]["pass_at_1"] <= 1.0 and on_disk[arm]["action_nll"] > 0
  # the same training tokens for both arms; the E-phases ran only for ra3
  assert s["ra3"]["train_tokens"] == s["ntp"]["train_tokens"] == 2 * 3 * 2 * 128
  assert [r["round"] for r in s["ra3"]["rounds"]] == [1, 2]
  assert "estep" in s["ra3"]["rounds"][0] and "estep" not in s["ntp"]["rounds"][0]
  assert os.path.exists(os.path.join(wd, "ra3", "round_1", "estep", "checkpoints"))
  assert not os.path.exists(os.path.join(wd, "ntp", "round_1", "estep"))
  # the annotated data is in our schema and renders (the M-phase trained on it)
  with open(os.path.join(wd, "ra3", "round_1", "data.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == 6 and all(r["turns"][0]["role"] == "user" for r in rows)
  # the base model's tokenizer sits beside it, so a later run can start from it (init_from)
  assert os.path.exists(os.path.join(wd, "base", "tokenizer.model"))


def test_a_gcs_workdir_gives_the_local_results(full_run, gcs):
  """The whole job in gs://BUCKET/... (fake GCS, tests/gcs_fixtures.py): data, tokenizer, every
  phase's checkpoints and metrics, the annotated data the M-phases read through the data
  pipeline, the eval caches and the summary go to the bucket, and the results are the local
  run's."""
  _, full = full_run
  wd = f"{gcs}/ra3_job"
  s = ra3.run(small_ra3(), wd, handle_signals=False)
  assert s["status"] == "completed"
  for arm in ("ra3", "ntp", "base"):
    for k in METRICS:
      assert s[arm][k] == full[arm][k], (arm, k)
  assert json.loads(fs.read_text(f"{wd}/summary.json"))["ra3"]["action_nll"] == s["ra3"]["action_nll"]
  assert len(fs.read_text(f"{wd}/ra3/round_1/data.jsonl").splitlines()) == 6
  assert fs.exists(f"{wd}/base/tokenizer.model") and fs.isdir(f"{wd}/ra3/round_2/mstep/checkpoints")


def test_stopped_and_rerun_equals_uninterrupted(full_run, tmp_path):
  _, full = full_run
  wd = str(tmp_path)
  config = small_ra3()
  # 4 base steps + the first E-phase (2 E-steps) + 1 step into the first ra3 M-phase
  first = ra3.run(config, wd, stop_after_steps=7, handle_signals=False)
  assert first["status"] == "stopped"
  again = ra3.run(config, wd, stop_after_steps=2, handle_signals=False)  # stops again
  assert again["status"] == "stopped"
  done = ra3.run(config, wd, handle_signals=False)
  assert done["status"] == "completed"
  for arm in ("ra3", "ntp", "base"):
    for k in METRICS:
      assert done[arm][k] == full[arm][k], (arm, k)
  for arm in ("ra3", "ntp"):
    for got, want in zip(done[arm]["rounds"], full[arm]["rounds"]):
      diff = {k: (got[k], want.get(k)) for k in got if got[k] != want.get(k)}
      if "estep" in diff:
        diff["estep"] = {k: (v, want["estep"].get(k)) for k, v in got["estep"].items()
                         if v != want["estep"].get(k)}
      assert not diff, (arm, diff)


def test_infinite_cost_is_next_token_training(full_run, tmp_path):
  wd0, full = full_run
  config = small_ra3(**{"ra3.c": math.inf, "ra3.arms": ("ra3",),
                        "init_from": os.path.join(wd0, "base")})
  s = ra3.run(config, str(tmp_path), handle_signals=False)
  assert "estep" not in s["ra3"]["rounds"][0]  # c = inf: every decision is "continue"
  for k in METRICS:
    assert s["ra3"][k] == full["ntp"][k], k
  assert [r["mstep"] for r in s["ra3"]["rounds"]] == [r["mstep"] for r in full["ntp"]["rounds"]]


def test_estep_decoded_in_chunks_is_the_same_phase(full_run, tmp_path, monkeypatch):
  """config.estep.decode_batch = 4: each E-step's annotation rows (up to 3 programs x 2
  proposals) decode at most 4 per call, and the E-phase is the full run's (decode_batch 0, one
  call): the same annotated data, the same metrics (the RL update's included). (The tiny
  job's policy rarely thinks; test_ra3_estep checks chunked == one call with rationales.)"""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from agentic_jax.rl import ra3_annotate, ra3_data  # pylint: disable=import-outside-toplevel
  wd, _ = full_run
  rows_per_call = []
  decoder = ra3_annotate.annotate_arrays

  def counting(*args, **kw):
    rows_per_call.append(int(np.sum(np.asarray(args[5]) > 0)))  # expert_len > 0: real rows
    return decoder(*args, **kw)

  monkeypatch.setattr(ra3_annotate, "annotate_arrays", counting)
  config = small_ra3(**{"estep.decode_batch": 4})
  data_dir = os.path.join(wd, "data")
  tokenizer, _ = ra3_data.tokenizer_for(config, wd, data_dir)
  corpus = [ra3_data.tokenize(x, tokenizer, config.ra3.segment)[0]
            for x in ra3_data.read_jsonl(os.path.join(data_dir, ra3_data.FILES["corpus"]))]
  first = np.array_split(np.arange(len(corpus)), config.ra3.rounds)[0]
  s, ran = ra3.run_estep_phase(config, config_lib.model_config(config.mstep.model), tokenizer,
                               [corpus[i] for i in first], init_dir=os.path.join(wd, "base"),
                               out_dir=str(tmp_path / "round_1" / "estep"), phase=1)
  rdir = os.path.join(wd, "ra3", "round_1")
  with open(os.path.join(rdir, "estep", "summary.json")) as f:
    want = json.load(f)
  # 2 E-steps of up to 6 rows (programs too long for a row are left out), at most 4 a call
  assert max(rows_per_call) == 4 and len(rows_per_call) >= 3, rows_per_call
  assert ran == 2 and s["mean"] == want["mean"]
  with open(os.path.join(rdir, "data.jsonl")) as f, open(tmp_path / "round_1" / "data.jsonl") as g:
    assert g.read() == f.read()


@pytest.mark.parametrize("key,value,message", [
    ("ra3.c", -1.0, "config.ra3.c: expected a number >= 0"),
    ("ra3.arms", ("ra3", "rl"), "config.ra3.arms"),
    ("ra3.segment", "words", "config.ra3.segment"),
    ("estep.rl.loss", "ppo", "config.estep.rl.loss"),
    ("estep.rl.temperature", 0.7, "config.estep.rl.temperature"),
    ("mstep.optim.lr", -1.0, "config.mstep.optim.lr"),
    ("ra3_data.num_programs", 2, "config.ra3_data.num_programs"),
    ("init_from", "/nonexistent", "config.init_from"),
    ("estep.mesh.fsdp", 3, "config.estep.mesh"),  # 3 does not divide the devices
    ("estep.decode_batch", -1, "config.estep.decode_batch: expected an int >= 0"),
])
def test_bad_config_is_named(key, value, message):
  with pytest.raises(config_lib.ConfigError, match=message.replace(".", r"\.")):
    jobs.validate(small_ra3(**{key: value}))


def test_estep_rows_must_split_over_the_estep_mesh():
  """On 8 devices as fsdp 4 x tensor 2 (4 batch shards) x 2 minibatches, the E-step's 4-row
  bucket cannot be split; 8 rows can."""
  mesh = {"estep.mesh.data": 1, "estep.mesh.fsdp": 4, "estep.mesh.tensor": 2}
  with pytest.raises(config_lib.ConfigError, match=r"config\.estep\.rl\.row_bucket: 4 must be a "
                     r"multiple of the 4 batch shards of config\.estep\.mesh"):
    ra3.validate_ra3(small_ra3(**mesh), num_devices=8)
  ra3.validate_ra3(small_ra3(**mesh, **{"estep.rl.row_bucket": 8}), num_devices=8)


@pytest.mark.parametrize("variant,devices", [("youtu_llm", 256), ("longcat_flash", 1024)])
def test_full_size_variants_are_sized_by_the_planner(variant, devices):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  config = config_lib.load_config(os.path.join(ROOT, "configs", f"ra3.py:{variant}"))
  mt = config_lib.load_config(os.path.join(ROOT, "configs", f"midtrain.py:{variant}"))
  assert config.mstep.model.to_dict() == config.base.model.to_dict() == mt.model.to_dict()
  out = subprocess.run([sys.executable, "launch/plan.py", f"--config=configs/ra3.py:{variant}",
                        f"--num_devices={devices}", "--device_memory_gib=95"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout + out.stderr
  assert "planning config.mstep" in out.stdout and "FITS" in out.stdout
