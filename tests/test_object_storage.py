"""Run directories on object storage (issue 14, part 4): `--workdir=gs://bucket/run`.

A fake GCS server (gcp-storage-emulator, in memory, on localhost) stands in for Google Cloud
Storage; both clients a real run uses talk to it exactly as to GCS: gcsfs (epath's gs://
backend: metrics.jsonl, summary.json, TensorBoard events, the tokenizer, data files) through
STORAGE_EMULATOR_HOST, and TensorStore (orbax's array writer) through TENSORSTORE_GCS_HTTP_URL.
Every file-level helper is checked on a local path and on gs:// alike; a mid-training run in
gs:// that stops and resumes gives bit for bit the losses and final state of one in a local
directory."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from agentic_jax import fs
from agentic_jax.train import checkpoint as ckpt_lib
from agentic_jax.train import config as config_lib
from agentic_jax.train import init_from as init_from_lib
from agentic_jax.train import loop
from agentic_jax.train import optim as optim_lib
from agentic_jax.train import state as state_lib
from tests.gcs_fixtures import gcs  # noqa: F401  (the fake GCS fixture)
from tests.tensorboard_fixtures import read_events, scalars
from tests.train_fixtures import small_config


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
  """A fresh directory: local, or a fresh prefix in the fake bucket."""
  if request.param == "local":
    return str(tmp_path)
  base = request.getfixturevalue("gcs")
  return f"{base}/{request.node.name.replace('[', '_').replace(']', '')}"


def test_file_helpers_behave_alike_locally_and_on_gcs(root):
  d = fs.join(root, "a")
  assert fs.is_remote(root) == root.startswith("gs://")
  assert not fs.exists(d)
  fs.makedirs(d)
  fs.write_text(fs.join(d, "x.json"), json.dumps({"k": 1}))
  fs.write_bytes(fs.join(d, "y.bin"), b"\x00\x01")
  assert json.loads(fs.read_text(fs.join(d, "x.json"))) == {"k": 1}
  assert fs.read_bytes(fs.join(d, "y.bin")) == b"\x00\x01"
  assert fs.isfile(fs.join(d, "x.json")) and not fs.isfile(d) and fs.isdir(d)
  assert sorted(fs.listdir(d)) == ["x.json", "y.bin"]
  assert [p.rsplit("/", 1)[-1] for p in fs.glob(fs.join(d, "*.json"))] == ["x.json"]
  with pytest.raises(FileNotFoundError):
    fs.listdir(fs.join(root, "missing"))
  fs.write_text(fs.join(d, "x.json"), "replaced")  # overwriting is atomic and complete
  assert fs.read_text(fs.join(d, "x.json")) == "replaced"
  fs.copy(fs.join(d, "y.bin"), fs.join(d, "z.bin"))
  assert fs.read_bytes(fs.join(d, "z.bin")) == b"\x00\x01"
  fs.makedirs(fs.join(d, "step", "inner"))
  fs.write_text(fs.join(d, "step", "inner", "f"), "deep")
  fs.move(fs.join(d, "step"), fs.join(d, "step.aside"))  # a checkpoint moved aside
  assert not fs.exists(fs.join(d, "step", "inner", "f"))
  assert fs.read_text(fs.join(d, "step.aside", "inner", "f")) == "deep"
  fs.remove(fs.join(d, "z.bin"))
  fs.remove(fs.join(d, "z.bin"))  # missing is fine
  assert not fs.exists(fs.join(d, "z.bin"))
  with fs.local_copy(fs.join(d, "y.bin")) as local:
    with open(local, "rb") as f:
      assert f.read() == b"\x00\x01"


def test_append_file_uploads_whole_and_reopens_where_it_left(root):
  fs.makedirs(root)
  path = fs.join(root, "metrics.jsonl")
  f = fs.AppendFile(path, flush_secs=3600.0)
  f.write("1\n")
  f.flush(force=True)
  f.write("2\n")
  f.flush()  # within flush_secs: on object storage nothing is uploaded yet
  assert fs.read_text(path) == ("1\n" if fs.is_remote(path) else "1\n2\n")
  f.close()  # close always uploads
  assert fs.read_text(path) == "1\n2\n"
  g = fs.AppendFile(path)
  g.write("3\n")
  g.close()
  assert fs.read_text(path) == "1\n2\n3\n"


def test_tokenizer_saves_and_loads_through_gcs(gcs):
  from agentic_jax.data import tokenizer as tok_lib  # pylint: disable=import-outside-toplevel
  workdir = f"{gcs}/tok_run"
  sentences = [f"def f{i}(x, y):\n  return x * {i} + y - {i % 7}\n" for i in range(400)]
  tok, rep = tok_lib.find_or_train("", workdir, train=lambda: tok_lib.SentencePieceTokenizer
                                   .train(sentences, 300, seed=0))
  assert rep["trained"] and rep["path"] == f"{workdir}/tokenizer.model"
  again, rep2 = tok_lib.find_or_train("", workdir)  # a resumed run finds it in the bucket
  assert not rep2["trained"] and again.model_proto == tok.model_proto


def test_check_backend_names_the_missing_package(monkeypatch):
  import importlib.util  # pylint: disable=import-outside-toplevel
  fs.check_backend("/tmp/run")
  fs.check_backend("gs://b/run")  # gcsfs is installed here
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(ValueError, match=r"gs://b/run: gs:// paths need the gcsfs package "
                     r"\(pip install 'agentic_jax\[gcs\]'\)"):
    fs.check_backend("gs://b/run")
  fs.check_backend("/tmp/run")  # local paths need nothing


def _final_state(config, workdir):
  model_cfg = config_lib.model_config(config.model)
  abstract = state_lib.abstract_state(model_cfg, optim_lib.make_optimizer(config.optim),
                                      config.seed)
  return ckpt_lib.Checkpointer(fs.join(workdir, "checkpoints")).restore_latest(abstract)[0]


def test_midtraining_in_a_gcs_workdir_resumes_bitwise_as_a_local_run(gcs, tmp_path):
  config = small_config()
  local = str(tmp_path / "local")
  full = loop.run(config, local, handle_signals=False)
  remote = f"{gcs}/midtrain"
  first = loop.run(config, remote, stop_after_steps=3, handle_signals=False)
  assert first["status"] == "stopped" and first["final_step"] == 3
  assert first["checkpoints"]["directory"] == f"{remote}/checkpoints"
  assert init_from_lib.checkpoint_steps(remote) == [2, 3]
  second = loop.run(config, remote, handle_signals=False)
  assert second["start_step"] == 3 and second["status"] == "completed"
  losses, resumed = dict(full["losses"]), dict(first["losses"] + second["losses"])
  assert sorted(resumed) == list(range(1, 7))
  for step in range(1, 7):  # bitwise: same float32 bits
    assert losses[step].tobytes() == resumed[step].tobytes(), step
  jax.tree.map(np.testing.assert_array_equal, _final_state(config, local),
               _final_state(config, remote))
  # every output lives in the bucket and reads back as the local run's
  names = set(fs.listdir(remote))
  assert {"checkpoints", "metrics.jsonl", "summary.json", "tb"} <= names, names
  summary = json.loads(fs.read_text(f"{remote}/summary.json"))
  assert summary["status"] == "completed" and summary["final_step"] == 6
  assert summary["outputs"]["metrics"] == f"{remote}/metrics.jsonl"
  recs = [json.loads(x) for x in fs.read_text(f"{remote}/metrics.jsonl").splitlines()]
  assert [r["step"] for r in recs] == [2, 3, 4, 6]  # the stop's partial window, then resumed
  # TensorBoard: the two invocations' event files, read back from the bucket
  tb_local = tmp_path / "tb"
  tb_local.mkdir()
  for name in fs.listdir(f"{remote}/tb"):
    (tb_local / name).write_bytes(fs.read_bytes(f"{remote}/tb/{name}"))
  events = read_events(str(tb_local))
  assert [e.step for e in events if e.HasField("session_log")] == [1, 4]
  assert [step for step, _ in scalars(events)["loss"]] == [2, 3, 4, 6]
  # a later run starts from it: config.init_from=gs://... reads the same parameters
  model_cfg = config_lib.model_config(config.model)
  got = init_from_lib.load(remote, model_cfg, config.model.to_dict(), say=lambda _: None)
  want = init_from_lib.load(local, model_cfg, config.model.to_dict(), say=lambda _: None)
  assert got.step == want.step == 6
  jax.tree.map(np.testing.assert_array_equal, got.variables, want.variables)
  config_lib.check_init_from(config_lib.ml_collections.ConfigDict({"init_from": remote}))
