"""Starting a run from another run's parameters (config.init_from).

    loaded = load(config.init_from, model_cfg, config.model.to_dict())   # latest checkpoint
    loaded.variables      # {"params", "router_state"?}, on one device or in `shardings`
    state = fresh_state(loaded.variables, model_cfg, tx, config.seed, state_shardings)

`init_from` is the WORKDIR of a previous mid-training or RL run. What is taken from it is the
model: the params and the MoE router biases (router_state) of a checkpoint, by default its
latest. Everything else starts fresh: the optimizer state (a new run has its own schedule and
its moments belong to another objective), the step (0) and the step rng (config.seed).

Both loops use it: train/loop.py when its own WORKDIR has no checkpoint yet (mid-training from
an earlier mid-training, e.g. a second data stage) and rl/loop.py for its initial and
reference variables. It lives in train/ because train never imports rl (tests/test_layering.py).

The checkpoint must fit the model the config builds. The parameter tree's shapes are compared
with orbax's metadata BEFORE anything is loaded; a mismatch is a ConfigError naming the
config.model fields that differ from the checkpoint's config (the shape-changing ones first).
Only params and router_state are read (orbax partial restore), each leaf straight into the
layout of `shardings` when given (the sharded loop), else onto the first local device, and cast
to the dtypes the config builds.

The tokenizer. Parameters only make sense with the tokenizer they were trained with (the same
id means the same piece), so `tokenizer_files` finds init_from's WORKDIR/tokenizer.model (the
one a run trains when config.data.tokenizer.path is "") or a converted checkpoint's
tokenizer.json (with our marker map), and `adopt_tokenizer` copies them into the new WORKDIR,
where the data pipeline and every later resume find them.

A converted Hugging Face checkpoint (launch/convert.py) has a WORKDIR's layout, so it is an
init_from like any run; `configs/*.py:VARIANT,init_from=CKPT_DIR` takes config.model from it.
"""

from __future__ import annotations

import json
from typing import Any, Callable, NamedTuple, Optional

import jax

from agentic_jax import fs, models
from agentic_jax.train.config import ConfigError

TOKENIZER_FILE = "tokenizer.model"  # data/tokenizer.py find_or_train's SAVED_NAME
# Model fields that change the parameter tree: named first when the shapes do not fit.
SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_attention_heads", "q_lora_rank",
                "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                "intermediate_size", "n_routed_experts", "zero_expert_num",
                "moe_intermediate_size", "layer_type", "tie_word_embeddings", "scan_layers",
                "num_key_value_heads", "head_dim", "loop_num")
_ITEMS = ("params", "router_state")


class Loaded(NamedTuple):
  """What `load` read (a tuple, so `variables, step, config = load(...)` works too)."""
  variables: dict  # {"params", "router_state"?}
  step: int  # the checkpoint's step
  config: dict  # the config the checkpoint was written under (its meta)


def checkpoint_steps(workdir: str) -> list[int]:
  """Steps of the checkpoints in WORKDIR/checkpoints (step-numbered directories), ascending;
  [] when there is none. Directories moved aside (<step>.corrupt-<time>) and orbax's
  temporaries do not count."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  directory = fs.join(workdir, "checkpoints")
  if not fs.isdir(directory):
    return []
  # orbax's own listing: finalized steps only, on disk (renamed into place) and on object
  # storage (a commit_success marker) alike
  return sorted(s for s in ocp.utils.checkpoint_steps(directory))


def _shapes(tree: Any) -> dict[str, tuple]:
  return {jax.tree_util.keystr(p): tuple(x.shape)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _model_diff(theirs: dict, ours: dict) -> list[str]:
  ours = json.loads(json.dumps(dict(ours), default=str))  # tuples -> lists, as in the meta JSON
  return [f"{k}: {theirs.get(k)!r} (init_from) vs {ours.get(k)!r} (config.model)"
          for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]


def load(path: str, model_cfg: models.ModelConfig, model_section: dict,
         step: Optional[int] = None, *, shardings: Optional[dict] = None,
         say: Callable[[str], None] = print) -> Loaded:
  """The params and router_state of checkpoint `step` (default: the latest) of the run in
  WORKDIR `path` (module doc). `model_section` is this config's model section (its fields are
  compared with the checkpoint's to explain a mismatch); `shardings` maps "params" /
  "router_state" to sharding trees of the model's variables. FileNotFoundError when there is
  no such checkpoint; ConfigError when its parameters do not fit `model_cfg`."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from etils import epath  # pylint: disable=import-outside-toplevel  (orbax's path type)
  directory = fs.join(fs.resolve(path), "checkpoints")
  steps = checkpoint_steps(path)
  if not steps:
    raise FileNotFoundError(f"config.init_from={path!r}: no checkpoints in {directory}")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise FileNotFoundError(f"config.init_from={path!r}: checkpoint step {step} (the reference "
                            f"this run started from) is gone; found {steps}")
  meta = json.loads(fs.read_text(fs.join(directory, str(step), "meta", "metadata")))
  diff = _model_diff(meta.get("config", {}).get("model", {}), model_section)
  state_dir = fs.join(directory, str(step), "state")
  saved = ocp.StandardCheckpointHandler().metadata(epath.Path(state_dir)).tree
  # A checkpoint in the other layer layout (a converted checkpoint is unscanned; a full config
  # scans): read in its layout onto the host, restack, then place - the whole model passes
  # through host memory once, which the same-layout path avoids.
  saved_scan = bool(meta.get("config", {}).get("model", {}).get("scan_layers",
                                                                model_cfg.scan_layers))
  if saved_scan != model_cfg.scan_layers:
    layout = model_cfg.replace(scan_layers=saved_scan)
    loaded = load(path, layout, {**dict(model_section), "scan_layers": saved_scan}, step,
                  say=say)
    restack = models.scan_variables if model_cfg.scan_layers else models.unscan_variables
    variables = restack(model_cfg if model_cfg.scan_layers else layout, loaded.variables)
    if shardings is not None:
      variables = {k: jax.device_put(v, shardings[k]) for k, v in variables.items()}
    say(f"[init] {path}: {'unscanned' if not saved_scan else 'scanned'} layers restacked for "
        f"scan_layers={model_cfg.scan_layers}")
    return Loaded(variables, loaded.step, loaded.config)
  want = models.abstract_variables(model_cfg)
  # router_state only where this model has one (as the RL loop always did): a dense model
  # taking a MoE checkpoint fails on its params anyway
  items = [k for k in _ITEMS if k == "params" or want.get(k)]
  if any(_shapes(saved.get(k) or {}) != _shapes(want[k]) for k in items):
    shaping = [d for d in diff if d.split(":")[0] in SHAPE_FIELDS]
    raise ConfigError(
        f"config.init_from={path!r}: its parameters do not fit config.model; differing fields: "
        f"{'; '.join(shaping or diff) or 'none (tree differs)'} (to take the model from the "
        f"checkpoint: --config=configs/FILE.py:VARIANT,init_from={path})")
  if diff:
    say("[init] config.model differs from init_from's in non-shape fields: " + "; ".join(diff))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = {}
  for k in items:
    where = shardings[k] if shardings is not None else jax.tree.map(lambda _: device, want[k])
    target[k] = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                             want[k], where)
  # partial: the checkpoint also holds opt_state, step, rng, ... which a new run does not take
  restored = ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True))
  return Loaded({k: restored[k] for k in items}, step, meta.get("config", {}))


def fresh_state(variables: dict, model_cfg: models.ModelConfig, tx: Any, seed: int,
                shardings: Any) -> Any:
  """state.init_state(model_cfg, tx, seed) with `variables` as its params / router_state and an
  optimizer state initialised on them: step 0, the step rng of config.seed. Built by one jit
  whose outputs have `shardings` (a TrainState of shardings, the loop's layout) like
  state.init_sharded_state, so it compiles the step to the same program as a fresh run; the
  random init inside is dead code and never runs. `variables` are donated."""
  from agentic_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel
  mesh = jax.tree.leaves(shardings)[0].mesh

  def build(params, router_state):
    fresh = state_lib.init_state(model_cfg, tx, seed)
    return fresh.replace(params=params, opt_state=tx.init(params),
                         router_state=router_state if router_state else fresh.router_state)

  with jax.set_mesh(mesh):
    return jax.jit(build, out_shardings=shardings, donate_argnums=(0, 1))(
        variables["params"], variables.get("router_state", {}))


# A converted Hugging Face checkpoint's tokenizer (convert/checkpoint.py): tokenizer.json with
# our marker map beside it, and the files that name its special tokens.
HF_CONFIG_FILE = "hf_config.json"  # convert/checkpoint.py's copy of the source config.json
HF_TOKENIZER_FILES = ("tokenizer.json", "agentic_jax_tokenizer.json", "tokenizer_config.json",
                      "special_tokens_map.json", "chat_template.jinja")


def tokenizer_files(path: str) -> list[str]:
  """init_from's tokenizer: [WORKDIR/tokenizer.model] (ours), else the tokenizer.json files of
  a converted checkpoint, else [] (it was given a file in config.data.tokenizer.path, or used
  synthetic data)."""
  ours = fs.join(path, TOKENIZER_FILE)
  if fs.isfile(ours):
    return [ours]
  if fs.isfile(fs.join(path, HF_TOKENIZER_FILES[0])):
    return [fs.join(path, f) for f in HF_TOKENIZER_FILES if fs.isfile(fs.join(path, f))]
  return []


def tokenizer_file(path: str) -> Optional[str]:
  """The main file of init_from's tokenizer (tokenizer.model or tokenizer.json), or None."""
  files = tokenizer_files(path)
  return files[0] if files else None


def adopt_tokenizer(path: str, workdir: str) -> str:
  """Copies init_from's tokenizer files into `workdir` (where build_input and later resumes
  look) and returns the main copy's path. Copies already there with the same bytes are kept;
  one with other bytes is a ConfigError (those parameters do not go with it); none in
  init_from is a ConfigError saying what to set instead."""
  files = tokenizer_files(path)
  if not files:
    raise ConfigError(
        f"config.init_from: {path!r} has no {TOKENIZER_FILE} (nor a converted checkpoint's "
        "tokenizer.json) and config.data.tokenizer.path is empty: set config.data.tokenizer."
        "path to the tokenizer that run used (its own config.data.tokenizer.path); a new "
        "tokenizer would not fit its parameters")
  copies = []
  for theirs in files:
    ours = fs.join(workdir, theirs.rsplit("/", 1)[-1])
    if fs.exists(ours) and fs.read_bytes(ours) != fs.read_bytes(theirs):
      raise ConfigError(
          f"config.init_from: {ours} differs from {theirs}, the tokenizer init_from's "
          f"parameters were trained with; remove {ours} or use another WORKDIR")
    copies.append((theirs, ours))
  fs.makedirs(workdir)
  for theirs, ours in copies:
    if not fs.exists(ours):
      fs.copy(theirs, ours)  # atomic: a crash leaves no half-written tokenizer
  # a converted checkpoint's source config.json travels with it, so exporting this run
  # (launch/convert.py --from_ckpt) keeps the fields we do not own (token ids, MTP, ...)
  hf_config = fs.join(path, HF_CONFIG_FILE)
  if fs.exists(hf_config) and not fs.exists(fs.join(workdir, HF_CONFIG_FILE)):
    fs.copy(hf_config, fs.join(workdir, HF_CONFIG_FILE))
  return copies[0][1]


def summary_entry(path: str, step: int) -> dict:
  """summary.json's / the checkpoint meta's record of where the params came from."""
  return {"path": fs.resolve(path), "step": int(step)}
