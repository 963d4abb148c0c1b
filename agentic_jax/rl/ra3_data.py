"""The RA3 job's data (rl/ra3.py): the macro-operation programs in our schema, the tokenizer
trained on their lines, and expert programs tokenized for the E-step (issue 13).

    report = write_data(config, WORKDIR/data)    # corpus.jsonl, base.jsonl, heldout.jsonl
    tokenizer, path = tokenizer_for(config, WORKDIR, WORKDIR/data)
    program, missed = tokenize(sample, tokenizer, "lines")

Files (our schema: a user turn with the task's prompt, an assistant turn with the body):
  corpus.jsonl   the mid-training programs of both arms (ra3_data.seed, train compositions)
  base.jsonl     the base model's pretraining programs (seed + 1): a share base_rationale_rate
                 of their operation blocks preceded by <|think|>PHRASE<|end_think|>
  heldout.jsonl  programs of held-out compositions (seed + 2), for action NLL
  heldout_blocks.json  [line, phrase] of each held-out program's operation blocks (diagnostics)
The tokenizer is trained on every LINE of the texts as a sentence of its own, so no piece spans
a line break and every line start is a token boundary: a rationale inserted at a line start
leaves the tokens around it unchanged. `tokenize` checks that per action start (a start that is
not a token boundary, e.g. with a checkpoint's own tokenizer, is not offered; counted).
"""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np

from agentic_jax import fs

THINK, END_THINK = "<|think|>", "<|end_think|>"
FILES = {"corpus": "corpus.jsonl", "base": "base.jsonl", "heldout": "heldout.jsonl"}
TRUTH_FILE = "heldout_blocks.json"  # the held-out programs' operation blocks (diagnostics)


def env_sample(pid: str, source: str, prompt: str, content: str):
  from agentic_jax.data.schema import EnvSample, Turn  # pylint: disable=import-outside-toplevel
  return EnvSample(pid, source, (Turn("user", prompt), Turn("assistant", content)))


def write_jsonl(path: str, samples) -> None:
  from agentic_jax.data import schema  # pylint: disable=import-outside-toplevel
  fs.write_text(path, "".join(json.dumps(schema.to_record(s)) + "\n" for s in samples))


def read_jsonl(path: str) -> list:
  from agentic_jax.data import schema  # pylint: disable=import-outside-toplevel
  return [schema.parse_record(json.loads(line), file=path, line=i + 1)
          for i, line in enumerate(fs.read_text(path).splitlines()) if line.strip()]


def write_data(config: Any, data_dir: str) -> dict:
  """Stage "data" (module docstring); skipped when its report exists. Returns the report."""
  from agentic_jax.data.builtin import macro_code  # pylint: disable=import-outside-toplevel
  report_path = fs.join(data_dir, "report.json")
  if fs.exists(report_path):
    return json.loads(fs.read_text(report_path))
  d = config.ra3_data
  kw = dict(min_ops=d.min_ops, max_ops=d.max_ops)
  corpus = macro_code.programs(d.seed, d.num_programs, split="train", **kw)
  base = macro_code.programs(d.seed + 1, d.num_base_programs, split="train", **kw)
  heldout = macro_code.programs(d.seed + 2, d.num_heldout, split="eval", **kw)
  rng = random.Random(f"ra3-base-rationales:{d.seed}")
  base_samples, with_rationale, blocks = [], 0, 0
  for p in base:
    parts = []
    for b in p.blocks:
      if b.op != macro_code.RETURN_OP:
        blocks += 1
        if rng.random() < d.base_rationale_rate:
          parts.append(f"{THINK}{b.phrase}{END_THINK}")
          with_rationale += 1
      parts.append("".join(b.lines))
    base_samples.append(env_sample(p.id, "macro_base", p.prompt, "".join(parts)))
  fs.makedirs(data_dir)
  write_jsonl(fs.join(data_dir, FILES["base"]), base_samples)
  write_jsonl(fs.join(data_dir, FILES["corpus"]),
              [env_sample(p.id, "macro", p.prompt, p.body) for p in corpus])
  write_jsonl(fs.join(data_dir, FILES["heldout"]),
              [env_sample(p.id, "macro_heldout", p.prompt, p.body) for p in heldout])
  fs.write_text(fs.join(data_dir, TRUTH_FILE),
                json.dumps({p.id: block_starts(p) for p in heldout}))
  report = {"corpus": len(corpus), "base": len(base), "heldout": len(heldout),
            "base_blocks": blocks, "base_blocks_with_rationale": with_rationale}
  fs.write_text(report_path, json.dumps(report))  # last: its presence marks the stage done
  return report


def block_starts(program: Any) -> list[list]:
  """[line index, phrase] of each operation block of a macro program (the return excluded): the
  ground truth of what a rationale before that line could name (eval diagnostics only)."""
  from agentic_jax.data.builtin import macro_code  # pylint: disable=import-outside-toplevel
  out, line = [], 0
  for b in program.blocks:
    if b.op != macro_code.RETURN_OP:
      out.append([line, b.phrase])
    line += len(b.lines)
  return out


def line_texts(samples) -> list[str]:
  """Every line of the text pieces the renderer tokenizes (data/render.sample_texts), each a
  sentence of its own for tokenizer training (so no piece spans a line break)."""
  from agentic_jax.data.render import sample_texts  # pylint: disable=import-outside-toplevel
  return [line for s in samples for t in sample_texts(s) for line in t.splitlines(True) if line]


def tokenizer_for(config: Any, workdir: str, data_dir: str):
  """The run's tokenizer: config.init_from's (tokenizer.model or tokenizer.json), else
  WORKDIR/tokenizer.model
  (trained on the data's lines the first time)."""
  from agentic_jax.data import tokenizer as tok_lib  # pylint: disable=import-outside-toplevel
  if config.init_from:  # a run's tokenizer.model, or a converted checkpoint's tokenizer.json
    tok = tok_lib.load_from_dir(config.init_from)
    name = tok_lib.SAVED_NAME if fs.exists(fs.join(config.init_from, tok_lib.SAVED_NAME)) else (
        tok_lib.HF_TOKENIZER_NAME)
    return tok, fs.join(config.init_from, name)
  samples = [s for name in ("base", "corpus") for s in read_jsonl(fs.join(data_dir,
                                                                                FILES[name]))]
  tok, report = tok_lib.find_or_train(
      "", workdir, train=lambda: tok_lib.SentencePieceTokenizer.train(
          line_texts(samples), int(config.ra3_data.vocab_size), seed=int(config.ra3_data.seed)))
  return tok, report["path"]


def tokenize(sample, tokenizer: Any, segment_mode: str):
  """An EnvSample (user prompt, assistant body) as an rl/ra3_estep.Program; returns it and the
  number of action starts that are not token boundaries (not offered as decision points)."""
  from agentic_jax.data.render import render  # pylint: disable=import-outside-toplevel
  from agentic_jax.data.segment import segment  # pylint: disable=import-outside-toplevel
  from agentic_jax.rl.ra3_estep import Program  # pylint: disable=import-outside-toplevel
  tokens = render(sample, tokenizer, "all").tokens
  assistant = tokenizer.special_id("<|assistant|>")
  k = int(np.flatnonzero(tokens == assistant)[0])
  prompt, expert = tokens[:k + 1], tokens[k + 1:]
  content = sample.turns[1].content
  segs, _ = segment(content, mode=segment_mode)
  starts, chars, missed = [], [], 0
  for s in segs:
    if s.piece:
      continue
    ids = tokenizer.encode(content[:s.start])
    if np.array_equal(expert[:len(ids)], ids):
      starts.append(len(ids))
      chars.append(s.start)
    else:
      missed += 1
  return Program(sample.id, sample.turns[0].content, content, prompt.astype(np.int32),
                 expert.astype(np.int32), np.asarray(starts, np.int32),
                 np.asarray(chars, np.int32)), missed
