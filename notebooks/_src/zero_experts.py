# %% [markdown]
# # Zero-computation experts at matched compute (LongCat-Flash)
#
# LongCat-Flash (arXiv 2509.01322) adds **Z zero-computation experts** (identity slots, no weights)
# to the router's N FFN experts: a token that routes a slot to a zero expert spends no FFN compute
# on it, so the number of FFN experts a token activates varies with the token. A budget controller
# (a per-expert router bias, updated outside the optimizer) keeps the *average* number of FFN
# experts per token at a target K_e. The paper's direction: spending compute where it is needed
# trains at least as well as a fixed top-k **at the same average compute**.
#
# Here the tiny ScMoE mid-training job (`configs/midtrain.py:tiny`, run by the library's own loop
# `agentic_jax.train.loop.run` on the built-in agent-native data mix) in three arms, every one with
# the LongCat budget controller on:
#
# | arm | slots | top-k | controller target | role |
# |---|---|---|---|---|
# | **Z=0 top-2** | 8 FFN experts | 2 | 2 (= k: a pure load balancer) | the fixed top-k baseline |
# | **Z=4 top-3** | 8 FFN + 4 zero experts | 3 | K_e = 2 FFN experts per token | zero experts, **matched compute** |
# | **Z=0 top-3** | 8 FFN experts | 3 | 3 | reference: the compute of the Z=4 arm's 3 slots had they all been FFN |
#
# (The ratios are LongCat-Flash's: N : Z = 2 : 1 and K_e : k = 2 : 3, as its 512 : 256 experts and
# about 8 of 12 slots.) For each arm and seed: training and held-out loss, the FFN experts per token
# the run actually activated (measured from the router's choices, `moe/ffn_experts_per_token`), the
# zero-expert share it settled at, and the training wall-clock per step.

# %%
import os
QUICK = os.environ.get("NOTEBOOK_QUICK") == "1"  # reduced mode: CI (tests/test_notebooks.py)

SEEDS = (0, 1) if QUICK else (0, 1, 2)
STEPS = 8 if QUICK else 500         # optimizer steps per run
BATCH = 4                           # rows of 256 tokens per step
LOG_EVERY = 4 if QUICK else 10      # one metrics record per LOG_EVERY steps
EVAL_EVERY = STEPS // 2 if QUICK else 100  # held-out loss every EVAL_EVERY steps and at the end
SAMPLES = 48 if QUICK else None     # built-in samples per data source (None: the config's)
REFERENCE = not QUICK               # also run the Z=0 top-3 reference arm
K_EFF = 2                           # FFN experts per token of the two compared arms
ZERO_EXPERTS = 4                    # Z of the zero-expert arm
print(f"QUICK={QUICK} seeds={SEEDS} steps={STEPS} batch={BATCH}x256 reference={REFERENCE}")

# %%
import contextlib, io, json, pathlib, platform, subprocess, tempfile, time, warnings
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets

import numpy as np
import matplotlib.pyplot as plt
import jax

try:  # Jupyter / Colab: inline PNG plots (what `%matplotlib inline` does)
    get_ipython().run_line_magic("matplotlib", "inline")
except NameError:  # plain Python
    pass

import agentic_jax
from agentic_jax.train import loop
from agentic_jax.train import config as config_lib
from agentic_jax.train import flops as flops_lib

# Runs of the same shapes (every seed of an arm) load their compiled step from this cache.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="zero_experts_jax_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# configs/midtrain.py beside the package in a checkout (pip install -e); the package itself does
# not install configs/, so after a pip install from git (Colab) fetch it from the repository.
PKG_ROOT = pathlib.Path(agentic_jax.__file__).resolve().parent.parent
CONFIG = PKG_ROOT / "configs" / "midtrain.py"
if not CONFIG.exists():
    import urllib.request
    CONFIG = pathlib.Path(tempfile.mkdtemp()) / "midtrain.py"
    urllib.request.urlretrieve(f"{RAW}/configs/midtrain.py", CONFIG)

BASE = f"Z=0 top-{K_EFF}"
ZERO = f"Z={ZERO_EXPERTS} top-{K_EFF + 1}"
REF = f"Z=0 top-{K_EFF + 1}"
ARMS = {  # name -> (config.model overrides, the controller's target FFN experts per token)
    BASE: (dict(zero_expert_num=0, num_experts_per_tok=K_EFF), K_EFF),
    ZERO: (dict(zero_expert_num=ZERO_EXPERTS, num_experts_per_tok=K_EFF + 1), K_EFF),
}
if REFERENCE:
    ARMS[REF] = (dict(zero_expert_num=0, num_experts_per_tok=K_EFF + 1), K_EFF + 1)

def make_config(arm, seed, tokenizer_path=""):
    c = config_lib.load_config(f"{CONFIG}:tiny")
    c.seed = seed
    overrides, target = ARMS[arm]
    for key, value in overrides.items():
        c.model[key] = value
    c.moe.bias_update = "longcat"          # the budget controller, on in every arm
    c.moe.target_ffn_per_token = float(target)
    c.data.batch_size = BATCH
    c.data.tokenizer.path = tokenizer_path  # the seed's tokenizer, shared by its arms
    if SAMPLES:
        for source in c.data.mix.values():
            source.num_samples = SAMPLES
            source.eval_num_samples = max(8, SAMPLES // 4)
    c.train.num_steps = STEPS
    c.optim.warmup_steps = min(c.optim.warmup_steps, STEPS // 2)  # the config's 10, or fewer
    c.train.log_every = LOG_EVERY
    c.train.eval_every = EVAL_EVERY
    c.train.progress = False
    c.checkpoint.every = STEPS
    return c

base = make_config(BASE, 0)
print("tiny ScMoE:", {k: base.model[k] for k in ("hidden_size", "num_layers", "n_routed_experts",
      "moe_intermediate_size", "moe_dispatch")}, "| optimizer", base.optim.schedule,
      "lr", base.optim.lr, "| controller rate", base.moe.bias_rate, "| balance loss",
      base.objective.balance_loss)

# %% [markdown]
# ## Train every arm for every seed
#
# Each run is a complete mid-training job in its own temporary directory (data, tokenizer, model,
# checkpoints, `metrics.jsonl`). The arms of a seed share the data, the held-out set and the
# tokenizer, and run one after the other, so a slow stretch of the machine hits them alike.
# Wall-clock per step is the loop's training time (compilation and evaluation excluded) over the
# number of steps.

# %%
def read_records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]

runs = {}  # (arm, seed) -> what the run measured
t_all = time.perf_counter()
for seed in SEEDS:
    tokenizer = ""
    for arm in ARMS:
        workdir = tempfile.mkdtemp(prefix=f"zero_experts_s{seed}_")
        cfg = make_config(arm, seed, tokenizer)
        log = io.StringIO()
        with contextlib.redirect_stdout(log):  # the loop's own printout, kept in `log`
            summary = loop.run(cfg, workdir, handle_signals=False)
        assert summary["status"] == "completed", log.getvalue()
        tokenizer = tokenizer or os.path.join(workdir, "tokenizer.model")
        recs = read_records(workdir)
        runs[arm, seed] = r = dict(
            losses=np.array([float(l) for _, l in summary["losses"]]),
            eval_loss=summary["eval_loss"],
            ffn=np.array([x["moe/ffn_experts_per_token"] for x in recs]),
            zero=np.array([x["moe/zero_expert_share"] for x in recs]),
            steps=np.array([x["step"] for x in recs]),
            s_per_step=summary["seconds"]["train"] / STEPS,
            flop_model=flops_lib.flop_model(config_lib.model_config(cfg.model)),
            seconds=summary["seconds"],
        )
        sec = r["seconds"]
        print(f"seed {seed} {arm:10s}: loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}, "
              f"held-out {r['eval_loss']:.4f}, FFN experts/token {r['ffn'].mean():.3f}, "
              f"zero share {r['zero'][-1]:.3f}, {1000 * r['s_per_step']:.0f} ms/step "
              f"(run {sec['total']:.0f} s: data {sec['data']:.0f}, compile {sec['compile']:.0f}, "
              f"train {sec['train']:.0f}, eval {sec['eval']:.0f})")
print(f"all runs: {time.perf_counter() - t_all:.0f} s")

# %% [markdown]
# ## Loss against activated compute
#
# (a) Training loss per step, smoothed over 25 steps, mean over seeds (band: min to max); the
# legend gives each arm's measured FFN experts per token. (b) The same, minus the Z=0 top-2 run of
# the same seed (below 0: lower loss than the baseline). (c) Held-out loss after the last step,
# minus the Z=0 top-2 run's of the same seed (the seeds differ far more from each other than the
# arms do, so the comparison is paired), against the FFN experts per token the run actually
# activated (its average over all of training): one small point per seed, the arm's mean ± sd as
# a large marker. (d) The budget controller in the
# zero-expert arm: FFN experts and zero experts per token in each logged window, every seed.

# %%
def smooth(x, n=25):
    n = max(1, min(n, len(x) // 10))
    return np.convolve(x, np.ones(n) / n, mode="valid")

def spread(values):
    return np.std(values, ddof=1) if len(values) > 1 else 0.0

colors = dict(zip(ARMS, ("tab:blue", "tab:orange", "tab:green")))
fig, axes = plt.subplots(2, 2, figsize=(12, 8))
(ax_loss, ax_diff), (ax_compute, ax_ctrl) = axes
for arm in ARMS:
    curves = np.stack([smooth(runs[arm, s]["losses"]) for s in SEEDS])
    diffs = np.stack([smooth(runs[arm, s]["losses"] - runs[BASE, s]["losses"]) for s in SEEDS])
    x = np.arange(curves.shape[1]) + (STEPS - curves.shape[1]) + 1
    ffn = np.mean([runs[arm, s]["ffn"].mean() for s in SEEDS])
    for ax, y in ((ax_loss, curves), (ax_diff, diffs)):
        ax.plot(x, y.mean(0), color=colors[arm], label=f"{arm}: {ffn:.2f} FFN experts/token")
        ax.fill_between(x, y.min(0), y.max(0), color=colors[arm], alpha=0.2)
    pts = np.array([(runs[arm, s]["ffn"].mean(), runs[arm, s]["eval_loss"] - runs[BASE, s]["eval_loss"])
                    for s in SEEDS])
    ax_compute.scatter(pts[:, 0], pts[:, 1], color=colors[arm], s=12)
    ax_compute.errorbar(pts[:, 0].mean(), pts[:, 1].mean(), yerr=spread(pts[:, 1]),
                        xerr=spread(pts[:, 0]), color=colors[arm], marker="D", markersize=9,
                        capsize=4, markerfacecolor="none", label=arm)
for s in SEEDS:
    r = runs[ZERO, s]
    ax_ctrl.plot(r["steps"], r["ffn"], color="tab:orange", alpha=0.8,
                 label="FFN experts/token" if s == SEEDS[0] else None)
    ax_ctrl.plot(r["steps"], (K_EFF + 1) - r["ffn"], color="tab:gray", alpha=0.8, linestyle="--",
                 label="zero experts/token" if s == SEEDS[0] else None)
ax_ctrl.axhline(K_EFF, color="k", linewidth=0.8, linestyle=":", label=f"target K_e = {K_EFF}")
ax_diff.axhline(0, color="k", linewidth=0.8)
ax_loss.set(xlabel="step", ylabel="training loss", title="(a) training loss")
ax_diff.set(xlabel="step", ylabel=f"training loss − {BASE}'s (same seed)",
            title=f"(b) against the {BASE} baseline")
ax_compute.axhline(0, color="k", linewidth=0.8)
ax_compute.set(xlabel="activated FFN experts per token (measured, run average)",
               ylabel=f"held-out loss − {BASE}'s (same seed)", title="(c) held-out loss vs activated compute")
ax_ctrl.set(xlabel="step", ylabel="slots per token", title=f"(d) {ZERO}: budget controller")
for ax in axes.flat:
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Results across seeds
#
# Per arm, mean ± sample standard deviation over the seeds. *train loss*: mean of the last 10% of
# steps; *held-out*: the loss on the held-out samples after the last step; *FFN experts/token*:
# measured, averaged over the whole run (the compute actually spent) and over the last 20% of the
# logged windows (where the controller settled); *zero share*: fraction of routed slots that went
# to zero experts over the last 20%; *activated params/token*: the matmul parameters a token runs
# through at the run's measured FFN experts per token (`agentic_jax.train.flops`); *ms/step*:
# training wall-clock per step.

# %%
def last(x, frac):
    x = np.asarray(x)
    return x[-max(1, int(round(frac * len(x)))):]

rows = {arm: [dict(
    train=last(runs[arm, s]["losses"], 0.1).mean(), heldout=runs[arm, s]["eval_loss"],
    ffn_run=runs[arm, s]["ffn"].mean(), ffn_end=last(runs[arm, s]["ffn"], 0.2).mean(),
    zero_end=last(runs[arm, s]["zero"], 0.2).mean(),
    act_params=runs[arm, s]["flop_model"].activated_params(runs[arm, s]["ffn"].mean()),
    ms=1000 * runs[arm, s]["s_per_step"]) for s in SEEDS] for arm in ARMS}

def fmt(values, spec):
    v = np.asarray(values, float)
    return f"{v.mean():{spec}}" + (f" ± {spread(v):{spec}}" if len(v) > 1 else "")

COLUMNS = [("train loss", "train", ".4f"), ("held-out loss", "heldout", ".4f"),
           ("FFN experts/token (run)", "ffn_run", ".3f"), ("FFN experts/token (end)", "ffn_end", ".3f"),
           ("zero share (end)", "zero_end", ".3f"), ("activated params/token", "act_params", ",.0f"),
           ("ms/step", "ms", ".0f")]
table = ["| arm | seeds | " + " | ".join(c[0] for c in COLUMNS) + " |",
         "|---|---|" + "---|" * len(COLUMNS)]
for arm, per_seed in rows.items():
    table.append(f"| {arm} | {len(per_seed)} | " + " | ".join(
        fmt([p[key] for p in per_seed], spec) for _, key, spec in COLUMNS) + " |")
print("\n".join(table))
print()
for arm in ARMS:
    print(f"{arm:10s} held-out loss per seed:", [round(p["heldout"], 4) for p in rows[arm]])

# %% [markdown]
# ## Did the paper's direction hold here?
#
# The rule, fixed before the runs: take the paired per-seed difference of held-out loss,
# d = (Z=4 top-3) − (Z=0 top-2). The direction held if the mean d is below 0 ("beats"), or above
# 0 by no more than two standard errors of the mean over seeds ("matches" within seed noise);
# otherwise it did not hold. Beside it: how far the zero-expert arm's measured compute was from
# the matched K_e, what the Z=0 top-3 reference (more compute) gained over the baseline, and the
# wall-clock per step.

# %%
def paired(arm):
    return np.array([a["heldout"] - b["heldout"] for a, b in zip(rows[arm], rows[BASE])])

d = paired(ZERO)
se = spread(d) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
if d.mean() < 0:
    verdict = (f"held: {ZERO} beat {BASE} on held-out loss by {-d.mean():.4f} on average "
               f"({int((d < 0).sum())} of {len(d)} seeds)")
elif len(d) > 1 and d.mean() <= 2 * se:
    verdict = (f"held as a match: {ZERO} is {d.mean():.4f} worse on held-out loss, within two "
               f"standard errors ({2 * se:.4f}) of the seed noise")
else:
    verdict = (f"did not hold: {ZERO} is {d.mean():.4f} worse on held-out loss"
               + (f", beyond two standard errors ({2 * se:.4f})" if len(d) > 1 else " (one seed)"))
ffn_z = np.mean([p["ffn_run"] for p in rows[ZERO]])
ms = {arm: np.mean([p["ms"] for p in rows[arm]]) for arm in ARMS}
print(f"At {STEPS} steps of {BATCH}x256 tokens on this {os.cpu_count()}-core machine, with {ZERO} "
      f"at {ffn_z:.2f} FFN experts per token (run average; target {K_EFF}) against {BASE}'s {K_EFF}, "
      f"LongCat-Flash's direction {verdict}; its wall-clock per step was {ms[ZERO] / ms[BASE]:.2f}x "
      f"{BASE}'s.")
if REFERENCE:
    d_ref = paired(REF)
    print(f"Reference: {REF} (3 FFN experts per token) was {d_ref.mean():+.4f} ± {spread(d_ref):.4f} "
          f"held-out loss against {BASE} (paired over seeds), at {ms[REF] / ms[BASE]:.2f}x its "
          f"wall-clock per step.")
commit = subprocess.run(["git", "-C", str(PKG_ROOT), "describe", "--always", "--dirty"],
                        capture_output=True, text=True).stdout.strip() or "unknown"
print(f"run: {time.strftime('%Y-%m-%d')}, commit {commit}, {platform.machine()} {os.cpu_count()} CPU cores, "
      f"JAX {jax.__version__} on {jax.devices()[0].platform}, QUICK={QUICK}")
