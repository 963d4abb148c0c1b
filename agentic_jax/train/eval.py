"""Held-out evaluation: a pure `eval_step(params, router_state, batch) -> metrics`.

    eval_step = make_eval_step(model_cfg, num_kinds=len(kinds), num_sources=len(sources))
    m = jax.jit(eval_step)(state.params, state.router_state, batch)    # one batch
    record = evaluate(jitted, state.params, state.router_state, batches, kinds, sources)

Per batch, with w = batch["weights"] (mask policy x per-source loss weight; 0 on padding and
on the last token of each segment) and CE the next-token cross-entropy in float32:
  loss            sum(w * CE) / sum(w)
  accuracy        sum(w * [argmax logits == target]) / sum(w)
  loss_by_kind    [num_kinds]    the same ratio per mask kind of the target (batch["target_kind"])
  loss_by_source  [num_sources]  per source (batch["source_id"]); NaN where the weight is 0
plus the sums they are made of (ce_sum, weight_sum, correct_sum, kind_/source_ce_sum,
kind_/source_weight), so `evaluate` can add batches up: its numbers are token-weighted over
the whole eval set, not means of per-batch means. The definition matches the training
metric `loss` (objectives/next_token.py) without the MoE balance terms, which are not a
property of the held-out data. Nothing here writes to the train state: params and router
biases are only read (no sow, no bias update), and the eval batches come from their own
iterator (train/input.py), so a run with evaluation trains exactly like one without.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from agentic_jax import models, parallel
from agentic_jax.models.config import ModelConfig
from agentic_jax.objectives.next_token import argmax_hits

Array = jax.Array
EvalFn = Callable[[Any, Any, Mapping[str, Array]], dict]
_SUM_KEYS = ("ce_sum", "weight_sum", "correct_sum", "kind_ce_sum", "kind_weight",
             "source_ce_sum", "source_weight")


def _ratio(num: Any, den: Any, xp: Any = jnp) -> Any:
  return xp.where(den > 0, num / xp.where(den > 0, den, 1.0), xp.nan)


def make_eval_step(model_cfg: ModelConfig, *, num_kinds: int, num_sources: int) -> EvalFn:
  """The pure eval step for this model (module docstring)."""
  if num_kinds < 1 or num_sources < 1:
    raise ValueError(f"make_eval_step: num_kinds and num_sources must be >= 1, got "
                     f"{num_kinds}, {num_sources}")
  model = models.build(model_cfg)

  def eval_step(params: Any, router_state: Any, batch: Mapping[str, Array]) -> dict:
    variables = {"params": params}
    if router_state:
      variables["router_state"] = router_state
    logits = model.apply(variables, batch["inputs"], batch.get("segment_ids"),
                         batch.get("positions")).astype(jnp.float32)
    targets = batch["targets"].astype(jnp.int32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    w = batch["weights"].astype(jnp.float32)
    correct = argmax_hits(logits, targets)
    out = {"ce_sum": jnp.sum(w * ce), "weight_sum": jnp.sum(w), "correct_sum": jnp.sum(w * correct)}
    for name, key, num in (("kind", "target_kind", num_kinds), ("source", "source_id", num_sources)):
      ids = batch[key].astype(jnp.int32) if key in batch else jnp.zeros_like(targets)
      onehot = jax.nn.one_hot(ids, num, dtype=jnp.float32)  # ids outside [0, num): no group
      out[f"{name}_ce_sum"] = jnp.einsum("bt,btk->k", w * ce, onehot)
      out[f"{name}_weight"] = jnp.einsum("bt,btk->k", w, onehot)
    out.update(_finish(out))
    return out

  return eval_step


def _finish(sums: Mapping[str, Any], xp: Any = jnp) -> dict:
  """Ratios from sums (xp = jnp inside the step, numpy for float64 totals)."""
  return {"loss": _ratio(sums["ce_sum"], sums["weight_sum"], xp),
          "accuracy": _ratio(sums["correct_sum"], sums["weight_sum"], xp),
          "loss_by_kind": _ratio(sums["kind_ce_sum"], sums["kind_weight"], xp),
          "loss_by_source": _ratio(sums["source_ce_sum"], sums["source_weight"], xp)}


def jit_eval_step(eval_step: EvalFn, *, mesh: Optional[jax.sharding.Mesh] = None,
                  params_shardings: Any = None, router_shardings: Any = None,
                  batch_sharding: Any = None, rules: Any = None) -> EvalFn:
  """jax.jit without `mesh`; with it, explicit in/out shardings (metrics replicated) under
  the logical-axis rules, like train/step.jit_train_step. Nothing is donated."""
  if mesh is None:
    return jax.jit(eval_step)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return parallel.jit_sharded(
      eval_step, mesh, in_shardings=(params_shardings, router_shardings, batch_sharding),
      out_shardings=replicated, rules=rules or parallel.DEFAULT_RULES)


def evaluate(eval_fn: EvalFn, params: Any, router_state: Any, batches: Iterable[Mapping[str, Any]],
             kind_names: Sequence[str], source_names: Sequence[str], *,
             prefix: str = "eval_") -> dict:
  """Runs `eval_fn` over `batches` and returns record entries: {prefix}loss,
  {prefix}accuracy, {prefix}loss/kind/<k> and {prefix}loss/source/<s> (only those with
  weight), {prefix}weight (the summed target weight) and {prefix}batches."""
  totals: Optional[dict] = None
  n = 0
  for batch in batches:
    m = jax.device_get(eval_fn(params, router_state, batch))
    sums = {k: np.asarray(m[k], np.float64) for k in _SUM_KEYS}
    totals = sums if totals is None else {k: totals[k] + sums[k] for k in _SUM_KEYS}
    n += 1
  if totals is None:
    raise ValueError("evaluate: no eval batches")
  fin = _finish(totals, np)
  out = {f"{prefix}loss": float(fin["loss"]), f"{prefix}accuracy": float(fin["accuracy"]),
         f"{prefix}weight": float(totals["weight_sum"]), f"{prefix}batches": n}
  for group, names, key in (("kind", kind_names, "kind_weight"),
                            ("source", source_names, "source_weight")):
    values = fin[f"loss_by_{group}"]
    for i, name in enumerate(list(names)[:len(values)]):
      if totals[key][i] > 0:
        out[f"{prefix}loss/{group}/{name}"] = float(values[i])
  return out
