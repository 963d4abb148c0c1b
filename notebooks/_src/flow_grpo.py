# %% [markdown]
# # Flow-GRPO (paper and code presets) vs trajectory-level GRPO on multi-turn tool use
#
# One mid-trained tiny LongCat-Flash (the README recipe's mid-training stage,
# `configs/recipe.py:tiny`, run once here with the recipe's defaults) is trained by RL on the
# multi-turn calculator environment (`calc(...)` tool calls, then `answer(...)`) with three
# objectives, from the same start, on the same tasks, with the same RL budget:
#
# | arm | `rl.loss` / `rl.preset` | rows | advantage | aggregation |
# |---|---|---|---|---|
# | **Flow-GRPO paper** | `flow_grpo` / `paper` | one per policy turn (the trajectory's outcome broadcast to every turn) | (R_i − mean_G R) / std_G R over the G trajectories | (1/G)(1/T_i)(1/\|a\|), whole groups per minibatch; clip 0.2; k3 KL 0.001 |
# | **Flow-GRPO code** | `flow_grpo` / `code` | one per policy turn | mean / std over all turn samples of the query (AgentFlow's released code) | token-mean per minibatch; clip 0.2 / 0.3, dual clip 3; k3 KL 0.001 |
# | **GRPO (trajectory)** | `grpo` / `deepseekmath` | one per multi-turn trajectory (all its turns in one sample) | (R_i − mean_G R) / std_G R | seq-mean-token-mean; clip 0.2; k3 KL 0.04 |
#
# The claim tested (AgentFlow, Flow-GRPO, arXiv 2510.05592): broadcasting the trajectory's
# outcome to every turn, one training row per turn, trains multi-turn tool use better than
# trajectory-level GRPO. Measured: the success rate on held-out calculator tasks over the RL steps
# (`rl.eval_every`; the RL loop's own evaluation `agentic_jax.rl.loop.evaluate`, sampled at
# temperature 1 and greedy), and the rollouts' success at every step. Each arm keeps its loss's
# own preset (the KL coefficient included) as the library registers it; everything else (lr,
# batch, group size, turns, decoding) is the recipe's RL section. The in-the-flow (`agentflow`)
# mode is discussed at the end: trajectory-level GRPO is not defined there.

# %%
import os, tempfile, time
T_START = time.perf_counter()
QUICK = os.environ.get("NOTEBOOK_QUICK") == "1"  # reduced mode: CI (tests/test_notebooks.py)

ARMS = {"Flow-GRPO paper": ("flow_grpo", "paper"), "Flow-GRPO code": ("flow_grpo", "code"),
        "GRPO (trajectory)": ("grpo", "deepseekmath")}  # name -> (config.rl.loss, config.rl.preset)
SEEDS = (0,) if QUICK else (0, 1, 2)  # config.seed of the RL stage (rollout sampling, task pool)
MT_STEPS = 20 if QUICK else 3000  # mid-training steps (the recipe's default: 3,000), run once
RL_STEPS = 2 if QUICK else 6  # RL steps per run (the recipe runs 30; 9 runs must fit ~5.5 min)
EVAL_EVERY = 1 if QUICK else 3  # held-out evaluation every k RL steps (and before / after)
EVAL_TASKS = 4 if QUICK else 32  # held-out calculator tasks (the recipe evaluates on 64)
EVAL_SAMPLES = 2  # sampled episodes per held-out task at temperature 1 (the recipe: 4), + 1 greedy
# every run's directory (checkpoints, metrics.jsonl, run.log): a fresh one by default
WORKDIR = os.environ.get("FLOW_GRPO_WORKDIR") or tempfile.mkdtemp(prefix="flow_grpo_")
print(f"QUICK={QUICK} seeds={SEEDS} mid-training steps={MT_STEPS} RL steps={RL_STEPS} "
      f"eval every {EVAL_EVERY} on {EVAL_TASKS} tasks x {EVAL_SAMPLES} samples, workdir={WORKDIR}")

# %% [markdown]
# ## Mid-training, once
#
# Exactly the recipe's stages 0 and 1 (`agentic_jax/rl/recipe.py`): `recipe.write_data` writes
# 8,000 scripted calculator episodes (one- and two-step tasks, real tool output, every episode
# reaches the right answer, 20% after a failing call and its correction; the RL environment's
# held-out questions removed), and `agentic_jax.train.loop.run` mid-trains the tiny LongCat-Flash
# on them with `configs/midtrain.py:tiny` as the recipe sets it (3,000 steps of 4x256 tokens,
# assistant-only loss, `midtrain.seed` 0). This one model is the start of every RL run: the seeds
# below vary the RL stage only, since one mid-training already takes about 4 minutes of the
# 10-minute budget. (The README's table shows how much the mid-training seed matters: greedy
# success before RL 0.42 / 0.81 / 0.38 for mid-training seeds 0 / 1 / 2.)

# %%
import contextlib, copy, io, json, pathlib, platform, shutil, subprocess, urllib.request, warnings
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets

import numpy as np
import matplotlib.pyplot as plt
import jax

try:  # Jupyter / Colab: inline PNG plots (what `%matplotlib inline` does)
    get_ipython().run_line_magic("matplotlib", "inline")
except NameError:  # plain Python
    pass

import agentic_jax
from agentic_jax.rl import config as rl_config_lib, loop as rl_loop, recipe
from agentic_jax.train import loop as mt_loop
from agentic_jax.train.config import ConfigError, load_config

jax.config.update("jax_compilation_cache_dir", os.path.join(WORKDIR, "jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# configs/ beside the package in a checkout (pip install -e); the package itself does not install
# configs/, so after a pip install from git (Colab) fetch the two files from the repository.
PKG_ROOT = pathlib.Path(agentic_jax.__file__).resolve().parent.parent
CONFIGS = PKG_ROOT / "configs"
if not (CONFIGS / "recipe.py").exists():
    # not inside WORKDIR: the quick mode deletes WORKDIR before the last cells read configs
    CONFIGS = pathlib.Path(tempfile.mkdtemp(prefix="agentic_jax_configs_"))
    CONFIGS.mkdir(exist_ok=True)
    for name in ("recipe.py", "midtrain.py"):  # recipe.py loads midtrain.py from its folder
        urllib.request.urlretrieve(
            f"{RAW}/configs/{name}", CONFIGS / name)

CFG = load_config(f"{CONFIGS / 'recipe.py'}:tiny")
DATA_DIR, MT_DIR = os.path.join(WORKDIR, "data"), os.path.join(WORKDIR, "midtrain")
t0 = time.perf_counter()
data_report = recipe.write_data(CFG, DATA_DIR)  # stage 0: WORKDIR/data/episodes.jsonl
MT_CFG = recipe.midtrain_stage_config(CFG, DATA_DIR)  # stage 1's config, as recipe.run builds it
MT_CFG.unlock()
MT_CFG.train.num_steps = MT_STEPS  # 3,000 in full mode: the recipe's own value
MT_CFG.checkpoint.every = MT_STEPS
MT_CFG.train.progress = False
MT_CFG.lock()
log = io.StringIO()
with contextlib.redirect_stdout(log):  # the loop's own printout, kept in WORKDIR/midtrain/run.log
    mt_summary = mt_loop.run(MT_CFG, MT_DIR, handle_signals=False)
pathlib.Path(MT_DIR, "run.log").write_text(log.getvalue())
assert mt_summary["status"] == "completed", log.getvalue()[-3000:]
T_MIDTRAIN = time.perf_counter() - t0
print(f"{data_report['episodes']} episodes; mid-training {MT_STEPS} steps of "
      f"{MT_CFG.data.batch_size}x{MT_CFG.data.seq_len} tokens ({MT_CFG.data.mask_policy}): loss "
      f"{mt_summary['first_loss']:.3f} -> {mt_summary['final_loss']:.3f} in {T_MIDTRAIN:.0f} s")

# %% [markdown]
# ## RL: three objectives from the same start
#
# Each run is `agentic_jax.rl.loop.run` on the recipe's RL stage (`recipe.rl_stage_config`:
# `init_from` = the mid-training workdir, its model and tokenizer) with `rl.loss`, `rl.preset`
# and the loss's registered row layout (`rl.batch_mode`: `turn` for Flow-GRPO, `trajectory` for
# GRPO) set, `RL_STEPS` steps of 8 tasks x 8 rollouts (up to 4 policy turns of 32 tokens), lr
# 3e-4, and `rl.eval_every`. The loop evaluates before the first step, every `EVAL_EVERY` steps
# and after the last; the evaluations in between record the sampled success rate only
# (`eval_success_rate` in metrics.jsonl), the ones before and after also greedy decoding. The
# seed sets the training tasks' order, the rollouts' random numbers and the held-out tasks, the
# same for the three arms of a seed (paired).

# %%
from agentic_jax.objectives import rl_registry


def rl_arm_config(arm, seed):
    loss, preset = ARMS[arm]
    c = copy.deepcopy(CFG)
    c.unlock()
    c.seed = seed
    c.rl.loss, c.rl.preset = loss, preset
    c.rl.batch_mode = rl_registry.get_spec(loss).batch_mode  # "turn" | "trajectory"
    c.rl.eval_every = EVAL_EVERY
    c.rl.eval_tasks = EVAL_TASKS
    c.rl.eval_samples = EVAL_SAMPLES
    if QUICK:  # the reduced mode: 4 tasks x 8 rollouts per step (the recipe's 8 x 8 otherwise)
        c.rl.tasks_per_step = 4
    c.train.num_steps = RL_STEPS
    c.train.progress = False
    c.checkpoint.every = RL_STEPS
    c.checkpoint.keep = 1
    c.lock()
    return recipe.rl_stage_config(c, MT_DIR)  # what recipe.run hands to rl.loop.run


def run_arm(arm, seed):
    wd = os.path.join(WORKDIR, "rl", arm.split()[0].lower() + "_" + ARMS[arm][1], f"seed{seed}")
    os.makedirs(wd, exist_ok=True)
    log = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(log):
        s = rl_loop.run(rl_arm_config(arm, seed), wd, handle_signals=False)
    pathlib.Path(wd, "run.log").write_text(log.getvalue())
    assert s["status"] == "completed", log.getvalue()[-3000:]
    recs = [json.loads(line) for line in pathlib.Path(wd, "metrics.jsonl").read_text().splitlines()]
    curve = [(0, s["success_rate_before"])] + [
        (r["step"], r["eval_success_rate"]) for r in recs if "eval_success_rate" in r] + [
        (RL_STEPS, s["success_rate_after"])]
    return {"arm": arm, "seed": seed, "sampled before": s["success_rate_before"],
            "sampled after": s["success_rate_after"],
            "greedy before": s["greedy_success_rate_before"],
            "greedy after": s["greedy_success_rate_after"],
            "train success": [r["success_rate"] for r in recs],
            "kl": [r["kl"] for r in recs], "curve": curve,
            "rows": recs[0].get("forward_rows"), "options": s["objective_options"],
            "seconds": time.perf_counter() - t0, "rollout_s": s["seconds"]["rollout"],
            "train_s": s["seconds"]["train"]}


ROWS = []
t_runs = time.perf_counter()
for seed in SEEDS:
    for arm in ARMS:
        r = run_arm(arm, seed)
        r["sampled gain"] = r["sampled after"] - r["sampled before"]
        r["greedy gain"] = r["greedy after"] - r["greedy before"]
        ROWS.append(r)
        print(f"{arm:18s} seed {seed}: held-out sampled {r['sampled before']:.3f} -> "
              f"{r['sampled after']:.3f}, greedy {r['greedy before']:.3f} -> {r['greedy after']:.3f}"
              f" | rollouts' success step 1 {r['train success'][0]:.3f}, step {RL_STEPS} "
              f"{r['train success'][-1]:.3f} | {r['seconds']:.0f} s (rollout {r['rollout_s']:.0f} s,"
              f" update {r['train_s']:.0f} s)", flush=True)
print(f"all RL runs: {time.perf_counter() - t_runs:.0f} s")
if QUICK and not os.environ.get("FLOW_GRPO_WORKDIR"):  # CI leaves nothing behind; a full run
    shutil.rmtree(WORKDIR, ignore_errors=True)  # keeps WORKDIR for inspection

# %% [markdown]
# ## Success over the RL steps
#
# Left: held-out success (sampled, `EVAL_SAMPLES` episodes per task at temperature 1 with the
# evaluation's fixed seed) at step 0, every `EVAL_EVERY` steps and after the last step; the hollow markers are
# greedy decoding before and after RL. Middle: the rollouts' own success rate at every RL step
# (the training tasks, 64 episodes per step). Right: KL to the mid-trained reference. Thin lines:
# seeds; thick: the mean over seeds.

# %%
COLORS = {"Flow-GRPO paper": "tab:blue", "Flow-GRPO code": "tab:orange",
          "GRPO (trajectory)": "tab:green"}


def runs_of(arm):
    return [r for r in ROWS if r["arm"] == arm]


fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
for arm in ARMS:
    rs, col = runs_of(arm), COLORS[arm]
    steps = [s for s, _ in rs[0]["curve"]]
    held = np.array([[v for _, v in r["curve"]] for r in rs])
    train = np.array([r["train success"] for r in rs])
    kl = np.array([r["kl"] for r in rs])
    x = np.arange(1, RL_STEPS + 1)
    for h, t, k in zip(held, train, kl):
        axes[0].plot(steps, h, color=col, alpha=0.25, lw=1)
        axes[1].plot(x, t, color=col, alpha=0.25, lw=1)
        axes[2].plot(x, k, color=col, alpha=0.25, lw=1)
    axes[0].plot(steps, held.mean(0), "o-", color=col, lw=2, label=arm)
    axes[0].plot([0, RL_STEPS], [np.mean([r["greedy before"] for r in rs]),
                                 np.mean([r["greedy after"] for r in rs])],
                 "s--", color=col, mfc="none", lw=1)
    axes[1].plot(x, train.mean(0), color=col, lw=2, label=arm)
    axes[2].plot(x, kl.mean(0), color=col, lw=2, label=arm)
axes[0].set_title("held-out success (sampled; □ greedy)", fontsize=10)
axes[1].set_title("rollouts' success per RL step (training tasks)", fontsize=10)
axes[2].set_title("KL to the reference", fontsize=10)
for ax in axes:
    ax.set_xlabel("RL step")
axes[0].legend(fontsize=8)
fig.suptitle(f"{len(SEEDS)} seed(s) x {RL_STEPS} RL steps from one mid-trained model", fontsize=11)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Results
#
# Mean ± standard deviation over the RL seeds (sample sd, n − 1), then every run. "Before" is
# the mid-trained model, the same for the three arms of a seed (same model, tasks and evaluation
# seed); "rollouts, last 3" is the rollouts' success over the last three RL steps.

# %%
from IPython.display import Markdown, display

for r in ROWS:
    r["rollouts last 3"] = float(np.mean(r["train success"][-3:]))
COLUMNS = [("sampled before", "held-out sampled, before"), ("sampled after", "sampled, after ↑"),
           ("greedy before", "greedy, before"), ("greedy after", "greedy, after ↑"),
           ("sampled gain", "sampled gain"), ("greedy gain", "greedy gain"),
           ("rollouts last 3", "rollouts' success, last 3 steps")]


def values(arm, key):
    return np.array([r[key] for r in runs_of(arm)], np.float64)


def spread(x):
    return float(np.std(x, ddof=1)) if len(x) > 1 else float("nan")


def fmt(x):
    x = np.atleast_1d(x)
    return f"{np.mean(x):.3f}" + (f" ± {spread(x):.3f}" if len(x) > 1 else "")


table = ["| arm | " + " | ".join(t for _, t in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
table += [f"| {a} | " + " | ".join(fmt(values(a, k)) for k, _ in COLUMNS) + " |" for a in ARMS]
runs = ["| arm | seed | " + " | ".join(t for _, t in COLUMNS) + " | RL s |",
        "|---" * (len(COLUMNS) + 3) + "|"]
runs += [f"| {r['arm']} | {r['seed']} | " + " | ".join(fmt(r[k]) for k, _ in COLUMNS)
         + f" | {r['seconds']:.0f} |" for r in ROWS]
display(Markdown(f"**{len(SEEDS)} RL seed(s) x {RL_STEPS} steps of {4 if QUICK else 8} tasks x 8 "
                 f"rollouts from one "
                 f"mid-trained model ({MT_STEPS} steps), {EVAL_TASKS} held-out tasks**\n\n"
                 + "\n".join(table) + "\n\n" + "\n".join(runs)))

# %% [markdown]
# ## Did broadcasting the outcome to every turn help at this scale?
#
# Paired by seed (same start, same tasks, same evaluation): each comparison's mean difference ±
# its standard error over seeds. "Helped" / "hurt" needs a paired t-test at the 5% level
# (two-sided: |mean| > t(0.975, n − 1) x standard error, 4.30 for 3 seeds); anything else is
# "no clear difference". Since "before" is shared within a seed, a difference of "after" is also
# the difference of the gains.

# %%
T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def compare(a, b, key):
    d = values(a, key) - values(b, key)
    se = spread(d) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    if not np.isfinite(se):
        word = "one seed: no test"
    elif se < 1e-9:  # the same difference on every seed: the t statistic is undefined, not large
        word = "no clear difference (the same on every seed; t-test undefined)" if d.mean() else \
            "no difference"
    elif abs(d.mean()) <= T975.get(len(d) - 1, 2.0) * se or d.mean() == 0:
        word = "no clear difference"
    else:
        word = "helped" if d.mean() > 0 else "hurt"
    return word, f"{d.mean():+.3f} ± {se:.3f}" if np.isfinite(se) else f"{d.mean():+.3f}"


KEYS = ("sampled after", "greedy after", "rollouts last 3")
for a, b in (("Flow-GRPO paper", "GRPO (trajectory)"), ("Flow-GRPO code", "GRPO (trajectory)"),
             ("Flow-GRPO paper", "Flow-GRPO code")):
    parts = [f"{k} {compare(a, b, k)[1]} ({compare(a, b, k)[0]})" for k in KEYS]
    print(f"{a} - {b}: " + "; ".join(parts))
print()
gains = "; ".join(f"{a}: sampled {fmt(values(a, 'sampled gain'))}, greedy "
                  f"{fmt(values(a, 'greedy gain'))}" for a in ARMS)
print(f"gain over the mid-trained model after {RL_STEPS} RL steps ({len(SEEDS)} seed(s)): {gains}")

# %% [markdown]
# ## In-the-flow (`agentflow`) mode
#
# `configs/recipe.py:agentflow` runs the same calculator tasks as AgentFlow's system: the trained
# planner writes a sub-goal and a tool per turn, and a scripted executor, verifier and generator
# do the rest. Each planner turn has its own prompt (its context, the memory, the step count), so
# there is no single transcript to put in one row: the library defines only turn rows there, and
# its config check rejects trajectory-level GRPO in that mode (below, with the real check, before
# anything is compiled). So in agentflow mode the comparison the claim asks for does not exist in
# the library; what is defined is Flow-GRPO paper vs code (both turn rows). That comparison is the
# notebook `flow_grpo_agentflow` (its own planner mid-training, then 3 RL seeds per preset): its
# planner writes well-formed plans but solves ~3% of the tasks, so both presets ended the same
# without either improving it (no power to tell them apart at this scale).

# %%
AF = load_config(f"{CONFIGS / 'recipe.py'}:agentflow")
for arm, (loss, preset) in ARMS.items():
    c = copy.deepcopy(AF)
    c.unlock()
    c.rl.loss, c.rl.preset = loss, preset
    c.rl.batch_mode = rl_registry.get_spec(loss).batch_mode
    c.lock()
    try:
        rl_config_lib.check_rl_config(recipe.rl_stage_config(c, "MIDTRAIN_WORKDIR"))
        print(f"agentflow + {arm:18s} ({c.rl.batch_mode} rows): defined")
    except ConfigError as e:
        print(f"agentflow + {arm:18s} ({c.rl.batch_mode} rows): rejected: {e}")

commit = subprocess.run(["git", "-C", str(PKG_ROOT), "rev-parse", "--short", "HEAD"],
                        capture_output=True, text=True).stdout.strip() or "unknown"
print(f"\nrun: {time.strftime('%Y-%m-%d')}, commit {commit}, {platform.machine()} {os.cpu_count()} "
      f"CPU cores, JAX {jax.__version__} on {jax.devices()[0].platform}, QUICK={QUICK}, "
      f"mid-training {T_MIDTRAIN:.0f} s, notebook wall time {time.perf_counter() - T_START:.0f} s")

# %% [markdown]
# ## What this shows
#
# *Latest full run: 3 RL seeds x 3 arms x 6 RL steps after one 3,000-step mid-training,
# 2026-12-05 at commit 5a67872 on the 2-core CPU (another job shared the cores for part of it),
# 9 min 31 s (the tables above). An earlier full run with 4 sampled episodes per task gave the
# same greedy numbers and the same ordering, in 10 min 19 s, over the budget.*
#
# RL raised the mid-trained model's held-out success a little under every arm (no gain negative on
# any seed): after 6 steps, on average, by 0.026 ± 0.024 (sampled) and 0.021 ± 0.018 (greedy) with Flow-GRPO paper, 0.052 ± 0.018 and
# 0.052 ± 0.036 with Flow-GRPO code, 0.042 ± 0.018 and 0.042 ± 0.048 with trajectory-level GRPO.
# Between the arms the differences are one or two tasks of 32 on a seed: paper − GRPO sampled
# −0.016 ± 0.009, greedy −0.021 ± 0.028 (greedy +1, −2, −1 tasks on seeds 0, 1, 2); code − GRPO
# +0.010 ± 0.010 under both decodings; the rollouts' success over the last 3 steps differs by at most
# 7 of 192 episodes (code 2 above GRPO on every seed, paper −1, −5, +7). None passes the paired t-test.
# The rollouts' success per step (middle plot) moves with each step's tasks, which the three arms
# share, far more than with the objective. Note what this plain-mode comparison can and cannot
# test: in plain multi-turn episodes a turn's context is a prefix of the transcript, so the turn
# rows and the trajectory row see the same tokens and (for the paper preset) the same advantage;
# the arms differ in how tokens are weighted ((1/T_i)(1/|a|) per turn vs one mean over the
# trajectory's tokens), in the code preset's statistics over turn samples and clip 0.2 / 0.3 with
# dual clip, and in GRPO's KL coefficient (0.04 vs 0.001). AgentFlow's case, planner turns with
# separate prompts, is the `agentflow` mode, where trajectory-level GRPO is not defined.
#
# **At this scale (a 1.26M-parameter model, one mid-trained start, 6 RL steps of 64 episodes,
# 3 RL seeds) the paper's direction did not show: broadcasting the outcome to every turn did not
# train tool use better than trajectory-level GRPO, with the paper preset slightly below it
# (sampled −0.016 ± 0.009, greedy −0.021 ± 0.028) and the released-code preset slightly above
# (+0.010 ± 0.010), both within one or two held-out tasks and no clear difference by the paired
# t-test.**
