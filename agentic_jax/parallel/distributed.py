"""Multi-controller setup (`jax.distributed`) and per-process batch feeding.

Every process of a multi-host job runs the same program. Call `initialize_distributed`
FIRST: `jax.distributed.initialize` must run before anything touches a JAX backend
(`jax.devices()`, `jax.default_backend()`, creating an array), including at import time.

    info = initialize_distributed()                                   # single host: no-op
    info = initialize_distributed("10.0.0.1:1234", num_processes=4, process_id=2)

With no arguments it joins a cluster only when one is detected, and then lets jax's own
cluster detection fill in coordinator, process count and id:
  * AGENTIC_JAX_DISTRIBUTED=auto in the environment (launch/tpu_pod.sh sets it);
  * JAX_COORDINATOR_ADDRESS set (jax reads the rest from JAX_* variables);
  * a Cloud TPU VM (a Google PCI device, as jax checks; the TPU metadata server names the
    workers) or a GKE TPU pod (several TPU_WORKER_HOSTNAMES);
  * a SLURM job step with more than one task.
Otherwise (a laptop, one GPU box) it does nothing.

Each process then loads only its own rows of the global batch (`data_shard`: the contiguous
block of rows its addressable devices hold) and assembles the global array with
`host_local_batch_to_global` (jax.make_array_from_process_local_data). `any_process` and
`barrier` keep decisions (stop, save) and file hand-offs identical across processes.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any, Optional

import jax


@dataclasses.dataclass(frozen=True)
class DistributedInfo:
  process_id: int
  num_processes: int
  initialized: bool  # True when jax.distributed.initialize ran (here or before)
  method: str  # "single_host" | "explicit" | "already" | a detect_cluster() name


_GOOGLE_PCI_VENDOR = "0x1ae0"


def on_cloud_tpu_vm(pci_root: str = "/sys/bus/pci/devices") -> bool:
  """A TPU chip is attached (the check jax.distributed's Cloud TPU detection starts from)."""
  for vendor in glob.glob(os.path.join(pci_root, "*", "vendor")):
    try:
      with open(vendor) as f:
        if f.read().strip() == _GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      continue
  return False


def detect_cluster(environ: Optional[dict] = None, *,
                   pci_root: str = "/sys/bus/pci/devices") -> Optional[str]:
  """Which multi-process launcher started us, from the environment and hardware alone
  (touches no JAX backend)."""
  env = os.environ if environ is None else environ
  if env.get("AGENTIC_JAX_DISTRIBUTED", "").lower() in ("1", "auto", "true"):
    return "requested"
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "env"
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  if len(hosts) > 1 or on_cloud_tpu_vm(pci_root):
    return "cloud_tpu"
  if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1:
    return "slurm"
  return None


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None, *,
                           cpu_collectives: str = "gloo",
                           initialization_timeout: int = 300) -> DistributedInfo:
  """Joins the job's processes via jax.distributed.initialize (see module docstring).

  `num_processes=1` or no arguments outside a detected cluster: no-op. `cpu_collectives`
  selects the CPU backend's cross-process collectives (multi-process CPU runs, e.g. tests)."""
  if jax.distributed.is_initialized():
    return DistributedInfo(jax.process_index(), jax.process_count(), True, "already")
  explicit = (coordinator_address, num_processes, process_id)
  if num_processes == 1:
    if process_id not in (None, 0):
      raise ValueError(f"process_id={process_id} with num_processes=1: must be 0")
    return DistributedInfo(0, 1, False, "single_host")
  if all(v is None for v in explicit):
    method = detect_cluster()
    if method is None:
      return DistributedInfo(0, 1, False, "single_host")
  else:
    method = "explicit"
    if num_processes is not None and num_processes < 1:
      raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
      raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
  # Only affects the CPU client; harmless on accelerator hosts.
  jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id, initialization_timeout=initialization_timeout)
  return DistributedInfo(jax.process_index(), jax.process_count(), True, method)


@dataclasses.dataclass(frozen=True)
class DataShard:
  """Which rows of a [B, ...] global batch this process feeds (`data_shard`).

  `index`/`count` number the DISTINCT row blocks: processes that hold the same rows (the
  batch replicated over an axis that spans processes) get the same index and must load the
  same data, so data pipelines shard by (index, count), not by process id."""
  index: int
  count: int
  start: int  # first global row this process feeds
  stop: int  # one past the last

  @property
  def rows(self) -> int:
    return self.stop - self.start


def data_shard(sharding: jax.sharding.Sharding, global_rows: int) -> DataShard:
  """This process's contiguous block of rows of a batch of `global_rows` rows laid out by
  `sharding` (rows split over the leading dimension). Raises ValueError when the process's
  devices hold a non-contiguous set of rows (a mesh whose device order interleaves processes
  along the batch axes), which the per-process data pipelines cannot feed."""
  index_map = sharding.addressable_devices_indices_map((global_rows,))
  spans = sorted({idx[0].indices(global_rows)[:2] for idx in index_map.values()})
  start, stop = spans[0][0], spans[-1][1]
  covered = sum(b - a for a, b in spans)
  if covered != stop - start or any(b > c for (_, b), (c, _) in zip(spans, spans[1:])):
    raise ValueError(f"process {jax.process_index()} holds rows {spans} of the {global_rows}-row "
                     "batch: not one contiguous block; order the mesh devices by process")
  rows = stop - start
  if global_rows % rows or start % rows:
    raise ValueError(f"process {jax.process_index()} holds rows [{start}:{stop}) of "
                     f"{global_rows}: blocks of unequal size across processes")
  return DataShard(start // rows, global_rows // rows, start, stop)


def host_local_batch_to_global(batch: Any, sharding: Any, global_rows: Optional[int] = None) -> Any:
  """Per-process rows -> one global jax.Array per leaf (jax.make_array_from_process_local_data).

  `sharding` is one sharding for every leaf or a tree matching `batch`. Each process passes
  its own [B_local, ...] rows (those of `data_shard`); the global batch has B_local * (number
  of distinct row blocks) rows, or `global_rows` when given (checked by jax). On one process
  this is a plain sharded device_put."""
  def put(x, s):
    shape = None if global_rows is None else (global_rows,) + tuple(x.shape[1:])
    return jax.make_array_from_process_local_data(s, x, shape)
  if isinstance(sharding, jax.sharding.Sharding):
    return jax.tree.map(lambda x: put(x, sharding), batch)
  return jax.tree.map(put, batch, sharding)


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is True on any (a collective: every process must call
  it at the same point). One process: `flag` itself, no communication."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  flags = multihost_utils.process_allgather(np.asarray([int(bool(flag))], np.int32))
  return bool(np.max(flags))


def barrier(name: str) -> None:
  """Waits until every process reaches `barrier(name)` (no-op on one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def process_share(n: int, index: Optional[int] = None, count: Optional[int] = None
                  ) -> tuple[int, int]:
  """[start, stop) of this process's contiguous share of n items (RL tasks): process i of P
  takes items [i*n//P, (i+1)*n//P), so the shares concatenated in process order are the items
  in their order, whatever n (a share may be empty)."""
  index = jax.process_index() if index is None else index
  count = jax.process_count() if count is None else count
  return index * n // count, (index + 1) * n // count


def allgather_objects(obj: Any) -> list:
  """Every process's `obj` (any picklable value: host-side episodes, contexts), as a list in
  process order; a collective every process must call at the same point. One process:
  [obj], no communication. Pickled to bytes, padded to the longest and gathered with
  multihost_utils.process_allgather (JAX's own runtime, no side channel)."""
  if jax.process_count() == 1:
    return [obj]
  import pickle  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  data = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
  sizes = multihost_utils.process_allgather(np.asarray([data.size], np.int64)).reshape(-1)
  buf = np.zeros((int(np.max(sizes)),), np.uint8)
  buf[:data.size] = data
  parts = multihost_utils.process_allgather(buf)  # [P, longest]
  return [pickle.loads(parts[i, :int(sizes[i])].tobytes())
          for i in range(jax.process_count())]


def replicated_array(x: Any, mesh: Any) -> jax.Array:
  """Host array `x` (the same value on every process) as one jax.Array replicated over
  `mesh` (jax.make_array_from_callback: valid across processes, where device_put of a host
  array onto devices of other processes is not)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  x = np.asarray(x)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def global_from_host(x: Any, sharding: Any) -> jax.Array:
  """The full host array `x` (the same value on every process) as a global jax.Array laid
  out by `sharding`: each process fills only its addressable shards from it."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def fetch(x: jax.Array) -> Any:
  """A (possibly non-fully-addressable) jax.Array as a host numpy array on every process
  (a collective when it spans processes)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  if jax.process_count() == 1 or getattr(x, "is_fully_addressable", True) \
      or getattr(x, "is_fully_replicated", False):
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
