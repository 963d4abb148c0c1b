"""Rollout inspection: each RL step's sampled episodes as JSON lines, for reading what the
policy did (prompt, turns, tool calls, observations, rewards) next to the step's metrics.

    WORKDIR/rollouts/step_000012.jsonl     one JSON object per episode of RL step 12

written by the RL loop (process 0) every `config.rl.save_rollouts_every` steps (0 = never),
at most `config.rl.save_rollouts_episodes` episodes per step (0 = all; the first ones in
(task, trajectory) order, so whole groups come first). A step that is re-run after a resume
rewrites its file with the same episodes (rollouts are a function of (seed, step) and the
restored params). TensorBoard's Text tab shows the first two of each step as well
(loop.rollout_text).

Per episode: step, task_id, group_id, traj_id, reward, success, stop_reason, tool_errors, the
environment's final info, prompt (the first turn's context, decoded) and per turn: role,
trainable, truncated, context_tokens (the length of the exact prompt that turn saw), text
(the sampled or scripted response, decoded), tool_call (the action the environment was given,
or null when the turn made none) and observation (the environment's answer, '' if none).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from agentic_jax import fs
from agentic_jax.rl import rollout as rollout_lib

DIRECTORY = "rollouts"


def step_path(workdir: str, step: int) -> str:
  return fs.join(workdir, DIRECTORY, f"step_{step:06d}.jsonl")


def episode_record(episode: Any, tokenizer: Any, step: int) -> dict:
  """One episode (rollout.Episode) as a JSON-safe dict (module doc)."""
  turns = []
  for t in episode.turns:
    call = rollout_lib.tool_call_action(np.asarray(t.response, np.int32), tokenizer) \
        if len(t.response) else None
    turns.append({"role": t.role, "trainable": bool(t.trainable), "truncated": bool(t.truncated),
                  "context_tokens": int(len(t.context)), "text": t.text, "tool_call": call,
                  "observation": t.observation})
  prompt = tokenizer.decode(np.asarray(episode.turns[0].context, np.int32)) \
      if episode.turns else ""
  info = episode.info or {}
  return {"step": int(step), "task_id": episode.task_id, "group_id": int(episode.group_id),
          "traj_id": int(episode.traj_id), "reward": float(episode.reward),
          "success": bool(episode.success), "stop_reason": episode.stop_reason,
          "tool_errors": int(info.get("tool_errors", 0)),
          "final_info": info.get("final_info", {}), "prompt": prompt, "turns": turns}


def write_step(workdir: str, step: int, episodes: Sequence[Any], tokenizer: Any, *,
               limit: int = 0) -> str:
  """WORKDIR/rollouts/step_N.jsonl with the first `limit` episodes (0 = all); returns its
  path. Values JSON cannot hold (numpy scalars in an env's info) are written as strings."""
  chosen = list(episodes) if limit <= 0 else list(episodes)[:limit]
  lines = [json.dumps(episode_record(e, tokenizer, step), default=_plain) for e in chosen]
  path = step_path(workdir, step)
  fs.makedirs(fs.join(workdir, DIRECTORY))
  fs.write_text(path, "".join(line + "\n" for line in lines))
  return path


def read_step(workdir: str, step: int) -> list[dict]:
  """The episodes saved for RL step `step`."""
  return [json.loads(line) for line in fs.read_text(step_path(workdir, step)).splitlines()
          if line.strip()]


def _plain(x: Any) -> Any:
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  return str(x)
