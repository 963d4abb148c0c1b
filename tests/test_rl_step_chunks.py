"""rl/step.py runs the reference (and old_logp="recompute") forwards in rl.minibatches
interleaved row blocks (map_row_blocks): the step's values equal one forward over all rows,
its compiled temporaries no longer hold every row's logits, and on an 8-device mesh every
device computes its own rows of every block in place (no collective) and the sharded step
equals one device."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic_jax.rl import step as step_lib
from tests.rl_fixtures import FLOW_ROWS, T, make_batch, pack, rl_test_config, setup
from tests.train_fixtures import ROOT


def test_map_row_blocks_interleaves_and_restores_the_row_order():
  rows = {"a": jnp.arange(12), "b": jnp.arange(24.0).reshape(12, 2)}
  seen = []

  def first_row_of_block(r):  # every row of a block gets the block's first row id
    seen.append(r["a"].shape)
    return jnp.broadcast_to(r["a"][:1], r["a"].shape)

  # 3 blocks: row r lies in block r % 3, whose first row is row r % 3
  got = step_lib.map_row_blocks(first_row_of_block, rows, 3)
  np.testing.assert_array_equal(got, np.arange(12) % 3)
  assert seen == [(4,)]  # traced once, on blocks of 12 / 3 rows
  same = step_lib.map_row_blocks(lambda r: {"b": r["b"] * 2, "a": r["a"] + 1}, rows, 4)
  np.testing.assert_array_equal(same["b"], np.arange(24.0).reshape(12, 2) * 2)
  np.testing.assert_array_equal(same["a"], np.arange(12) + 1)
  # rows not a multiple of the block count, or one block: one call over all rows
  for blocks in (5, 1):
    seen.clear()
    got = step_lib.map_row_blocks(first_row_of_block, rows, blocks)
    assert seen == [(12,)] and np.all(np.asarray(got) == 0)


# rows x T x vocab f32 logits of one forward over all 64 packed rows: 16 MiB, several times
# what the update of one 8-row minibatch holds (its logits, their gradient, params-sized
# buffers of the 8192 x 32 embedding and head)
VOCAB_BIG, ROWS, MINIBATCHES = 8192, 64, 8


@pytest.mark.parametrize("old_logp", ["sampler", "recompute"])
def test_chunked_step_equals_one_forward_and_holds_fewer_logits(old_logp):
  config = rl_test_config("flow_grpo", **{"rl.old_logp": old_logp,
                                          "rl.minibatches": MINIBATCHES,
                                          "model.vocab_size": VOCAB_BIG})
  model_cfg, state, ref = setup(config, seed=1)
  b = make_batch(FLOW_ROWS, seed=3)
  # sampler log-probs off by a row-dependent amount: a row-order slip would show in the
  # old_logp metrics of "recompute" and in the ratios of "sampler"
  b["old_logp"] = np.where(b["mask"] > 0, -2.0 - 0.1 * np.arange(len(FLOW_ROWS))[:, None],
                           0).astype(np.float32)
  packed = pack(b, row_bucket=ROWS)
  assert packed["inputs"].shape == (ROWS, T)
  runs, temp = {}, {}
  for chunks in (None, 1):  # None: config.rl.minibatches blocks
    step = jax.jit(step_lib.make_rl_step(model_cfg, config, logp_chunks=chunks))
    temp[chunks] = step.lower(state, ref, packed).compile().memory_analysis().temp_size_in_bytes
    runs[chunks] = step(state, ref, packed)
  logits = ROWS * T * VOCAB_BIG * 4
  # one forward holds every row's logits at once; the chunked step never does
  assert temp[None] < logits <= temp[1], (temp, logits)
  (s1, m1), (s0, m0) = runs[None], runs[1]
  assert int(m1["updates"]) > 0 and float(m1["kl"]) > 0
  for k in m0:
    # atol 1e-6: the loss is a near-cancelling sum (~5e-5 from per-token terms of order 1);
    # with jax 0.12 on an AVX-512 Xeon the two programs' summation orders differ by 3e-7
    np.testing.assert_allclose(float(m1[k]), float(m0[k]), rtol=1e-6, atol=1e-6, err_msg=k)
  # params: 1e-6 is a thousandth of one AdamW step at lr 1e-3 (float rounding of the
  # log-probs, summed in another order over 8 rows than over 64, moves near-zero moments)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y),
                                                       rtol=1e-6, atol=1e-6),
               s1.params, s0.params)


def test_bad_logp_chunks_is_named():
  config = rl_test_config()
  from agentic_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match="logp_chunks"):
    step_lib.make_rl_step(config_lib.model_config(config.model), config, logp_chunks=0)


# 8 fake CPU devices: XLA_FLAGS must be set before JAX starts, so this runs in a subprocess
_MESH_CHECK = """
import re, sys
sys.path.insert(0, {root!r})
import jax, numpy as np
from agentic_jax import models, parallel
from agentic_jax.rl import loop, step as step_lib
from agentic_jax.train import optim as optim_lib, state as state_lib
from tests.rl_fixtures import FLOW_ROWS, make_batch, pack, rl_test_config, setup
assert jax.device_count() == 8
COLLECTIVE = re.compile(r"(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)")

# 1. The reference forward alone on a data=8 mesh (params replicated, rows split 8 ways):
# with interleaved blocks each device computes its own 16 / (8 x 2) = 1 row of each block
# with no collective at all; contiguous blocks (rows 0-7, 8-15) lie on half the devices each
# and need rows moved between devices.
config = rl_test_config("flow_grpo")
model_cfg, _, ref = setup(config, seed=1)
model = models.build(model_cfg)
rows = pack(make_batch(FLOW_ROWS * 2, seed=3), row_bucket=16)
rows = {{k: rows[k] for k in step_lib.TOKEN_KEYS + ("index",)}}
f = rows["inputs"].shape[0]
assert f == 16
mesh = parallel.make_mesh({{"data": 8}})

def block(variables, r):
  return step_lib.gather_samples(step_lib.token_logp(model, variables, r)[0], r["index"])

def contiguous(fn, r, k):
  out = jax.lax.map(fn, jax.tree.map(lambda x: x.reshape((k, f // k) + x.shape[1:]), r))
  return out.reshape((f,) + out.shape[2:])

ways = {{"one": lambda v, r: block(v, r),
        "interleaved": lambda v, r: step_lib.map_row_blocks(lambda x: block(v, x), r, 2),
        "contiguous": lambda v, r: contiguous(lambda x: block(v, x), r, 2)}}
in_sh = (parallel.variable_shardings(model_cfg, mesh),
         {{k: parallel.batch_sharding(mesh, ndim=np.ndim(x)) for k, x in rows.items()}})
out = {{}}
with jax.set_mesh(mesh):
  for name, fn in ways.items():
    jitted = parallel.jit_sharded(fn, mesh, in_shardings=in_sh,
                                  out_shardings=parallel.batch_sharding(mesh, ndim=3))
    hlo = jitted.jitted.lower(ref, rows).compile().as_text()
    heads = {{tuple(int(d) for d in s.split(",")) for s in
             re.findall(r"f32\\[([0-9,]+)\\]\\S* dot\\(", hlo)}}
    vocab_rows = sorted(s[0] for s in heads if s[-1] == model_cfg.vocab_size and len(s) == 2)
    out[name] = (np.asarray(jitted(*jax.device_put((ref, rows), in_sh))),
                 sorted(set(COLLECTIVE.findall(hlo))), vocab_rows)
    print(name, out[name][1:])
T = rows["inputs"].shape[1]
assert out["one"][1] == [] and out["one"][2] == [2 * T], out["one"][1:]  # 2 rows per device
assert out["interleaved"][1] == [] and out["interleaved"][2] == [T], out["interleaved"][1:]
assert out["contiguous"][1], "contiguous blocks should need collectives"
np.testing.assert_allclose(out["interleaved"][0], out["one"][0], rtol=1e-6, atol=1e-6)

# 2. The whole step, old_logp="recompute" (both forwards chunked), on data 2 x fsdp 2 x
# tensor 2 as the RL loop places it, equals one device with one forward over all rows.
config = rl_test_config("flow_grpo", **{{"rl.minibatches": 2, "rl.row_bucket": 8,
                                        "rl.old_logp": "recompute", "mesh.data": 2,
                                        "mesh.fsdp": 2, "mesh.tensor": 2}})
model_cfg, state, ref = setup(config, seed=1)
packed = pack(make_batch(FLOW_ROWS, seed=3), row_bucket=8)
s1, m1 = jax.jit(step_lib.make_rl_step(model_cfg, config, logp_chunks=1))(state, ref, packed)
step_fn = step_lib.make_rl_step(model_cfg, config)
abstract = state_lib.abstract_state(model_cfg, optim_lib.make_optimizer(config.optim), 1)
place = loop._Placement(config, model_cfg, abstract)
assert dict(place.mesh.shape) == {{"data": 2, "fsdp": 2, "tensor": 2, "expert": 1}}
rv = place.put_variables(ref)
s2, m2 = place.jit(step_fn, rv, packed)(jax.device_put(state, place.state), rv,
                                         place.put_batch(packed))
assert int(m1["updates"]) == 2 and float(m1["kl"]) > 0
for k in m1:
  np.testing.assert_allclose(float(m2[k]), float(m1[k]), rtol=1e-5, atol=1e-6, err_msg=k)
jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4,
                                                     atol=1e-6), s1.params, s2.params)
print("MESH OK")
"""


def test_chunks_on_an_eight_device_mesh():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, "-c", _MESH_CHECK.format(root=ROOT)], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0 and "MESH OK" in proc.stdout, (proc.stdout[-2000:]
                                                             + proc.stderr[-3000:])
