"""A real two-process run on localhost: 2 processes x 4 fake CPU devices joined by
jax.distributed (gloo collectives) run a sharded forward and 3 SGD steps of tiny LongCat on a
data 2 x fsdp 2 x tensor 2 mesh, and match a one-process 8-device run."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.launch_fixtures import cpu_env, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "distributed_worker.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("dist")
  port = free_port()
  two = [subprocess.Popen(
      [sys.executable, WORKER, str(tmp / "two.npz"), f"--coordinator_address=localhost:{port}",
       "--num_processes=2", f"--process_id={i}"],
      cwd=ROOT, env=cpu_env(4), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
      for i in range(2)]
  one = subprocess.Popen([sys.executable, WORKER, str(tmp / "one.npz")], cwd=ROOT, env=cpu_env(8),
                         text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  logs = []
  for name, proc in [("process 0", two[0]), ("process 1", two[1]), ("single", one)]:
    try:
      out, err = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
      for p in two + [one]:
        p.kill()
      pytest.fail(f"{name} timed out")
    assert proc.returncode == 0, f"{name} failed:\n{out}\n{err[-5000:]}"
    logs.append(out)
  return np.load(tmp / "two.npz"), np.load(tmp / "one.npz"), logs


def test_each_process_fed_its_own_rows(runs):
  _, _, logs = runs
  assert "process 0/2 rows [0:4)" in logs[0]
  assert "process 1/2 rows [4:8)" in logs[1]
  assert "process 0/1 rows [0:8)" in logs[2]


def test_two_process_forward_and_training_equal_one_process(runs):
  two, one, _ = runs
  assert sorted(two.files) == sorted(one.files)
  assert len([k for k in one.files if k.startswith("param:")]) > 50
  for key in one.files:
    a, b = two[key], one[key]
    assert a.shape == b.shape, key
    rel = np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)
    assert rel <= 1e-5, (key, rel)
  losses = one["losses"]
  assert losses.shape == (3,)
  assert losses[0] > losses[1] > losses[2]  # three real SGD steps on the same batch
  # The first loss is the untrained model's: about ln(V) = ln(128) = 4.85 for near-uniform logits.
  assert abs(losses[0] - np.log(128)) < 0.2
