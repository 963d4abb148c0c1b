"""train/watchdog.py: a section stuck past the limit ends the process with a message naming it;
a SIGTERM that finds a section stuck ends it after the grace period; finished sections never
fire. The process-level cases run in subprocesses (the watchdog calls os._exit)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from agentic_jax.train import watchdog as watchdog_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dog(limit, **kw):
  fired = []
  dog = watchdog_lib.Watchdog(limit, "mesh {'fsdp': 2} over 1 process(es)",
                              exit_fn=fired.append, poll_s=0.05, **kw)
  return dog, fired


def test_finished_sections_never_fire():
  dog, fired = _dog(0.5)
  for i in range(20):
    with dog.watch(f"step {i}"):
      time.sleep(0.01)
  time.sleep(0.8)  # idle between sections is not watched
  dog.close()
  assert fired == [] and dog.fired is None


def test_a_stuck_section_fires_once_naming_it_and_the_mesh():
  dog, fired = _dog(0.3, note=lambda: "The newest checkpoint is step 80.")
  with dog.watch("step 81"):
    time.sleep(1.0)
  dog.close()
  assert fired == [watchdog_lib.EXIT_STUCK]
  assert dog.fired.startswith("[watchdog] step 81 did not finish within 0.3 s on mesh {'fsdp': 2}")
  assert dog.fired.endswith("The newest checkpoint is step 80.")


def test_checkpoint_note_reads_complete_steps_from_disk(tmp_path):
  assert "No complete checkpoint" in watchdog_lib.checkpoint_note(str(tmp_path / "none"))
  for name in ("2", "10", "12.orbax-checkpoint-tmp-1", "4.corrupt-99"):
    (tmp_path / name).mkdir()
  assert "newest complete checkpoint is step 10 in" in watchdog_lib.checkpoint_note(str(tmp_path))


def test_zero_disables_the_timer_and_bad_limits_are_rejected():
  dog, fired = _dog(0)
  with dog.watch("step 1"):
    time.sleep(0.3)
  dog.close()
  assert fired == []
  for bad in (-1, float("nan")):
    with pytest.raises(ValueError, match="limit_s"):
      watchdog_lib.Watchdog(bad, "x")


def _child(body: str, *args) -> subprocess.Popen:
  code = textwrap.dedent("""
      import sys, time
      sys.path.insert(0, %r)
      from agentic_jax.train import watchdog, runtime
  """ % ROOT) + textwrap.dedent(body)
  return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def test_a_step_blocked_inside_xla_ends_the_process():
  """The main thread waits in C++ (device_get of a jitted step whose host callback never
  returns): no Python code runs there, and the watchdog still ends the process, status 3."""
  proc = _child("""
      import jax, jax.numpy as jnp, numpy as np
      def stuck(x):
        time.sleep(600)
        return x
      step = jax.jit(lambda x: jax.pure_callback(stuck, jax.ShapeDtypeStruct((2,), jnp.float32), x))
      dog = watchdog.Watchdog(2.0, "mesh {'data': 1} over 1 process(es)")
      print("ready", flush=True)
      with dog.watch("step 7"):
        jax.device_get(step(jnp.ones(2)))
      print("unreachable", flush=True)
  """)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == watchdog_lib.EXIT_STUCK, err
  assert "ready" in out and "unreachable" not in out
  assert "[watchdog] step 7 did not finish within 2 s on mesh {'data': 1}" in err
  assert "Traceback" not in err


def test_sigterm_that_finds_a_step_stuck_ends_the_process_after_the_grace():
  """The run's own SIGTERM handler (StopFlag) only sets a flag; a step that never returns
  would hang until SIGKILL. The watchdog (timer off) sees the signal through the wakeup fd."""
  proc = _child("""
      stop = runtime.StopFlag(True)
      dog = watchdog.Watchdog(0, "mesh {'fsdp': 4} over 2 process(es)", signal_grace_s=1.0)
      print("ready", flush=True)
      with dog.watch("step 3"):
        time.sleep(600)  # resumes after the handler ran: stuck from the loop's point of view
  """)
  assert proc.stdout.readline().strip() == "ready"
  time.sleep(0.5)
  t0 = time.monotonic()
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == watchdog_lib.EXIT_STUCK, err
  assert time.monotonic() - t0 < 30
  assert "[watchdog] SIGTERM arrived while step 3 was running" in err
  assert "mesh {'fsdp': 4} over 2 process(es)" in err


def test_sigterm_between_sections_is_left_to_the_loop():
  """Outside a watched section the signal is the loop's business (save and exit 0)."""
  proc = _child("""
      stop = runtime.StopFlag(True)
      dog = watchdog.Watchdog(0, "m", signal_grace_s=0.5)
      print("ready", flush=True)
      while stop.signal is None:
        time.sleep(0.05)
      time.sleep(1.5)  # longer than the grace: nothing may fire
      dog.close()
      print("stopped by", stop.signal, flush=True)
  """)
  assert proc.stdout.readline().strip() == "ready"
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err
  assert "stopped by SIGTERM" in out and "[watchdog]" not in err
