"""transformers <-> agentic_jax weight conversion for LongCat-Flash, DeepSeek-V3, Youtu-LLM and
IQuest-Coder (`iquestcoder`, i.e. LlamaForCausalLM; the Loop model's `iquestloopcoder` config
with its `model.gate_projections.*` from a state dict).

    cfg, variables = from_hf(torch_model)              # unscanned layout
    logits = agentic_jax.models.build(cfg).apply(variables, tokens)
    state_dict = to_hf_state_dict(cfg, variables)      # numpy, torch names, [out, in]

Every HF tensor is consumed exactly once (the tied lm_head is checked to equal the
embedding) and every variable of ours is produced exactly once; anything missing, left over
or misshapen raises with the names. The only data dropped on purpose are the dead rows of
LongCat's `experts.gate_up_proj` (allocated for zero experts, never read by transformers).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from agentic_jax.convert import mapping
from agentic_jax.convert.hf_config import config_from_hf
from agentic_jax.models import ModelConfig, abstract_variables, scan_variables, unscan_variables
from agentic_jax.models.model import layer_groups

_SEP = "/"


def _to_numpy(x: Any) -> np.ndarray:
  """torch tensor / array -> float32 (or integer) numpy; bf16 and fp64 go through float32."""
  if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
    x = x.detach().cpu()
    if x.is_floating_point():
      x = x.float()
    return x.numpy()
  x = np.asarray(x)
  return x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) or x.dtype.kind == "V" else x


def _fmt_names(names) -> str:
  names = sorted(names)
  return ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")


def from_hf_state_dict(hf_config: Any, state_dict: Mapping[str, Any], *, scan_layers: bool = False,
                       **overrides: Any) -> tuple[ModelConfig, dict]:
  """Like `from_hf`, from a transformers config and a state dict (torch tensors or arrays).
  The MTP module only with num_mtp_layers=D in `overrides` (its tensors then in the state
  dict): transformers never builds it, whatever the config's num_nextn_predict_layers says."""
  overrides.setdefault("num_mtp_layers", 0)
  cfg = config_from_hf(hf_config, **overrides).replace(scan_layers=False)
  tensors = {name: _to_numpy(t) for name, t in state_dict.items()}
  flat: dict[str, np.ndarray] = {}
  consumed: set[str] = set()
  missing: list[str] = []
  for e in mapping.entries(cfg):
    if e.hf not in tensors:
      missing.append(e.hf)
      continue
    if e.hf in consumed:
      raise ValueError(f"conversion table maps HF tensor {e.hf!r} twice")
    consumed.add(e.hf)
    if e.alias_of is not None:
      if e.alias_of not in tensors or not np.array_equal(tensors[e.hf], tensors[e.alias_of]):
        raise ValueError(f"{e.hf!r} should be tied to {e.alias_of!r} (tie_word_embeddings=True) "
                         "but differs from it")
      continue
    for path, value in zip(e.ours, e.transform.to_ours(cfg, tensors[e.hf]), strict=True):
      flat[path] = value
  # Zero-size tensors carry nothing (e.g. DeepSeek's shared expert when n_shared_experts=0).
  extra = [n for n in tensors if n not in consumed and tensors[n].size]
  if missing or extra:
    raise ValueError("HF state dict does not match the config: "
                     + (f"missing: {_fmt_names(missing)}. " if missing else "")
                     + (f"unexpected: {_fmt_names(extra)}." if extra else ""))
  _check_against_model(cfg, flat)
  pdt = jnp.dtype(cfg.param_dtype)
  variables = traverse_util.unflatten_dict(
      {tuple(k.split(_SEP)): jnp.asarray(v, jnp.float32 if k.startswith("router_state") else pdt)
       for k, v in flat.items()})
  if scan_layers:
    cfg = cfg.replace(scan_layers=True)
    variables = scan_variables(cfg, variables)
  return cfg, variables


def _check_against_model(cfg: ModelConfig, flat: Mapping[str, np.ndarray]) -> None:
  """Our side: exactly the model's variables, with the model's shapes."""
  expected = {_SEP.join(k): v.shape for k, v in
              traverse_util.flatten_dict(abstract_variables(cfg)).items()}
  missing = set(expected) - set(flat)
  extra = set(flat) - set(expected)
  shapes = [f"{k}: got {flat[k].shape}, model has {expected[k]}"
            for k in sorted(set(expected) & set(flat)) if tuple(flat[k].shape) != tuple(expected[k])]
  if missing or extra or shapes:
    raise ValueError("converted variables do not match the model: "
                     + (f"missing: {_fmt_names(missing)}. " if missing else "")
                     + (f"unexpected: {_fmt_names(extra)}. " if extra else "")
                     + (f"shape mismatch: {'; '.join(shapes)}" if shapes else ""))


def from_hf(torch_model: Any, *, scan_layers: bool = False, **overrides: Any) -> tuple[ModelConfig, dict]:
  """(ModelConfig, variables) for an in-memory LongcatFlash/DeepseekV3/Youtu ForCausalLM, or the
  LlamaForCausalLM that transformers builds for an IQuestCoderConfig.

  variables = {"params": ..., "router_state": ...} (router_state only for MoE models) with
  parameters in cfg.param_dtype and the router correction bias in float32, in the unscanned
  layout (`layers_{i}`), or stacked per layer group when `scan_layers=True`. `overrides` are
  forwarded to the ModelConfig (moe_dispatch, attention_impl, dtype, ...).
  """
  return from_hf_state_dict(torch_model.config, torch_model.state_dict(), scan_layers=scan_layers,
                            **overrides)


def to_hf_state_dict(cfg: ModelConfig, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Inverse of `from_hf`: transformers names and layouts, float32 numpy arrays.

  Accepts either layout. LongCat's fused `gate_up_proj` gets zero rows for the dead
  zero-expert slots so a transformers model's `load_state_dict` accepts it.
  """
  params = variables["params"]
  if any(g.name in params for g in layer_groups(cfg)):
    variables = unscan_variables(cfg, variables)
  cfg = cfg.replace(scan_layers=False)
  flat = {_SEP.join(k): _to_numpy(jax.device_get(v))
          for k, v in traverse_util.flatten_dict(dict(variables)).items()}
  flat = {k: v for k, v in flat.items() if not k.startswith("intermediates")}
  _check_against_model(cfg, flat)
  out: dict[str, np.ndarray] = {}
  used: set[str] = set()
  aliases = []
  for e in mapping.entries(cfg):
    if e.alias_of is not None:
      aliases.append(e)
      continue
    out[e.hf] = np.ascontiguousarray(e.transform.to_hf(cfg, *(flat[p] for p in e.ours)))
    used.update(e.ours)
  for e in aliases:
    out[e.hf] = out[e.alias_of].copy()
  unused = set(flat) - used
  if unused:
    raise ValueError(f"variables not written to the HF state dict: {_fmt_names(unused)}")
  return out
