"""launch/generate.py and launch/eval.py (agentic_jax/inference/) on a tiny mid-trained model.

The module fixture mid-trains a 1-layer ScMoE model for 2 steps in-process (synthetic data) in a
WORKDIR that also holds a small sentencepiece tokenizer, the layout launch/train.py leaves.
A second directory in the converted-checkpoint layout (checkpoints/0/{state, meta} with only
params / router_state, beside the tokenizer) holds the same model with its output layer edited
so that <|end_turn|> is likely at every step: the random model never ends a turn by itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.train_fixtures import ROOT, small_config

GENERATE = os.path.join(ROOT, "launch", "generate.py")
EVAL = os.path.join(ROOT, "launch", "eval.py")
VOCAB = 400  # sentencepiece needs > 272 (specials + bytes) and the HumanEval prompts' characters


def _run(script: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
  # the test process's own XLA flags, so the child compiles the same numerics as in-process code
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, script, *args, "--compile_cache="], capture_output=True,
                        text=True, timeout=timeout, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
  from agentic_jax.data.tokenizer import SentencePieceTokenizer
  from agentic_jax.envs.code import humaneval_tasks
  from agentic_jax.train import loop
  path = str(tmp_path_factory.mktemp("run"))
  texts = [t.prompt + t.canonical_solution for t in humaneval_tasks()[:40]]
  tokenizer = SentencePieceTokenizer.train(texts, VOCAB, seed=0)
  tokenizer.save(os.path.join(path, "tokenizer.model"))
  # HumanEval's prompts need the context: the small model's 64 positions grow to 1024
  config = small_config(**{"model.vocab_size": VOCAB, "model.max_position_embeddings": 1024,
                           "train.num_steps": 2, "checkpoint.every": 2})
  assert loop.run(config, path, handle_signals=False)["status"] == "completed"
  return path


@pytest.fixture(scope="module")
def ends_turns(workdir, tmp_path_factory) -> str:
  """A converted-layout checkpoint whose model ends a turn with probability ~1/4 per step.

  Every embedding row is the same large vector, so the residual stream is ~constant and the
  final norm's output ~ its (positive) weight; an <|end_turn|> column of 0.15 in lm_head then
  gives that token a logit of ~0.15 * hidden_size = 4.8 over the others' ~0, and </s> one of
  ~-32 (never drawn)."""
  import jax
  import orbax.checkpoint as ocp
  from agentic_jax.inference import loading
  info = loading.checkpoint_info(workdir)
  cfg, variables, tokenizer = loading.load_model(workdir)
  params = jax.tree.map(np.array, variables["params"])
  params["embed_tokens"]["embedding"][:] = 100.0
  params["lm_head"]["kernel"][:, tokenizer.special_id("<|end_turn|>")] = 0.15
  params["lm_head"]["kernel"][:, tokenizer.eos_id] = -1.0
  path = str(tmp_path_factory.mktemp("ckpt"))
  mgr = ocp.CheckpointManager(os.path.join(path, "checkpoints"), item_names=("state", "meta"))
  mgr.save(0, args=ocp.args.Composite(
      state=ocp.args.StandardSave({"params": params, "router_state": variables["router_state"]}),
      meta=ocp.args.JsonSave({"config": {"model": info.model_section}})))
  mgr.wait_until_finished()
  mgr.close()
  tokenizer.save(os.path.join(path, "tokenizer.model"))
  return path


def test_pass_at_k_hand_computed():
  from agentic_jax.inference.humaneval import pass_at_k, report_ks
  assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
  assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
  assert pass_at_k(5, 0, 1) == 0.0 and pass_at_k(5, 0, 5) == 0.0
  assert pass_at_k(5, 4, 2) == 1.0 and pass_at_k(3, 1, 3) == 1.0  # n - c < k
  assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(10, 3, 10) == 1.0
  # against the binomials themselves, where they are still small
  from math import comb
  for n, c, k in ((20, 3, 5), (100, 7, 10), (200, 1, 100)):
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), rel=1e-12)
  with pytest.raises(ValueError):
    pass_at_k(2, 3, 1)
  with pytest.raises(ValueError):
    pass_at_k(2, 1, 3)
  assert report_ks(1) == [1] and report_ks(2) == [1, 2] and report_ks(20) == [1, 10, 20]


def test_load_model_reads_the_run(workdir):
  from agentic_jax.inference import loading
  from agentic_jax.train import config as config_lib
  cfg, variables, tokenizer = loading.load_model(workdir)
  config = small_config(**{"model.vocab_size": VOCAB, "model.max_position_embeddings": 1024})
  assert cfg == config_lib.model_config(config.model)
  assert set(variables) == {"params", "router_state"}
  assert tokenizer.vocab_size == VOCAB and loading.checkpoint_info(workdir).step == 2


def test_load_model_reads_a_converted_checkpoint(tmp_path):
  """launch/convert.py's layout (orbax partial saves, hand-written meta, the source's tokenizer
  files copied) loads as convert.load_checkpoint reads it, with the source's tokenizer."""
  import jax
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from agentic_jax.convert.checkpoint import hf_to_checkpoint, load_checkpoint
  from agentic_jax.inference import generate, loading
  torch.manual_seed(0)
  hf = transformers.LongcatFlashForCausalLM(transformers.LongcatFlashConfig(
      vocab_size=VOCAB, hidden_size=32, num_layers=1, num_attention_heads=2,
      ffn_hidden_size=64, expert_ffn_hidden_size=16, n_routed_experts=4, zero_expert_num=2,
      moe_topk=2, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8,
      head_dim=8, v_head_dim=8))
  source, ckpt = str(tmp_path / "hf"), str(tmp_path / "ckpt")
  hf.save_pretrained(source)
  # the source's own tokenizer.json: a byte-level BPE smaller than the model's vocabulary (as
  # released embeddings are padded), without our chat markers (HFTokenizer appends them)
  tokenizers = pytest.importorskip("tokenizers")
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
  bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = tokenizers.decoders.ByteLevel()
  bpe.train_from_iterator(["def add(a, b):\n    return a + b\n"] * 10, tokenizers.trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
  bpe.save(os.path.join(source, "tokenizer.json"))
  with open(os.path.join(source, "tokenizer_config.json"), "w") as f:
    json.dump({"eos_token": "<|endoftext|>"}, f)
  hf_to_checkpoint(source, ckpt, say=lambda _: None)
  cfg, variables, tokenizer = loading.load_model(ckpt)
  want_cfg, want = load_checkpoint(ckpt)
  assert cfg == want_cfg and loading.checkpoint_info(ckpt).step == 0
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), variables, want))
  assert type(tokenizer).__name__ == "HFTokenizer" and tokenizer.vocab_size < cfg.vocab_size
  prompt = generate.plain_prompt(tokenizer, "def add(a, b):")
  assert tokenizer.bos_id not in prompt  # the vocabulary had no <s>: appended, so left out
  result: dict = {}
  text = "".join(generate.stream_text(cfg, variables, tokenizer, prompt, max_new_tokens=24,
                                      temperature=2.0, result=result))
  # the padded embedding rows are never drawn: every id decodes
  assert len(result["tokens"]) >= 1 and max(result["tokens"]) < tokenizer.vocab_size
  assert text == tokenizer.decode(result["tokens"][:-1] if result["stopped"] else result["tokens"])


def test_prompt_ids_outside_the_model_are_refused(workdir):
  """A tokenizer with ids past the model's embedding (chat markers appended to a released
  vocabulary) is refused where a prompt uses them, not when loaded; a <s> the tokenizer had to
  append is left out of plain prompts."""
  from agentic_jax.data.tokenizer import BOS_ID
  from agentic_jax.inference import generate, loading
  info = loading.checkpoint_info(workdir)
  tokenizer = loading.load_tokenizer(workdir)
  small = info.config.replace(vocab_size=16)  # only the specials have rows
  loading.check_ids(small, tokenizer, [BOS_ID, tokenizer.special_id("<|user|>")])
  with pytest.raises(loading.LoadError, match="outside the model's vocabulary"):
    loading.check_ids(small, tokenizer, generate.plain_prompt(tokenizer, "def"))
  assert generate.plain_prompt(tokenizer, "x")[0] == BOS_ID

  class AppendedBos:  # what HFTokenizer reports for a vocabulary that had no <s>
    bos_id, added_tokens = BOS_ID, ["<s>"]
    encode, decode = tokenizer.encode, tokenizer.decode

  assert generate.plain_prompt(AppendedBos(), "x") == tokenizer.encode("x")


def test_streamed_decode_equals_generate(workdir):
  """StreamingDecoder's tokens are sampling.generate's, greedy and sampled, for uneven batches."""
  from agentic_jax import sampling
  from agentic_jax.inference import generate, loading
  cfg, variables, tokenizer = loading.load_model(workdir)
  prompts = [generate.plain_prompt(tokenizer, "def add(a, b):"), [tokenizer.bos_id, 300, 301]]
  for kw in (dict(temperature=0.0), dict(temperature=0.9, top_p=0.8, seed=3)):
    decoder = generate.StreamingDecoder(cfg, variables, prompts, max_new_tokens=12,
                                        eos_id=tokenizer.eos_id, **kw)
    steps = list(decoder)
    assert len(steps) == 12 and steps[0].shape == (2,)
    assert decoder.outputs == sampling.generate(cfg, variables, prompts, 12,
                                                eos_id=tokenizer.eos_id, **kw)
  # wider padding and a longer cache (shared compiled shapes) change nothing
  wide = generate.StreamingDecoder(cfg, variables, prompts, max_new_tokens=12, width=40,
                                   cache_len=64, eos_id=tokenizer.eos_id)
  list(wide)
  assert wide.outputs == sampling.generate(cfg, variables, prompts, 12, eos_id=tokenizer.eos_id)


def test_text_delta_holds_back_partial_characters():
  """Byte-fallback characters span several tokens: no piece shows half a character, and the
  pieces add up to the whole decode."""
  from agentic_jax.data.tokenizer import ByteTokenizer
  from agentic_jax.inference.generate import TextDelta
  tok = ByteTokenizer()
  ids = tok.encode("a€b\né")
  delta = TextDelta(tok)
  pieces = [delta.update(ids[:i]) for i in range(1, len(ids) + 1)]
  assert "".join(pieces) == "a€b\né"
  assert all("\ufffd" not in p for p in pieces) and "" in pieces  # held while € was incomplete


def test_generate_greedy_streams_the_sampling_decode(workdir):
  from agentic_jax import sampling
  from agentic_jax.inference import generate, loading
  args = (f"--workdir={workdir}", "--prompt=def add(a, b):", "--temperature=0",
          "--max_new_tokens=24")
  first, second = _run(GENERATE, *args), _run(GENERATE, *args)
  assert first.returncode == 0, first.stderr[-3000:]
  assert first.stdout == second.stdout and first.stdout.endswith("\n")
  cfg, variables, tokenizer = loading.load_model(workdir)
  prompt = generate.plain_prompt(tokenizer, "def add(a, b):")
  want = sampling.generate(cfg, variables, [prompt], 24, eos_id=tokenizer.eos_id)[0]
  result: dict = {}
  pieces = list(generate.stream_text(cfg, variables, tokenizer, prompt, max_new_tokens=24,
                                     result=result))
  assert result["tokens"] == want  # token for token
  assert len(pieces) > 1  # text arrives piece by piece, not at the end
  text = tokenizer.decode(want[:-1] if want[-1] == tokenizer.eos_id else want)
  assert first.stdout == text + "\n" == "".join(pieces) + "\n"
  assert f"{len(want)} new tokens" in first.stderr


def test_chat_stops_at_end_of_turn(ends_turns):
  from agentic_jax.inference import generate, loading
  args = (f"--ckpt={ends_turns}", "--prompt=hi", "--temperature=1", "--top_p=1",
          "--max_new_tokens=40", "--seed=0")
  chat = _run(GENERATE, *args, "--chat")
  assert chat.returncode == 0, chat.stderr[-3000:]
  assert "stopped by end of turn" in chat.stderr and "<|end_turn|>" not in chat.stdout
  # the same model without --chat: <|end_turn|> is text, the output runs to max_new_tokens
  plain = _run(GENERATE, *args)
  assert plain.returncode == 0, plain.stderr[-3000:]
  assert "40 new tokens" in plain.stderr and "stopped by max_new_tokens" in plain.stderr
  assert "<|end_turn|>" in plain.stdout
  # in-process: the turn's last token is <|end_turn|>, which the text leaves out
  cfg, variables, tokenizer = loading.load_model(ends_turns)
  end = tokenizer.special_id("<|end_turn|>")
  result: dict = {}
  text = "".join(generate.stream_text(
      cfg, variables, tokenizer, generate.chat_prompt(tokenizer, "hi"), max_new_tokens=40,
      temperature=1.0, seed=0, stop_ids=generate.chat_stop_ids(tokenizer), result=result))
  assert result["stopped"] and result["tokens"][-1] == end and end not in result["tokens"][:-1]
  assert len(result["tokens"]) < 40 and chat.stdout == text + "\n"


def test_eval_humaneval_writes_records_and_pass_at_k(workdir, tmp_path):
  from agentic_jax.inference.humaneval import pass_at_k
  out = str(tmp_path / "he.jsonl")
  res = _run(EVAL, f"--workdir={workdir}", "--task=humaneval", "--limit=3", "--samples=2",
             "--max_new_tokens=8", f"--out={out}")
  assert res.returncode == 0, res.stderr[-3000:]
  with open(out) as f:
    records = [json.loads(line) for line in f]
  assert [r["task_id"] for r in records] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
  for r in records:
    assert r["n"] == 2 and r["skipped"] is None and len(r["completions"]) == 2
    assert r["correct"] == sum(c["passed"] for c in r["completions"])
    for c in r["completions"]:
      assert {"completion", "passed", "returncode", "killed_reason", "output"} <= set(c)
      assert 1 <= c["new_tokens"] <= 8
  line = [x for x in res.stdout.splitlines() if x.startswith("humaneval")]
  assert len(line) == 1, res.stdout
  for k in (1, 2):
    want = np.mean([pass_at_k(r["n"], r["correct"], k) for r in records])
    assert f"pass@{k}={want:.4f}" in line[0]
  assert "3 problems x 2 samples" in line[0]


def test_evaluate_counts_passes_and_too_long_prompts(workdir, monkeypatch):
  """The aggregation with a stand-in sandbox (HumanEval/0 always passes, the rest fail) and a
  context that HumanEval/1's prompt does not fit."""
  from agentic_jax.envs.code import humaneval_tasks
  from agentic_jax.inference import humaneval, loading
  cfg, variables, tokenizer = loading.load_model(workdir)
  tasks = humaneval_tasks()[:3]
  lengths = [len(humaneval.prompt_ids(tokenizer, t, False)) for t in tasks]
  limit = lengths[0] + 8  # HumanEval/0 fits with 8 new tokens, the longer one does not
  assert lengths[1] > lengths[0]
  seen = []

  def fake_score(task, code, **_):
    seen.append((task.id, code))
    return {"passed": task.id == "HumanEval/0", "killed_reason": None, "returncode": 0,
            "output": ""}

  monkeypatch.setattr(humaneval, "score", fake_score)
  progress = []
  summary = humaneval.evaluate(
      cfg.replace(max_position_embeddings=limit), variables, tokenizer, tasks, samples=3,
      temperature=1.0, max_new_tokens=8, batch_size=4,
      progress=lambda done, post: progress.append(done))
  fits = [n + 8 <= limit for n in lengths]
  assert summary["skipped_too_long"] == fits.count(False) and fits[0] and not fits[1]
  assert len(seen) == 3 * fits.count(True) == summary["completions"]
  assert summary["pass@1"] == pytest.approx(1 / 3) and summary["pass@3"] == pytest.approx(1 / 3)
  assert progress == [1, 2, 3]


def test_sandbox_scores_the_canonical_solution():
  from agentic_jax.envs.code import humaneval_tasks
  from agentic_jax.inference import humaneval
  task = humaneval_tasks()[0]
  assert humaneval.score(task, task.canonical_solution, timeout_s=10, allow_unisolated=False)[
      "passed"]
  wrong = humaneval.score(task, "    return None\n", timeout_s=10, allow_unisolated=False)
  assert not wrong["passed"] and "AssertionError" in wrong["output"]
  assert humaneval.truncate_at_stop("    return 1\n\ndef other():\n") == "    return 1\n"


@pytest.mark.parametrize("script,args,expect", [
    (GENERATE, ["--workdir={missing}", "--prompt=x"], "no such directory"),
    (GENERATE, ["--workdir={empty}", "--prompt=x"], "no checkpoint"),
    (GENERATE, ["--ckpt={notok}", "--prompt=x"], "no tokenizer"),
    (GENERATE, ["--ckpt={run}", "--workdir={run}", "--prompt=x"], "exactly one"),
    (GENERATE, ["--workdir={run}", "--prompt=x", "--max_new_tokens=5000"], "max_position"),
    (GENERATE, ["--workdir={run}", "--prompt=x", "--max_new_tokens=many"], "--max_new_tokens"),
    (EVAL, ["--workdir={run}", "--task=mbpp"], "not a known task"),
    (EVAL, ["--workdir={run}", "--samples=2", "--temperature=0"], "identical completions"),
    (EVAL, ["--workdir={empty}"], "no checkpoint"),
])
def test_bad_input_is_one_line_and_exit_2(workdir, tmp_path, script, args, expect):
  empty = tmp_path / "empty"
  empty.mkdir()
  notok = tmp_path / "notok"  # a checkpoint but no tokenizer beside it
  notok.mkdir()
  os.symlink(os.path.join(workdir, "checkpoints"), notok / "checkpoints")
  paths = dict(missing=tmp_path / "nope", empty=empty, notok=notok, run=workdir)
  res = _run(script, *[a.format(**paths) for a in args], timeout=60)
  assert res.returncode == 2, (res.stdout, res.stderr)
  lines = res.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], res.stderr
  assert res.stdout == ""
