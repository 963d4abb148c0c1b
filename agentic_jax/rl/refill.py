"""DAPO dynamic sampling with refill (objectives-spec §2), on host between rollouts and packing.

    episodes, stats = refill(first_round, more_episodes, target_groups=Q, max_rounds=R)

DAPO (arXiv 2503.14476, Sec. 3.2 "Dynamic Sampling") keeps only the groups whose accuracy is
neither 0 nor 1 and keeps sampling until the batch is full of them. Its released trainer (verl
0.5.0 recipe/dapo/dapo_ray_trainer.py) does this per step:
  L223-231  per prompt uid, std of the group's metric; a group is kept if std > 0 (or it has a
            single member, which we do not keep: rl_advantages.dynamic_sampling_filter drops a
            singleton, whose advantage is 0 under every estimator here);
  L239-240  kept groups are appended to the batch of this step;
  L242-256  while fewer than train_batch_size prompts are kept and num_gen_batches <
            max_num_gen_batches (non-positive = no bound), generate another gen batch of
            gen_batch_size prompts (dapo_trainer.yaml L10: default train_batch_size; the 32B
            script uses 3x and max_num_gen_batches=10); past the bound it raises;
  L257-260  once enough are kept, the batch is cut to train_batch_size x n trajectories, in
            generation order.
Here: round 0 is the step's own tasks; each extra round r = 1..max_rounds rolls out Q more
tasks (`more_episodes(r)`, gen batch = train batch as verl's default); collection stops as soon
as Q informative groups are in hand, and the first Q (generation order) are kept. Past the bound
we do NOT raise: the step trains on the groups found and `dapo_fill` < 1 says so.

A group is informative when its episodes' outcome rewards are not all equal (max > min): the
same rule as rl_advantages.dynamic_sampling_filter, which still runs inside the step (rows
dropped later for length can make a kept group uniform there).

stats (numbers, for metrics.jsonl): dapo_fill (groups kept / Q), dapo_refill_rounds (extra
rounds run), dapo_groups_sampled, dapo_groups_informative (before the cut to Q),
dapo_episodes_sampled.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from agentic_jax.rl.rollout import Episode


def informative_groups(episodes: Sequence[Episode]) -> list[list[Episode]]:
  """The groups (by group_id, in first-appearance order) whose rewards are not all equal."""
  groups: dict[int, list[Episode]] = {}
  for e in episodes:
    groups.setdefault(e.group_id, []).append(e)
  return [g for g in groups.values() if max(e.reward for e in g) > min(e.reward for e in g)]


def refill(first: Sequence[Episode], more_episodes: Callable[[int], Sequence[Episode]], *,
           target_groups: int, max_rounds: int) -> tuple[list[Episode], dict[str, float]]:
  """(episodes of at most `target_groups` informative groups, renumbered group_id 0.., stats).
  `more_episodes(r)` rolls out refill round r (1-based); called only while groups are missing."""
  if target_groups < 1 or max_rounds < 0:
    raise ValueError(f"refill: target_groups must be >= 1 and max_rounds >= 0, got "
                     f"{target_groups}, {max_rounds}")
  kept = informative_groups(first)
  sampled = len({e.group_id for e in first})
  episodes_sampled = len(first)
  rounds = 0
  while len(kept) < target_groups and rounds < max_rounds:
    rounds += 1
    batch = list(more_episodes(rounds))
    sampled += len({e.group_id for e in batch})
    episodes_sampled += len(batch)
    kept += informative_groups(batch)
  informative = len(kept)
  kept = kept[:target_groups]
  # group ids restart per rollout round; make them unique across the collected rounds
  out = [dataclasses.replace(e, group_id=k) for k, g in enumerate(kept) for e in g]
  return out, {"dapo_fill": len(kept) / target_groups, "dapo_refill_rounds": rounds,
               "dapo_groups_sampled": sampled, "dapo_groups_informative": informative,
               "dapo_episodes_sampled": episodes_sampled}


def refill_tasks(pool: Sequence[Any], seed: int, step: int, round_: int, count: int) -> list[Any]:
  """The tasks of refill round `round_` of RL step `step`: `count` distinct tasks of the pool
  drawn from a generator of (seed, step, round) only, so a resumed run draws the same ones."""
  rng = np.random.default_rng([int(seed), int(step), int(round_)])
  idx = rng.choice(len(pool), size=min(count, len(pool)), replace=False)
  return [pool[int(i)] for i in idx]
