"""Mesh from config, logical-axis rules, golden sharding tables, and sharded == single-device
forward and gradients on 8 fake CPU devices (in subprocesses: XLA_FLAGS must be set before
JAX starts, and this process has already started it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import PartitionSpec as P

from agentic_jax import models, parallel
from agentic_jax.parallel import distributed, golden
from agentic_jax.parallel.rules import DEFAULT_RULES, ShardingRuleError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "parallel_worker.py")
GOLDEN_DIR = os.path.join(ROOT, "tests", "golden", "sharding")  # the checked-in sharding tables
# 8 devices; LLVM -O0 roughly halves the CPU time of the many small compiles.
XLA_FLAGS = ("--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
             "--xla_llvm_disable_expensive_passes=true")
MULTI_PRESETS = ("longcat_flash_tiny", "deepseek_v3_tiny")


# ------------------------------------------------------------------- mesh


def test_mesh_sizes_fill_and_defaults():
  assert parallel.mesh_sizes({"data": -1, "tensor": 2}, 8) == {
      "data": 4, "fsdp": 1, "tensor": 2, "expert": 1}
  assert parallel.mesh_sizes({}, 1) == {"data": 1, "fsdp": 1, "tensor": 1, "expert": 1}
  assert parallel.mesh_sizes({"data": 2, "fsdp": 2, "tensor": 2, "expert": 1}, 8)["fsdp"] == 2


@pytest.mark.parametrize("config, devices, key", [
    ({"data": 2, "fsdp": 2}, 8, "mesh.data, mesh.fsdp"),  # 4 != 8
    ({"data": -1, "tensor": 3}, 8, "mesh.data=-1"),  # 8 % 3
    ({"data": -1, "fsdp": -1}, 8, "mesh.fsdp"),  # two fills
    ({"tensor": 0}, 8, "mesh.tensor"),
    ({"expert": 2.0}, 8, "mesh.expert"),
    ({"pipeline": 2}, 8, "mesh.pipeline"),
])
def test_mesh_sizes_errors_name_the_key(config, devices, key):
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    parallel.mesh_sizes(config, devices)


def test_make_mesh_from_configdict_uses_auto_axes():
  import ml_collections
  c = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "expert": 1})
  mesh = parallel.make_mesh(c)
  assert mesh.axis_names == ("data", "fsdp", "tensor", "expert")
  assert mesh.devices.shape == (jax.device_count(), 1, 1, 1)
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_parse_mesh_spec():
  assert parallel.parse_mesh_spec("data:8,fsdp:32,expert:16") == {"data": 8, "fsdp": 32, "expert": 16}
  for bad in ("data8", "data:x", "data:2,data:2"):
    with pytest.raises(ValueError, match="--mesh"):
      parallel.parse_mesh_spec(bad)


# ------------------------------------------------------------------ rules

SIZES = {"data": 2, "fsdp": 2, "tensor": 2, "expert": 1}


def test_resolve_by_hand():
  r = lambda names, shape, sizes=SIZES: parallel.resolve(names, shape, sizes, DEFAULT_RULES)
  # embed claims fsdp first (table order), so the q_lora rank falls back to replication ...
  assert r(("embed", "q_lora"), (64, 32)) == P("fsdp", None)
  # ... but in q_b_proj the rank is the only fsdp candidate.
  assert r(("q_lora", "heads", "qk_head_dim"), (32, 4, 24)) == P("fsdp", "tensor", None)
  assert r(("expert", "embed", "expert_mlp"), (4, 64, 32), {"fsdp": 2, "expert": 4}) == \
      P("expert", "fsdp", None)  # tensor has size 1: dropped
  assert r(("activation_batch", "activation_length"), (8, 16)) == P(("data", "fsdp"), None)
  assert r(("layers", "embed"), (3, 64)) == P(None, "fsdp")
  assert r((None, "vocab"), (5, 128)) == P(None, "tensor")


def test_resolve_errors():
  with pytest.raises(ShardingRuleError, match="size 3"):  # 3 heads over tensor=2, no fallback
    parallel.resolve(("heads",), (3,), SIZES, DEFAULT_RULES, where="w")
  with pytest.raises(ShardingRuleError, match="'mystery'"):
    parallel.resolve(("mystery",), (4,), SIZES, DEFAULT_RULES)
  assert parallel.resolve(("kv_lora",), (3,), SIZES, DEFAULT_RULES) == P(None)  # listed fallback


def test_unmatched_param_name_is_an_error():
  cfg = models.presets.get("longcat_flash_tiny")
  rules = tuple(r for r in DEFAULT_RULES if r[0] != "expert_mlp")
  with pytest.raises(ShardingRuleError, match=r"'expert_mlp': used by params/layers_0/mlp/experts"):
    parallel.check_rules(models.logical_axes(cfg), rules)
  with pytest.raises(ShardingRuleError, match="expert_mlp"):
    parallel.variable_specs(cfg, SIZES, rules)


def test_unmatched_activation_name_is_an_error():
  cfg = models.presets.get("deepseek_v3_tiny")
  assert parallel.activation_names(cfg) == {
      "activation_batch", "activation_length", "activation_embed", "activation_mlp",
      "activation_heads", "activation_kv_lora", "activation_vocab"}
  rules = tuple(r for r in DEFAULT_RULES if r[0] != "activation_kv_lora")
  with pytest.raises(ShardingRuleError, match="activation_kv_lora"):
    parallel.variable_specs(cfg, SIZES, rules)


def test_bad_rules_tables():
  with pytest.raises(ShardingRuleError, match="twice"):
    parallel.check_rules({}, DEFAULT_RULES + (("embed", (None,)),))
  with pytest.raises(ShardingRuleError, match="mesh axes"):
    parallel.check_rules({}, (("embed", ("model",)),))


def test_flax_rules_drop_size_one_axes():
  pairs = dict(parallel.flax_rules(DEFAULT_RULES, {"fsdp": 2, "expert": 4}))
  assert pairs["activation_batch"] == ("fsdp", "expert")
  assert pairs["activation_heads"] is None


def test_specs_like_params_for_adamw_state():
  cfg = models.presets.get("deepseek_v3_tiny")
  specs = parallel.variable_specs(cfg, SIZES)
  params = models.abstract_variables(cfg)["params"]
  opt = jax.eval_shape(optax.adamw(1e-3).init, params)
  opt_specs = parallel.specs_like_params(opt, specs)
  mu = opt_specs[0].mu
  assert mu["embed_tokens"]["embedding"] == specs["params"]["embed_tokens"]["embedding"] == \
      P("tensor", "fsdp")
  assert opt_specs[0].count == P()
  extra = {"state": {"rng": jax.ShapeDtypeStruct((2,), jnp.uint32)}}
  with pytest.raises(ShardingRuleError, match="state/rng: shape"):
    parallel.specs_like_params(extra, specs)
  assert parallel.specs_like_params(extra, specs, replicate=("rng",))["state"]["rng"] == P()


# ------------------------------------------------------------ golden tables


@pytest.mark.parametrize("preset, sizes", golden.CASES,
                         ids=[f"{p}__{golden.mesh_name(m)}" for p, m in golden.CASES])
def test_golden_sharding_table(preset, sizes):
  d = golden.diff(preset, sizes, GOLDEN_DIR)
  assert not d, ("sharding changed; if intended, regenerate with `python -m "
                 "agentic_jax.parallel.golden --golden_dir=tests/golden/sharding --write` and "
                 "review the diff:\n" + d)


def test_golden_table_content_by_hand():
  t = golden.table("longcat_flash_tiny", {"data": 2, "fsdp": 2, "tensor": 2})
  assert t["params/embed_tokens/embedding"] == "P('tensor', 'fsdp')"
  assert t["params/layers_1/self_attn_0/o_proj/kernel"] == "P('tensor', None, 'fsdp')"
  assert t["params/layers_0/mlp/experts/down_proj"] == "P(None, 'tensor', 'fsdp')"
  assert t["<batch>"] == "P(('data', 'fsdp'), None)"


# ------------------------------------------------------------- distributed


def test_detect_cluster_from_environment(tmp_path):
  detect = lambda env: distributed.detect_cluster(env, pci_root=str(tmp_path))
  assert detect({}) is None
  assert detect({"TPU_WORKER_HOSTNAMES": "localhost"}) is None
  assert detect({"TPU_WORKER_HOSTNAMES": "10.0.0.1,10.0.0.2"}) == "cloud_tpu"
  assert detect({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) == "slurm"
  assert detect({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
  assert detect({"JAX_COORDINATOR_ADDRESS": "h:1"}) == "env"
  assert detect({"AGENTIC_JAX_DISTRIBUTED": "auto"}) == "requested"
  # A TPU VM: a PCI device with Google's vendor id (what jax's own detection looks for).
  (tmp_path / "0000:00:04.0").mkdir()
  (tmp_path / "0000:00:04.0" / "vendor").write_text("0x8086\n")
  assert detect({}) is None
  (tmp_path / "0000:00:05.0").mkdir()
  (tmp_path / "0000:00:05.0" / "vendor").write_text("0x1ae0\n")
  assert detect({}) == "cloud_tpu"


def test_initialize_distributed_single_host_is_a_noop(monkeypatch):
  for var in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID",
              "AGENTIC_JAX_DISTRIBUTED"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setattr(distributed, "on_cloud_tpu_vm", lambda *a, **k: False)
  info = parallel.initialize_distributed()
  assert (info.process_id, info.num_processes, info.initialized) == (0, 1, False)
  assert parallel.initialize_distributed(num_processes=1).method == "single_host"
  with pytest.raises(ValueError, match="process_id"):
    parallel.initialize_distributed("localhost:1", num_processes=2, process_id=2)


# ------------------------------------------------- 8-device subprocesses


@pytest.fixture(scope="module")
def multi_device_results():
  """Both presets' workers at once (one per core), started on first use."""
  env = dict(os.environ, XLA_FLAGS=XLA_FLAGS, JAX_PLATFORMS="cpu")
  procs = {p: subprocess.Popen([sys.executable, WORKER, p], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for p in MULTI_PRESETS}
  results = {}
  for preset, proc in procs.items():
    out, err = proc.communicate(timeout=600)
    lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"{preset} worker failed:\n{out}\n{err[-5000:]}"
    results[preset] = json.loads(lines[-1][len("RESULT "):])
  return results


@pytest.mark.parametrize("preset", MULTI_PRESETS)
def test_sharded_forward_and_grads_equal_single_device(multi_device_results, preset):
  r = multi_device_results[preset]
  assert r["forward_rel"] <= 1e-5, r["forward_rel"]
  assert r["forward_spec"] == "P(('data', 'fsdp'), None, 'tensor')"
  assert [m["mesh"] for m in r["meshes"]] == [
      {"data": 8}, {"data": 2, "fsdp": 2, "tensor": 2}, {"fsdp": 2, "expert": 4}]
  for m in r["meshes"]:
    assert m["loss_rel"] <= 1e-5 and m["logits_rel"] <= 1e-5, m["mesh"]
    assert m["grad_rel_max"] <= 1e-5, (m["mesh"], m["grad_rel_worst"], m["grad_rel_max"])
    assert m["grad_specs_match"], m["mesh"]


def _trim(spec: list) -> list:
  while spec and spec[-1] is None:
    spec = spec[:-1]
  return spec


@pytest.mark.parametrize("preset", MULTI_PRESETS)
def test_params_are_sharded_as_the_rules_say(multi_device_results, preset):
  r = multi_device_results[preset]
  cfg = models.presets.get(preset)
  for m, shards in [(r["meshes"][1]["mesh"], r["init_shards"])] + [
      (x["mesh"], x["shards"]) for x in r["meshes"]]:
    sizes = parallel.axis_sizes(m)
    specs = parallel.variable_specs(cfg, sizes, check=False)
    flat = {parallel.rules.path_str(p): s for p, s in
            jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0]}
    for path, info in shards.items():
      want = list(flat[path if path in flat else "params/" + path])
      got = [e if e is None or isinstance(e, str) else tuple(e) for e in info["spec"]]
      assert _trim(got) == _trim(want), (m, path)
      # Shard shape = each dim over the product of its mesh axes (computed from sizes here).
      expect = [n // parallel.sharding.spec_split(P(e), sizes) for n, e in
                zip(info["shape"], want + [None] * len(info["shape"]))]
      assert info["shard"] == expect, (m, path, info)


def test_shard_shapes_by_hand(multi_device_results):
  """A few shard shapes worked out by hand (tiny LongCat: d=64, V=128, H=4, I_e=32, N=4)."""
  r = multi_device_results["longcat_flash_tiny"]
  dp_fsdp_tp = r["meshes"][1]["shards"]  # data 2 x fsdp 2 x tensor 2
  assert dp_fsdp_tp["embed_tokens/embedding"]["shard"] == [64, 32]  # vocab/tensor, embed/fsdp
  assert dp_fsdp_tp["layers_0/mlp/experts/gate_proj"]["shard"] == [4, 32, 16]
  assert dp_fsdp_tp["layers_0/self_attn_1/q_b_proj/kernel"]["shard"] == [16, 2, 24]
  ep = r["meshes"][2]["shards"]  # fsdp 2 x expert 4
  assert ep["layers_1/mlp/experts/down_proj"]["shard"] == [1, 32, 32]  # 1 expert per device
  assert ep["lm_head/kernel"]["shard"] == [32, 128]
  assert r["meshes"][0]["shards"]["lm_head/kernel"]["shard"] == [64, 128]  # data 8: replicated


def test_shard_init_equals_unsharded_init(multi_device_results):
  assert multi_device_results["longcat_flash_tiny"]["init_exact"]
