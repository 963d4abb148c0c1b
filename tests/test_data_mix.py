"""Issue 12, the data mix: `config.data.mix` is one entry per source (NAME -> kind, path or
num_samples, weight, loss_weight, eval_num_samples), read and validated in one place
(train/input.py: source_specs -> SourceSpec).

  * the default config's mix gives the batches of the five parallel tuples it replaced: golden
    digests taken from the code before the change (default mix, a stage schedule, a file + built-in
    mix with non-default weights), and the training batches rebuilt by an independent path
    (builtin.generate -> render -> pipeline.make_batches with the old default values);
  * every bad entry, and every old-style key (in Python, or overridden on the command line), is
    one ConfigError line naming the key;
  * a source kind registered only in this test (builtin.register_source) is one mix entry, end to
    end through validation, the pipeline, the held-out eval and a stage schedule.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from agentic_jax.data import builtin, pipeline
from agentic_jax.data import tokenizer as tok_lib
from agentic_jax.data.render import render
from agentic_jax.data.schema import EnvSample, Turn
from agentic_jax.train import config as config_lib
from agentic_jax.train import input as input_lib
from tests.train_fixtures import MIDTRAIN, ROOT
from tests import data_fixtures

ADP = os.path.join(ROOT, "tests", "data", "adp_good.jsonl")
# Golden digests of 4 training batches and the 2 held-out batches, computed with the code before
# the change (data.sources = ("calculator", "pyrepo", "stdlib_edits"), source_weights and
# loss_weights all 1.0, num_samples (512, 256, 512), eval_num_samples (64, 32, 64)) and the
# tokenizer of the `tokenizer_path` fixture, whose file had this digest:
TOKENIZER_SHA256 = "f4559de69da5bbcf1dcd734e5ddd59b6a9de2e5d93c801ae4ba3047953ea8488"
GOLDEN = {
    "default": ("0c162a86e25dd57d", "c6342156de966188"),
    # + data.stages below
    "stages": ("4ac1a9d0e01c8d4d", "c6342156de966188"),
    # data.sources = ("agent=adp:tests/data/adp_good.jsonl", "calculator"), source_weights
    # (1.0, 2.0), loss_weights (1.0, 0.5), num_samples (0, 16), eval_num_samples (1, 4).
    # Re-taken when rationale blocks got their own mask kind (issue 13): the ADP file's think
    # blocks have target_kind 10 ("rationale") instead of 6; mapping 10 back to 6 gives the old
    # digests ("97338629971aaebe", "3d018b195767b9f1"), so nothing else changed.
    "file": ("d5918db2e3c92930", "602c9c16f58c2e16"),
}
STAGES = ({"until_step": 2, "weights": {"pyrepo": 1.0}},
          {"weights": {"calculator": 2.0, "stdlib_edits": 1.0}})


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
  return data_fixtures.builtin_tokenizer_512(tmp_path_factory.mktemp("tok"))


def _digest(batches) -> str:
  h = hashlib.sha256()
  for b in batches:
    for k in sorted(b):
      h.update(k.encode())
      h.update(np.ascontiguousarray(b[k]).tobytes())
  return h.hexdigest()[:16]


def _config(tokenizer_path, *, mix=None, stages=()):
  config = config_lib.load_config(f"{MIDTRAIN}:tiny")
  config.unlock()
  config.data.tokenizer.path = tokenizer_path
  if mix is not None:
    config.data.mix = ml_collections.ConfigDict(mix)
  config.data.stages = stages
  config.lock()
  return config


def _build(config, workdir, eval_batches=2):
  inp = input_lib.build_input(config, str(workdir), vocab_limit=1024, eval_batches=eval_batches)
  return inp, [next(inp.iterator) for _ in range(4)]


# ------------------------------------------------------------------ same batches as before


def test_default_mix_is_the_old_tuples():
  config = config_lib.load_config(f"{MIDTRAIN}:tiny")
  specs = input_lib.source_specs(config.data)
  assert [(s.name, s.kind, s.weight, s.loss_weight, s.num_samples, s.eval_num_samples, s.path)
          for s in specs] == [("calculator", "calculator", 1.0, 1.0, 512, 64, ""),
                              ("pyrepo", "pyrepo", 1.0, 1.0, 256, 32, ""),
                              ("stdlib_edits", "stdlib_edits", 1.0, 1.0, 512, 64, "")]
  for variant in ("longcat_flash", "deepseek_v3", "youtu_llm"):
    full = input_lib.source_specs(config_lib.load_config(f"{MIDTRAIN}:{variant}").data)
    assert [(s.name, s.num_samples, s.eval_num_samples) for s in full] == [
        ("calculator", 20000, 500), ("pyrepo", 20000, 500), ("stdlib_edits", 20000, 500)]


@pytest.mark.parametrize("case", ["default", "stages", "file"])
def test_mix_gives_the_batches_of_the_old_tuples(case, tokenizer_path, tmp_path):
  with open(tokenizer_path, "rb") as f:
    if hashlib.sha256(f.read()).hexdigest() != TOKENIZER_SHA256:
      pytest.skip("this sentencepiece trains another tokenizer than the one of the digests")
  if sys.version_info[:2] != (3, 11):  # the stdlib_edits source edits the running stdlib's files
    pytest.skip("digests recorded on Python 3.11, whose stdlib the built-in sources read")
  if case == "file":
    mix = {"agent": input_lib.mix_source("adp", path=ADP, eval_num_samples=1),
           "calculator": input_lib.mix_source("calculator", num_samples=16, eval_num_samples=4,
                                              weight=2.0, loss_weight=0.5)}
    config = _config(tokenizer_path, mix=mix)
  else:
    config = _config(tokenizer_path, stages=STAGES if case == "stages" else ())
  inp, train = _build(config, tmp_path)
  assert (_digest(train), _digest(inp.eval_batches)) == GOLDEN[case]


def test_training_batches_equal_an_independent_build(tokenizer_path, tmp_path):
  """The old default values, fed to the pipeline by hand, give the default mix's batches."""
  config = _config(tokenizer_path)
  _, train = _build(config, tmp_path, eval_batches=0)
  tok = tok_lib.load_tokenizer(tokenizer_path)
  old = dict(sources=("calculator", "pyrepo", "stdlib_edits"), source_weights=(1.0, 1.0, 1.0),
             loss_weights=(1.0, 1.0, 1.0), num_samples=(512, 256, 512))
  sources = [pipeline.Source(name, w, [render(s, tok, "all", lw)
                                       for s in builtin.generate(name, seed=0, num_samples=n)])
             for name, w, lw, n in zip(*old.values())]
  it = pipeline.make_batches(sources, seq_len=256, batch_size=8, seed=0, pad_id=tok.pad_id)
  for got in train:
    want = next(it)
    assert set(got) == set(want)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)


# ------------------------------------------------------------------ one-line errors


def _calc(**fields):
  return {"kind": "calculator", "num_samples": 4, **fields}


BAD = [
    ({"calculator": _calc(weight=-1)},
     "config.data.mix.calculator.weight: expected a finite number >= 0, got -1"),
    ({"calculator": _calc(weight=math.nan)},
     "config.data.mix.calculator.weight: expected a finite number >= 0, got nan"),
    ({"calculator": _calc(loss_weight=math.inf)},
     "config.data.mix.calculator.loss_weight: expected a finite number >= 0, got inf"),
    ({"calculator": _calc(loss_weight="1")},
     "config.data.mix.calculator.loss_weight: expected a finite number >= 0, got '1'"),
    ({"calculator": _calc(weight=True)},
     "config.data.mix.calculator.weight: expected a finite number >= 0, got True"),
    ({"calculator": _calc(num_samples=0)},
     "config.data.mix.calculator.num_samples: expected an int >= 1, got 0"),
    ({"calculator": {"kind": "calculator"}},
     "config.data.mix.calculator.num_samples: required for a 'calculator' source"),
    ({"calculator": _calc(eval_num_samples=1.5)},
     "config.data.mix.calculator.eval_num_samples: expected an int >= 0, got 1.5"),
    ({"calculator": _calc(kind="calculater")},
     "config.data.mix.calculator.kind: expected one of ["),
    ({"calculator": _calc(path="x.jsonl")},
     "config.data.mix.calculator.path: not a field of a 'calculator' source; expected fields "
     "['kind', 'num_samples', 'weight', 'loss_weight', 'eval_num_samples']"),
    ({"agent": {"kind": "jsonl"}},
     "config.data.mix.agent.path: expected the path of a 'jsonl' file, got None"),
    ({"agent": {"kind": "adp", "path": "a.jsonl", "num_samples": 3}},
     "config.data.mix.agent.num_samples: not a field of a 'adp' source"),
    ({"calculator": 3}, "config.data.mix.calculator: expected a mapping of source fields"),
    ({}, "config.data.mix: expected one or more sources"),
    ({"calculator": _calc(weight=0.0), "pyrepo": {"kind": "pyrepo", "num_samples": 2,
                                                  "weight": 0}},
     "config.data.mix: expected a positive total weight, got {'calculator': 0.0, 'pyrepo': 0.0}"),
]


@pytest.mark.parametrize("mix,message", BAD, ids=[m.split(":")[0] + str(i)
                                                  for i, (_, m) in enumerate(BAD)])
def test_bad_entry_is_one_line_naming_the_key(mix, message):
  with pytest.raises(config_lib.ConfigError) as info:
    input_lib.source_specs({"mix": mix})
  assert str(info.value).startswith(message), str(info.value)
  assert "\n" not in str(info.value)


def test_bad_entry_through_validate_and_build_input(tokenizer_path, tmp_path):
  config = _config(tokenizer_path)
  config.data.mix.pyrepo.weight = -1.0  # the locked config keeps existing keys writable
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config\.data\.mix\.pyrepo\.weight: expected a finite number >= 0, "
                           r"got -1\.0$"):
    config_lib.validate(config)
  with pytest.raises(config_lib.ConfigError, match=r"^config\.data\.mix\.pyrepo\.weight"):
    input_lib.build_input(config, str(tmp_path), vocab_limit=1024)
  config.data.mix.pyrepo.weight = 1.0
  config.data.stages = ({"weights": {"pyrepos": 1.0}},)
  with pytest.raises(config_lib.ConfigError, match=r"^config\.data\.stages\[0\]\.weights: unknown "
                                                   r"sources \['pyrepos'\]"):
    config_lib.validate(config)


@pytest.mark.parametrize("key,points_to", [
    ("sources", "config.data.mix (one entry per source"),
    ("source_weights", "config.data.mix.NAME.weight"),
    ("loss_weights", "config.data.mix.NAME.loss_weight"),
    ("num_samples", "config.data.mix.NAME.num_samples"),
    ("eval_num_samples", "config.data.mix.NAME.eval_num_samples"),
])
def test_old_keys_point_to_the_mix(key, points_to):
  message = f"config.data.{key} was replaced by {points_to}"
  config = config_lib.load_config(f"{MIDTRAIN}:tiny")
  with pytest.raises(AttributeError, match=message.replace("(", r"\(")):  # locked: read
    getattr(config.data, key)
  config.unlock()
  with pytest.raises(AttributeError, match=message.replace("(", r"\(")):  # unlocked: written
    setattr(config.data, key, (1,))
  # a data section built without configs/midtrain.py's DataSection: validation catches it
  plain = {"mix": {"calculator": _calc()}, key: (1,)}
  with pytest.raises(config_lib.ConfigError, match="^" + message.replace("(", r"\(")):
    input_lib.source_specs(plain)


def test_old_key_on_the_command_line_is_one_line_naming_the_mix(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "train.py"), f"--config={MIDTRAIN}:tiny",
       f"--workdir={tmp_path / 'run'}", "--config.data.sources=('synthetic',)"],
      capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  assert "config.data.sources was replaced by config.data.mix" in lines[0]
  assert "config.data.synthetic=True" in lines[0]
  assert not (tmp_path / "run").exists()


def test_mix_source_fills_every_field_of_its_kind():
  built = input_lib.mix_source("calculator", num_samples=8, weight=2)
  assert built.to_dict() == {"kind": "calculator", "num_samples": 8, "weight": 2.0,
                             "loss_weight": 1.0, "eval_num_samples": 0}
  assert isinstance(built.weight, float)  # so that --config...weight=0.5 is accepted
  assert set(input_lib.mix_source("jsonl", path="a.jsonl")) == {
      "kind", "path", "weight", "loss_weight", "eval_num_samples"}
  with pytest.raises(ValueError, match=r"unknown fields \['path'\]"):
    input_lib.mix_source("calculator", num_samples=8, path="a.jsonl")
  with pytest.raises(ValueError, match="path is required"):
    input_lib.mix_source("adp")
  with pytest.raises(ValueError, match="unknown kind 'nope'"):
    input_lib.mix_source("nope", num_samples=1)


# ------------------------------------------------------------------ a new source kind


def _echo(seed: int, num_samples: int, stats):
  """A tiny built-in kind: "echo N" -> "N", N drawn from the seed."""
  del stats
  rng = np.random.default_rng(seed)
  out = []
  for i in range(num_samples):
    n = int(rng.integers(10**6))
    out.append(EnvSample(id=f"echo-{seed}-{i}", source="echo",
                         turns=(Turn("user", f"echo {n}"), Turn("assistant", str(n)))))
  return out


@pytest.fixture
def echo_kind():
  builtin.register_source("echo")(_echo)  # the one registration a new kind takes
  yield "echo"
  builtin.unregister_source("echo")


def test_registered_kind_end_to_end(echo_kind, tokenizer_path, tmp_path):
  with pytest.raises(ValueError, match="expected a new non-empty name"):
    builtin.register_source(echo_kind)
  config = _config(tokenizer_path, mix={
      "calculator": input_lib.mix_source("calculator", num_samples=8),
      "parrot": input_lib.mix_source(echo_kind, num_samples=6, eval_num_samples=3, weight=3.0,
                                     loss_weight=0.5)},
      stages=({"until_step": 2, "weights": {"parrot": 1.0}}, {"weights": None}))
  config.unlock()
  config.data.seq_len, config.data.batch_size, config.train.eval_every = 64, 2, 2
  config.lock()
  config_lib.validate(config)
  inp, batches = _build(config, tmp_path, eval_batches=1)
  assert inp.source_names == ("calculator", "parrot")
  assert inp.report["sources"]["parrot"]["generated"] == 6
  assert inp.report["eval"]["sources"]["parrot"]["samples"] == 3
  tok = inp.tokenizer
  want = {render(s, tok, "all", 0.5).tokens.tobytes() for s in _echo(0, 6, None)}
  held = {render(s, tok, "all", 0.5).tokens.tobytes()
          for s in _echo(input_lib.EVAL_SEED_OFFSET, 3, None)}
  for step, b in enumerate(batches + inp.eval_batches):
    ids = set(b["source_id"][b["segment_ids"] > 0].tolist())
    if step < 2:
      assert ids == {1}  # stage 0: only the new source
    for row in range(b["inputs"].shape[0]):
      for seg in set(b["segment_ids"][row].tolist()) - {0}:
        sel = b["segment_ids"][row] == seg
        if b["source_id"][row][sel][0] == 1:
          assert b["inputs"][row][sel].astype(np.int32).tobytes() in (
              held if step >= len(batches) else want)
          assert set(b["weights"][row][sel].tolist()) <= {0.0, 0.5}  # its loss_weight
  assert any(0 in b["source_id"] for b in batches[2:])  # stage 1: both sources
  builtin.unregister_source(echo_kind)
  with pytest.raises(config_lib.ConfigError, match=r"^config\.data\.mix\.parrot\.kind: expected"):
    config_lib.validate(config)
  builtin.register_source(echo_kind)(_echo)  # for the fixture's clean-up


def test_tokenizer_larger_than_the_embedding_is_a_config_error(tokenizer_path, tmp_path):
  """A tokenizer with more ids than config.model.vocab_size (e.g. a converted checkpoint's with
  added markers) is one line naming the key, before anything compiles - it was a traceback."""
  config = _config(tokenizer_path)
  vocab = tok_lib.load_tokenizer(tokenizer_path).vocab_size
  with pytest.raises(config_lib.ConfigError,
                     match=rf"^config\.model\.vocab_size: {vocab - 1} is smaller than the "
                           rf"tokenizer's {vocab} ids"):
    input_lib.build_input(config, str(tmp_path), vocab_limit=vocab - 1)
