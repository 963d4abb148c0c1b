"""One process of tests/test_distributed.py: a sharded forward and 3 SGD steps of tiny LongCat.

    # two processes x 4 fake CPU devices, joined by jax.distributed (gloo collectives)
    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/distributed_worker.py \
        OUT.npz --coordinator_address=localhost:PORT --num_processes=2 --process_id=I
    # the reference: one process x 8 devices
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/distributed_worker.py OUT.npz

Both build the same global batch from a fixed seed; each process feeds only the rows its
devices hold (parallel.host_local_batch_to_global). Process 0 writes logits, losses and the
final params to OUT.npz (gathered from all processes).
"""

from __future__ import annotations

import argparse
import sys

from agentic_jax.parallel import distributed  # no backend touched by this import


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("out")
  ap.add_argument("--coordinator_address")
  ap.add_argument("--num_processes", type=int)
  ap.add_argument("--process_id", type=int)
  args = ap.parse_args()
  # FIRST, before anything creates a backend.
  info = distributed.initialize_distributed(args.coordinator_address, args.num_processes,
                                            args.process_id, initialization_timeout=120)

  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from jax.experimental import multihost_utils
  from jax.sharding import NamedSharding, PartitionSpec as P

  from agentic_jax import models, parallel
  from agentic_jax.parallel.rules import path_str

  assert jax.device_count() == 8 and jax.process_count() == info.num_processes, (
      jax.device_count(), jax.process_count())
  cfg = models.presets.get("longcat_flash_tiny")
  module = models.build(cfg)
  mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  batch_sh = parallel.batch_sharding(mesh, batch_size=8)

  # The global batch, identical in every process; each keeps only its devices' rows.
  global_tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (8, 16)).astype(np.int32)
  rows = sorted({idx[0].indices(8)[:2] for idx in
                 batch_sh.addressable_devices_indices_map(global_tokens.shape).values()})
  lo, hi = rows[0][0], rows[-1][1]
  assert all(b == c for (_, b), (c, _) in zip(rows, rows[1:])), f"rows not contiguous: {rows}"
  tokens = parallel.host_local_batch_to_global(global_tokens[lo:hi], batch_sh)
  assert tokens.shape == (8, 16), tokens.shape

  variables = parallel.shard_init(cfg, jax.random.key(0), mesh)
  params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  var_sh = parallel.variable_shardings(cfg, mesh)
  logits = parallel.sharded_forward(cfg, mesh)(
      variables, tokens, parallel.host_local_batch_to_global(np.ones((hi - lo, 16), np.int32), batch_sh),
      parallel.host_local_batch_to_global(np.tile(np.arange(16, dtype=np.int32), (hi - lo, 1)), batch_sh))

  tx = optax.sgd(0.5)
  opt_state = tx.init(params)  # sgd without momentum: empty state

  def step(params, opt_state, rest, tokens):
    def loss_fn(p):
      logp = jax.nn.log_softmax(module.apply({"params": p, **rest}, tokens))
      targets = jnp.roll(tokens, -1, axis=1)
      return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], -1))
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rest_sh = {k: var_sh[k] for k in rest}
  train_step = parallel.jit_sharded(
      step, mesh, in_shardings=(var_sh["params"], None, rest_sh, batch_sh),
      out_shardings=(var_sh["params"], None, NamedSharding(mesh, P())), donate_argnums=(0,))
  losses = []
  for _ in range(3):
    params, opt_state, loss = train_step(params, opt_state, rest, tokens)
    losses.append(float(loss.addressable_data(0)))  # replicated: every process holds it

  gathered = {"logits": multihost_utils.process_allgather(logits, tiled=True),
              "losses": np.array(losses, np.float64)}
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    gathered["param:" + path_str(path)] = multihost_utils.process_allgather(x, tiled=True)
  if jax.process_index() == 0:
    np.savez(args.out, **gathered)
  print(f"process {jax.process_index()}/{jax.process_count()} rows [{lo}:{hi}) "
        f"losses {gathered['losses'].tolist()}", flush=True)
  if info.initialized:
    jax.distributed.shutdown()


if __name__ == "__main__":
  sys.exit(main())
