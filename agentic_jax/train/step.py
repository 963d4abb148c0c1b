"""The pure training step: `train_step(state, batch) -> (state, metrics)`.

Built once per run by `make_train_step(model_cfg, config, ...)`; the returned function has
no Python side effects and no host callbacks, so it can be jitted as is
(`jit_train_step`) or, unchanged, with explicit shardings over a mesh
(`jit_train_step(..., mesh=, state_shardings=, batch_sharding=)`).

One step:
  1. key = fold_in(state.rng, state.step) (micro-batch i uses fold_in(key, i));
  2. forward + backward of the registered objective over `optim.grad_accum` equal
     micro-batches (a lax.scan adding gradients; the token-weighted loss terms are
     normalised by the weight sum of the WHOLE batch, so the accumulated gradient equals
     the big-batch gradient);
  3. AdamW update (optim.py) at lr(state.step);
  4. MoE router correction biases updated from this step's measured expert load
     (`moe.bias_update`: "none" | "longcat" | "deepseek"), outside the optimizer;
  5. if the loss or the gradient norm is not finite, params, optimizer state and router
     state are kept as they were, `nan_skips` is incremented and metrics["skipped"] = 1;
     the step counter advances either way (the loop decides whether to halt).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import optax

from agentic_jax import models, objectives, parallel
from agentic_jax.models import balance
from agentic_jax.models.config import ModelConfig
from agentic_jax.train import optim as optim_lib
from agentic_jax.train.state import TrainState, step_key

Array = jax.Array
Batch = Mapping[str, Array]
StepFn = Callable[[TrainState, Batch], tuple[TrainState, dict]]

# How collect_moe_stats' entries combine across micro-batches.
_MOE_SUMS = ("dropped_slots", "expert_rows")
BIAS_UPDATES = ("none", "longcat", "deepseek")


def make_bias_update(model_cfg: ModelConfig, moe: Mapping) -> Optional[Callable]:
  """update(bias, expert_load) per `moe.bias_update`, or None (dense model or "none")."""
  rule = moe["bias_update"]
  if rule not in BIAS_UPDATES:
    raise ValueError(f"moe.bias_update must be one of {BIAS_UPDATES}, got {rule!r}")
  if not model_cfg.is_moe or rule == "none":
    return None
  n, k = model_cfg.n_routed_experts, model_cfg.num_experts_per_tok
  if rule == "deepseek":
    return functools.partial(balance.deepseek_bias_update, n_routed_experts=n, rate=moe["bias_rate"])
  target = moe["target_ffn_per_token"]
  if not 0 < target <= k:
    raise ValueError(f"moe.target_ffn_per_token must be in (0, num_experts_per_tok={k}] for the "
                     f"longcat bias update, got {target}")
  return functools.partial(balance.longcat_bias_update, n_routed_experts=n, top_k=k,
                           target_ffn_per_token=target, rate=moe["bias_rate"])


def loss_options(config: Any, *, num_kinds: int, num_sources: int) -> dict:
  opts = {k: v for k, v in config.objective.items() if k != "name"}
  if config.objective.name == "next_token":
    opts.update(num_kinds=num_kinds, num_sources=num_sources,
                target_ffn_per_token=float(config.moe.target_ffn_per_token))
  return opts


def _loads_only(tree: Any) -> Any:
  """The sown `expert_load` entries of an intermediates tree (what the bias update reads)."""
  if not isinstance(tree, Mapping):
    return None
  out = {}
  for key, val in tree.items():
    if key == "expert_load":
      out[key] = val
    elif isinstance(val, Mapping):
      sub = _loads_only(val)
      if sub:
        out[key] = sub
  return out


def _split_micro(batch: Batch, n: int) -> Batch:
  def split(x):
    if x.shape[0] % n:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by optim.grad_accum={n}")
    return x.reshape((n, x.shape[0] // n) + x.shape[1:])
  return {k: split(v) for k, v in batch.items()}


def make_gradient_fn(model_cfg: ModelConfig, config: Any, *, num_kinds: int, num_sources: int):
  """gradients(params, router_state, batch, key) -> (loss, grads, (aux, moe, loads)) with
  aux/moe/loads stacked over `optim.grad_accum` micro-batches (leading axis)."""
  model = models.build(model_cfg)
  loss_fn = objectives.get_loss(config.objective.name)
  options = loss_options(config, num_kinds=num_kinds, num_sources=num_sources)
  n_micro = int(config.optim.grad_accum)
  if n_micro < 1:
    raise ValueError(f"optim.grad_accum must be >= 1, got {n_micro}")

  def forward(params, router_state, micro, key, normalizer):
    variables = {"params": params}
    if router_state:
      variables["router_state"] = router_state
    logits, mutated = model.apply(
        variables, micro["inputs"], micro.get("segment_ids"), micro.get("positions"),
        mutable=["intermediates"], rngs={"dropout": key})
    inter = mutated.get("intermediates", {})
    loss, aux = loss_fn(logits, inter, micro, model_cfg=model_cfg, options=options,
                        normalizer=normalizer, batch_fraction=1.0 / n_micro)
    return loss, (aux, balance.collect_moe_stats(inter), _loads_only(inter))

  grad_fn = jax.value_and_grad(forward, has_aux=True)

  def gradients(params: Any, router_state: Any, batch: Batch, key: Array):
    normalizer = jnp.sum(batch["weights"].astype(jnp.float32))
    normalizer = jnp.where(normalizer > 0, normalizer, 1.0)  # NaN stays NaN
    if n_micro == 1:
      (loss, aux), grads = grad_fn(params, router_state, batch, jax.random.fold_in(key, 0),
                                   normalizer)
      return loss, grads, jax.tree.map(lambda x: x[None], aux)
    micro = _split_micro(batch, n_micro)

    def body(acc, xs):
      i, mb = xs
      (loss, aux), grads = grad_fn(params, router_state, mb, jax.random.fold_in(key, i),
                                   normalizer)
      return (acc[0] + loss, jax.tree.map(jnp.add, acc[1], grads)), aux

    zeros = jax.tree.map(jnp.zeros_like, params)
    (loss, grads), aux = jax.lax.scan(
        body, (jnp.zeros((), jnp.float32), zeros), (jnp.arange(n_micro), micro))
    return loss, grads, aux

  return gradients


def make_train_step(model_cfg: ModelConfig, config: Any, *, num_kinds: int,
                    num_sources: int) -> StepFn:
  """The step function for `config` (sections objective, optim, moe, train)."""
  gradients = make_gradient_fn(model_cfg, config, num_kinds=num_kinds, num_sources=num_sources)
  tx = optim_lib.make_optimizer(config.optim)
  schedule = optim_lib.schedule_from_config(config)
  bias_update = make_bias_update(model_cfg, config.moe)

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
    key = step_key(state)
    loss, grads, (aux, moe, loads) = gradients(state.params, state.router_state, batch, key)
    grad_norm = optax.tree.norm(grads)
    lr = schedule(state.step)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update(_):
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, optim_lib.apply_lr(updates, lr))
      router_state = state.router_state
      if bias_update is not None and router_state:
        mean_loads = jax.tree.map(lambda x: jnp.mean(x, axis=0), loads)
        router_state = balance.update_router_biases(router_state, mean_loads, bias_update)
      return params, opt_state, router_state

    def skip(_):
      return state.params, state.opt_state, state.router_state

    # A branch, not a select: a good step pays nothing for the check (a per-leaf where
    # over params and optimizer state costs a full extra pass over them).
    params, opt_state, router_state = jax.lax.cond(ok, update, skip, None)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, router_state=router_state,
        nan_skips=state.nan_skips + (~ok).astype(jnp.int32))
    metrics = _metrics(loss, aux, moe, batch, grad_norm, lr, ok, new_state)
    return new_state, metrics

  return train_step


def _metrics(loss, aux, moe, batch, grad_norm, lr, ok, new_state) -> dict:
  """Reduce per-micro-batch aux (leading axis) to step metrics: sums add, MoE means average."""
  summed = {k: jnp.sum(v, axis=0) for k, v in aux.items()}
  weight_sum = summed["weight_sum"]
  denom = jnp.where(weight_sum > 0, weight_sum, 1.0)
  out = {
      "loss": summed["ce_sum"] / denom if "ce_sum" in summed else loss,
      "objective": loss,
      "grad_norm": grad_norm,
      "lr": lr,
      "skipped": (~ok).astype(jnp.int32),
      "nan_skips": new_state.nan_skips,
      "tokens": jnp.asarray(batch["inputs"].size, jnp.int32),
      "target_tokens": jnp.sum(batch["weights"] > 0).astype(jnp.int32),
  }
  if "correct_sum" in summed:
    out["accuracy"] = summed["correct_sum"] / denom
  if "mtp_ce_sum" in summed:  # per-depth MTP cross-entropy [D] (objectives/mtp.py)
    mtp_w = summed["mtp_weight"]
    out["mtp_loss"] = summed["mtp_ce_sum"] / jnp.where(mtp_w > 0, mtp_w, 1.0)
  for k, v in summed.items():
    if k not in ("ce_sum", "correct_sum"):
      out[k] = v
  for k, v in moe.items():
    out[f"moe/{k}"] = jnp.sum(v, axis=0) if k in _MOE_SUMS else jnp.mean(v, axis=0)
  return out


def jit_train_step(step_fn: StepFn, *, donate: bool = True,
                   mesh: Optional[jax.sharding.Mesh] = None, state_shardings: Any = None,
                   batch_sharding: Any = None, rules: Any = None) -> StepFn:
  """The step jitted with the state buffers donated (updated in place).

  Without `mesh`: plain single-device jit. With `mesh`: explicit in_shardings
  (state_shardings, batch_sharding) and out_shardings (state_shardings, metrics replicated),
  traced under the mesh and the logical-axis `rules` so the models' activation constraints
  apply. Either way the result has `.lower(state, batch)` for ahead-of-time compilation."""
  if mesh is None:
    return jax.jit(step_fn, donate_argnums=(0,) if donate else ())
  if state_shardings is None or batch_sharding is None:
    raise ValueError("jit_train_step: a mesh needs state_shardings and batch_sharding")
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  fn = parallel.jit_sharded(
      step_fn, mesh, in_shardings=(state_shardings, batch_sharding),
      out_shardings=(state_shardings, replicated), rules=rules or parallel.DEFAULT_RULES,
      donate_argnums=(0,) if donate else ())
  return _with_lower(fn, mesh)


def _with_lower(fn: Any, mesh: jax.sharding.Mesh) -> Any:
  """Gives a parallel.jit_sharded function a `.lower` that traces under the mesh."""
  def lower(*args, **kwargs):
    with jax.set_mesh(mesh):
      return fn.jitted.lower(*args, **kwargs)
  fn.lower = lower
  return fn
