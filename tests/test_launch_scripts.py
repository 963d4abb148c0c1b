"""launch/tpu_pod.sh and launch/gpu_cluster.sh: --dry-run output parsed back into argv, and the
per-task command run as a SLURM task would run it (no gcloud / SLURM needed)."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(ROOT, "launch", "tpu_pod.sh")
GPU = os.path.join(ROOT, "launch", "gpu_cluster.sh")


def _run(script, *args, env=None):
  return subprocess.run(["bash", script, *args], capture_output=True, text=True, timeout=30,
                        env=dict(os.environ, **(env or {})))


def _commands(stdout: str) -> list[list[str]]:
  return [shlex.split(l) for l in stdout.splitlines() if l.strip() and not l.startswith("#")]


def test_tpu_pod_dry_run():
  r = _run(TPU, "--name=pod-1", "--zone=us-east5-a", "--project=proj", "--dry-run",
           "--setup=pip install -e ~/agentic_jax", "--",
           "python", "launch/train.py", "--config=configs/midtrain.py:longcat_flash",
           "--workdir=gs://bucket/run 1")
  assert r.returncode == 0, r.stderr
  setup, main = _commands(r.stdout)
  head = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod-1", "--zone=us-east5-a",
          "--project=proj", "--worker=all"]
  assert setup == head + ["--command=pip install -e ~/agentic_jax"]
  assert main[:-1] == head
  flag, remote = main[-1].split("=", 1)
  assert flag == "--command"
  # The remote shell sees exactly the words we passed, the space in the workdir included.
  assert shlex.split(remote) == [
      "cd", "~/agentic_jax", "&&", "AGENTIC_JAX_DISTRIBUTED=auto", "python", "launch/train.py",
      "--config=configs/midtrain.py:longcat_flash", "--workdir=gs://bucket/run 1"]


@pytest.mark.parametrize("args, message", [
    (["--zone=z", "--", "true"], "--name"),
    (["--name=n", "--", "true"], "--zone"),
    (["--name=n", "--zone=z"], "no command"),
    (["--name=n", "--zone=z", "--bogus", "--", "true"], "unknown option"),
])
def test_tpu_pod_errors(args, message):
  r = _run(TPU, *args)
  assert r.returncode == 2 and message in r.stderr


def test_gpu_cluster_dry_run_one_process_per_node():
  r = _run(GPU, "--hosts=gpu-a,gpu-b,gpu-c", "--port=23456", "--dry-run", "--",
           "python", "launch/train.py", "--workdir=/shared/run 1")
  assert r.returncode == 0, r.stderr
  assert "coordinator gpu-a:23456, 3 processes" in r.stdout
  (srun,) = _commands(r.stdout)
  assert srun[:5] == ["srun", "--nodes=3", "--ntasks=3", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
  assert srun[5:7] == ["bash", "-c"]
  task = srun[7]
  assert "$SLURM_PROCID" in task  # expanded by each task, not by the launcher
  assert "CUDA_VISIBLE_DEVICES" not in task


def _task_argv(task: str, env: dict) -> list[str]:
  """Runs the srun task string as SLURM would, with a command that prints what it got."""
  out = subprocess.run(["bash", "-c", task], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, **env))
  assert out.returncode == 0, out.stderr
  return out.stdout.strip().splitlines()


def test_gpu_cluster_per_gpu_tasks_get_their_rank_and_gpu():
  probe = ["python3", "-c", "import os, sys; print(os.environ.get('CUDA_VISIBLE_DEVICES')); "
           "print('\\n'.join(sys.argv[1:]))", "--workdir=/w x"]
  r = _run(GPU, "--hosts=n1,n2", "--per=gpu", "--gpus_per_node=4", "--dry-run", "--", *probe)
  assert r.returncode == 0, r.stderr
  (srun,) = _commands(r.stdout)
  assert srun[1:4] == ["--nodes=2", "--ntasks=8", "--ntasks-per-node=4"]
  # Task with global rank 6 = local rank 2 on the second node, whose job sees GPUs 4-7.
  lines = _task_argv(srun[-1], {"SLURM_PROCID": "6", "SLURM_LOCALID": "2",
                                "CUDA_VISIBLE_DEVICES": "4,5,6,7"})
  assert lines == ["6", "--workdir=/w x", "--coordinator_address=n1:12345", "--num_processes=8",
                   "--process_id=6"]
  # Without a job-level CUDA_VISIBLE_DEVICES, local rank 3 keeps GPU 3.
  env = {"SLURM_PROCID": "3", "SLURM_LOCALID": "3"}
  os_env = dict(os.environ)
  os_env.pop("CUDA_VISIBLE_DEVICES", None)
  out = subprocess.run(["bash", "-c", srun[-1]], capture_output=True, text=True, timeout=30,
                       env={**os_env, **env})
  assert out.stdout.splitlines()[0] == "3"


def test_gpu_cluster_reads_nodes_from_scontrol(tmp_path):
  fake = tmp_path / "scontrol"
  fake.write_text("#!/bin/sh\n[ \"$1 $2 $3\" = 'show hostnames node[07-08]' ] || exit 9\n"
                  "echo node07\necho node08\n")
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  r = _run(GPU, "--dry-run", "--", "python", "launch/train.py",
           env={"PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node[07-08]"})
  assert r.returncode == 0, r.stderr
  assert "coordinator node07:12345, 2 processes" in r.stdout
  (srun,) = _commands(r.stdout)
  assert "--coordinator_address=node07:12345 --num_processes=2" in srun[-1]


@pytest.mark.parametrize("args, message", [
    (["--hosts=a", "--"], "no command"),
    (["--hosts=a", "--per=rack", "--", "true"], "--per"),
    (["--hosts=a", "--gpus_per_node=0", "--", "true"], "--gpus_per_node"),
    (["--", "true"], "SLURM"),
])
def test_gpu_cluster_errors(args, message):
  env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_NODELIST"}
  r = subprocess.run(["bash", GPU, *args], capture_output=True, text=True, timeout=30, env=env)
  assert r.returncode == 2 and message in r.stderr, r.stderr
