"""Training from a converted Hugging Face checkpoint with its own tokenizer (issue 15, item 3).

A tiny LongCat-Flash saved by transformers, with a byte-level BPE tokenizer.json of its own (as
released checkpoints ship), is converted: our role/tool markers are added to its tokenizer as
new special tokens and its embedding grows by mean rows. Then `configs/midtrain.py:tiny,
init_from=CKPT` runs a mid-training step and `configs/flow_grpo.py:tiny,init_from=CKPT` an RL
step, both on the checkpoint's model, parameters and tokenizer ids."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tokenizers = pytest.importorskip("tokenizers")

import jax.numpy as jnp  # noqa: E402

from agentic_jax import convert, models  # noqa: E402
from agentic_jax.data import builtin  # noqa: E402
from agentic_jax.data import tokenizer as tok_lib  # noqa: E402
from agentic_jax.train import config as config_lib  # noqa: E402
from tests import hf_models as H  # noqa: E402
from tests.train_fixtures import ROOT, set_dotted  # noqa: E402

VOCAB = 300  # the checkpoint's embedding rows = its BPE vocabulary (256 bytes + merges)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf_start")
  hf_dir, ckpt = str(root / "hf"), str(root / "ckpt")
  model = H.build("longcat", seed=4, vocab_size=VOCAB).float()
  model.save_pretrained(hf_dir)
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
  bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=VOCAB, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
      special_tokens=["<s>", "</s>"])
  bpe.train_from_iterator(builtin.corpus_texts(0, sources=builtin.ALL_SOURCES)[:400], trainer)
  assert bpe.get_vocab_size() == VOCAB
  bpe.save(os.path.join(hf_dir, "tokenizer.json"))
  json.dump({"bos_token": "<s>", "eos_token": "</s>"},
            open(os.path.join(hf_dir, "tokenizer_config.json"), "w"))
  report = convert.hf_to_checkpoint(hf_dir, ckpt, say=lambda _: None)
  return model, hf_dir, ckpt, report


def test_markers_are_added_and_the_embedding_grows_by_mean_rows(converted):
  model, _, ckpt, report = converted
  tok = tok_lib.load_from_dir(ckpt)
  added = report["tokens_added"]
  assert "<|user|>" in added and "<|end_turn|>" in added and "<s>" not in added
  assert tok.vocab_size == VOCAB + len(added) == report["vocab_size"]
  ids = {t["content"]: t["id"] for t in
         json.load(open(os.path.join(ckpt, "tokenizer.json")))["added_tokens"]}
  assert tok.bos_id == ids["<s>"] < VOCAB and tok.eos_id == ids["</s>"] < VOCAB  # its own
  assert sorted(ids[t] for t in added) == list(range(VOCAB, VOCAB + len(added)))
  cfg, variables = convert.load_checkpoint(ckpt)
  assert cfg.vocab_size == tok.vocab_size
  emb = np.asarray(variables["params"]["embed_tokens"]["embedding"])
  np.testing.assert_allclose(emb[VOCAB:], np.broadcast_to(emb[:VOCAB].mean(0), emb[VOCAB:].shape),
                             rtol=1e-6, atol=1e-7)
  # the pretrained distribution over the original ids is untouched
  toks = H.tokens(1, 10, vocab=VOCAB, seed=3)
  ours = models.build(cfg).apply(variables, jnp.asarray(toks))
  ours = np.asarray(ours[0] if isinstance(ours, tuple) else ours)
  with torch.no_grad():
    ref = model(torch.from_numpy(toks)).logits.numpy()
  np.testing.assert_allclose(ours[..., :VOCAB], ref, rtol=2e-5, atol=2e-5)
  # text with markers survives the checkpoint's own tokenizer
  ids = tok.encode("def f(x):\n  return x + 1\n")
  assert tok.decode(ids) == "def f(x):\n  return x + 1\n" and max(ids) < VOCAB


def test_midtraining_and_rl_start_from_the_converted_checkpoint(converted, tmp_path):
  from agentic_jax.rl import loop as rl_loop  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import loop  # pylint: disable=import-outside-toplevel
  _, _, ckpt, report = converted
  config = config_lib.load_config(os.path.join(ROOT, "configs", "midtrain.py")
                                  + f":tiny,init_from={ckpt}")
  assert config.init_from == ckpt and config.model.vocab_size == report["vocab_size"]
  assert config.model.layer_type == "scmoe" and config.model.preset == "init_from"
  config.unlock()
  set_dotted(config, {"data.batch_size": 2, "data.seq_len": 64, "train.num_steps": 2,
                      "train.log_every": 1, "train.progress": False, "train.eval_every": 0,
                      "checkpoint.every": 2, "optim.warmup_steps": 1})
  config.lock()
  mt_dir = str(tmp_path / "mt")
  s = loop.run(config, mt_dir, handle_signals=False)
  assert s["status"] == "completed" and s["init_from"]["path"] == ckpt
  assert all(np.isfinite(float(v)) for _, v in s["losses"])
  # the run adopted the checkpoint's tokenizer (ids its parameters were trained with)
  assert open(os.path.join(mt_dir, "tokenizer.json"), "rb").read() == \
      open(os.path.join(ckpt, "tokenizer.json"), "rb").read()
  rl = config_lib.load_config(os.path.join(ROOT, "configs", "flow_grpo.py")
                              + f":tiny,init_from={ckpt}")
  rl.unlock()
  r = rl.rl
  r.tasks_per_step, r.group_size, r.max_turns, r.eval_max_turns = 2, 2, 2, 2
  r.max_new_tokens, r.max_context_tokens, r.seq_len = 12, 308, 320
  r.row_bucket, r.sample_bucket, r.minibatches, r.eval_tasks = 4, 2, 2, 2
  rl.train.num_steps, rl.train.progress = 1, False
  rl.checkpoint.every = 100
  rl.lock()
  out = rl_loop.run(rl, str(tmp_path / "rl"), handle_signals=False)
  assert out["status"] == "completed" and out["final_step"] == 1


def test_ra3_starts_from_the_converted_checkpoint(converted, tmp_path):
  """configs/ra3.py:tiny,init_from=CKPT: no base stage; both arms' E/M phases run on the
  checkpoint's model with its tokenizer (the rationale markers are among the tokens the
  conversion added)."""
  from agentic_jax.rl import ra3  # pylint: disable=import-outside-toplevel
  _, _, ckpt, report = converted
  assert {"<|think|>", "<|end_think|>"} <= set(report["tokens_added"])
  config = config_lib.load_config(os.path.join(ROOT, "configs", "ra3.py")
                                  + f":tiny,init_from={ckpt}")
  assert config.mstep.model.vocab_size == report["vocab_size"]
  config.unlock()
  d = config.ra3_data
  d.num_programs, d.num_base_programs, d.num_heldout, d.min_ops, d.max_ops = 8, 8, 2, 2, 2
  m = config.mstep
  m.data.batch_size, m.data.seq_len, m.train.num_steps = 2, 256, 2
  m.train.log_every, m.train.progress, m.optim.warmup_steps = 1, False, 1
  r = config.ra3
  r.rounds, r.estep_steps, r.proposals, r.max_rationale_len = 1, 1, 2, 3
  config.estep.rl.seq_len = 256  # the model's max_position_embeddings
  v = config.eval
  v.tasks, v.samples, v.max_new_tokens, v.humaneval = 1, 1, 16, False
  config.lock()
  s = ra3.run(config, str(tmp_path / "ra3"), handle_signals=False)
  assert s["status"] == "completed"
  for arm in ("ra3", "ntp"):
    assert np.isfinite(s[arm]["action_nll"]) and s[arm]["train_tokens"] == 2 * 2 * 256


def test_midtraining_from_the_converted_checkpoint_on_a_sharded_mesh(converted, tmp_path):
  """launch/train.py from the converted checkpoint on 4 devices (fsdp 2 x expert 2) gives the
  one-device losses: its parameters are read straight into the sharded layout."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from tests.launch_fixtures import cpu_env, records, rel, wait_all  # pylint: disable=import-outside-toplevel
  _, _, ckpt, _ = converted
  args = [sys.executable, os.path.join(ROOT, "launch", "train.py"), "--compile_cache=",
          f"--config={os.path.join(ROOT, 'configs', 'midtrain.py')}:tiny,init_from={ckpt}",
          "--config.data.batch_size=4", "--config.data.seq_len=64", "--config.train.num_steps=2",
          "--config.train.log_every=1", "--config.train.progress=False",
          "--config.train.eval_every=0", "--config.checkpoint.every=1000",
          "--config.optim.warmup_steps=1"]
  one, four = str(tmp_path / "one"), str(tmp_path / "four")
  procs = [("one device", subprocess.Popen(args + [f"--workdir={one}"], cwd=ROOT, env=cpu_env(1),
                                           text=True, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE)),
           ("fsdp 2 x expert 2", subprocess.Popen(
               args + [f"--workdir={four}", "--config.mesh.data=1", "--config.mesh.fsdp=2",
                       "--config.mesh.expert=2"], cwd=ROOT, env=cpu_env(4), text=True,
               stdout=subprocess.PIPE, stderr=subprocess.PIPE))]
  wait_all(procs, timeout=600)
  a, b = records(one), records(four)
  assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
  for x, y in zip(a, b):
    assert rel(y["loss"], x["loss"]) <= 1e-5, (x["loss"], y["loss"])


def test_marker_map_reuses_the_checkpoints_tokens(converted, tmp_path):
  """--marker_map maps our markers onto tokens the checkpoint already has (no new rows for
  them); naming a token it lacks is a one-line error."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  _, hf_dir, _, report = converted
  cli = [sys.executable, os.path.join(ROOT, "launch", "convert.py"), f"--from_hf={hf_dir}"]
  r = subprocess.run(cli + [f"--to={tmp_path / 'mapped'}",
                            '--marker_map={"<|end_turn|>": "</s>", "<|user|>": "<s>"}'],
                     cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  tok = tok_lib.load_from_dir(str(tmp_path / "mapped"))
  assert tok.special_id("<|end_turn|>") == tok.eos_id and tok.special_id("<|user|>") == tok.bos_id
  assert tok.vocab_size == report["vocab_size"] - 2  # two markers fewer to add
  r = subprocess.run(cli + [f"--to={tmp_path / 'bad'}", '--marker_map={"<|user|>": "<nope>"}'],
                     cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 2 and r.stderr.count("\n") == 1 and "<nope>" in r.stderr, r.stderr
