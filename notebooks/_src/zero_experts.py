# %% [markdown]
# # Zero-computation experts at matched compute (LongCat-Flash)
#
# LongCat-Flash (arXiv 2509.01322) adds **Z zero-computation experts** (identity slots, no weights)
# to the router's N FFN experts: a token that routes a slot to a zero expert spends no FFN compute
# on it, so the number of FFN experts a token activates varies with the token. A budget controller
# (a per-expert router bias, updated outside the optimizer) keeps the *average* number of FFN
# experts per token at a target K_e. The paper's claim behind it: spending compute where it is
# needed, at the same average compute, trains at least as well as a fixed top-k.
#
# Here, two arms of the tiny ScMoE mid-training job (`configs/midtrain.py:tiny`, the library's own
# run loop `agentic_jax.train.loop.run`, on the built-in agent-native data mix), at **matched
# average FFN experts per token (K_e = 2)**:
#
# | arm | slots | top-k | controller |
# |---|---|---|---|
# | **Z = 0** | 8 FFN experts | 2 | LongCat controller with target 2 (= k: a pure load balancer) |
# | **Z = 4** | 8 FFN + 4 zero experts | 3 | LongCat controller with target K_e = 2 FFN experts per token |
#
# (The ratios are LongCat-Flash's: N : Z = 2 : 1 and K_e : k = 2 : 3, as 512 : 256 and ~8 of 12.)
# For each arm and seed we report the training and held-out loss, the FFN experts per token it
# actually activated (measured from the router's choices, `moe/ffn_experts_per_token`), the
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
K_EFF = 2                           # FFN experts per token, both arms
ZERO_EXPERTS = 4                    # Z of the Z > 0 arm
print(f"QUICK={QUICK} seeds={SEEDS} steps={STEPS} batch={BATCH}x256")

# %%
import contextlib, io, json, pathlib, platform, subprocess, tempfile, time, warnings
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets

import numpy as np
import matplotlib.pyplot as plt
import jax

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
    urllib.request.urlretrieve(f"https://raw.githubusercontent.com/{REPO}/main/configs/midtrain.py", CONFIG)

ARMS = {
    "Z=0": dict(zero_expert_num=0, num_experts_per_tok=K_EFF),
    f"Z={ZERO_EXPERTS}": dict(zero_expert_num=ZERO_EXPERTS, num_experts_per_tok=K_EFF + 1),
}

def make_config(arm, seed, tokenizer_path=""):
    c = config_lib.load_config(f"{CONFIG}:tiny")
    c.seed = seed
    for key, value in ARMS[arm].items():
        c.model[key] = value
    c.moe.bias_update = "longcat"          # the budget controller, on in both arms
    c.moe.target_ffn_per_token = float(K_EFF)
    c.data.batch_size = BATCH
    c.data.tokenizer.path = tokenizer_path  # the seed's tokenizer, shared by both arms
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

base = make_config("Z=0", 0)
print("tiny ScMoE:", {k: base.model[k] for k in ("hidden_size", "num_layers", "n_routed_experts",
      "moe_intermediate_size", "moe_dispatch")}, "| optimizer", base.optim.schedule,
      "lr", base.optim.lr, "| controller rate", base.moe.bias_rate)

# %% [markdown]
# ## Train both arms for every seed
#
# Each run is a complete mid-training job in its own temporary directory (data, tokenizer, model,
# checkpoints, `metrics.jsonl`). The two arms of a seed share the data, the held-out set and the
# tokenizer, and run one after the other, so a slow stretch of the machine hits both arms alike.
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
        workdir = tempfile.mkdtemp(prefix=f"zero_experts_{arm}_s{seed}_")
        cfg = make_config(arm, seed, tokenizer)
        log = io.StringIO()
        with contextlib.redirect_stdout(log):  # the loop's own printout, kept in `log`
            summary = loop.run(cfg, workdir, handle_signals=False)
        assert summary["status"] == "completed", log.getvalue()
        tokenizer = tokenizer or os.path.join(workdir, "tokenizer.model")
        recs = read_records(workdir)
        steps = np.array([r["step"] for r in recs])
        model_cfg = config_lib.model_config(cfg.model)
        runs[arm, seed] = dict(
            records=recs,
            losses=np.array([float(l) for _, l in summary["losses"]]),
            eval_steps=[r["step"] for r in recs if "eval_loss" in r],
            eval_losses=[r["eval_loss"] for r in recs if "eval_loss" in r],
            eval_loss=summary["eval_loss"],
            ffn=np.array([r["moe/ffn_experts_per_token"] for r in recs]),
            zero=np.array([r["moe/zero_expert_share"] for r in recs]),
            steps=steps,
            s_per_step=summary["seconds"]["train"] / STEPS,
            flop_model=flops_lib.flop_model(model_cfg),
            seconds=summary["seconds"],
        )
        r = runs[arm, seed]
        print(f"seed {seed} {arm:4s}: loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}, "
              f"held-out {r['eval_loss']:.4f}, FFN experts/token {r['ffn'].mean():.3f}, "
              f"zero share {r['zero'][-1]:.3f}, {1000 * r['s_per_step']:.0f} ms/step "
              f"(run {r['seconds']['total']:.0f} s: data {r['seconds']['data']:.0f}, compile "
              f"{r['seconds']['compile']:.0f}, train {r['seconds']['train']:.0f}, eval {r['seconds']['eval']:.0f})")
print(f"all runs: {time.perf_counter() - t_all:.0f} s")

# %% [markdown]
# ## Loss against activated compute
#
# Left: training loss (per step, smoothed over 25 steps, mean over seeds); the legend gives each
# arm's measured FFN experts per token. Middle: held-out loss at the end against the FFN experts
# per token the run actually activated (average over all of training), one point per seed.
# Right: the budget controller at work in the Z > 0 arm: FFN experts per token and the
# zero-expert share per logged window.

# %%
def smooth(x, n=25):
    n = max(1, min(n, len(x)))
    return np.convolve(x, np.ones(n) / n, mode="valid")

colors = {arm: c for arm, c in zip(ARMS, ("tab:blue", "tab:orange"))}
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for arm in ARMS:
    curves = np.stack([smooth(runs[arm, s]["losses"]) for s in SEEDS])
    ffn = np.mean([runs[arm, s]["ffn"].mean() for s in SEEDS])
    x = np.arange(curves.shape[1]) + (STEPS - curves.shape[1]) + 1
    axes[0].plot(x, curves.mean(0), color=colors[arm], label=f"{arm}: {ffn:.2f} FFN experts/token")
    if len(SEEDS) > 1:
        axes[0].fill_between(x, curves.min(0), curves.max(0), color=colors[arm], alpha=0.2)
    pts = np.array([(runs[arm, s]["ffn"].mean(), runs[arm, s]["eval_loss"]) for s in SEEDS])
    axes[1].scatter(pts[:, 0], pts[:, 1], color=colors[arm], label=arm)
    axes[1].errorbar(pts[:, 0].mean(), pts[:, 1].mean(), yerr=pts[:, 1].std(ddof=1) if len(SEEDS) > 1 else None,
                     xerr=pts[:, 0].std(ddof=1) if len(SEEDS) > 1 else None, color=colors[arm],
                     marker="D", markersize=9, capsize=4, markerfacecolor="none")
z_arm = f"Z={ZERO_EXPERTS}"
for s in SEEDS:
    r = runs[z_arm, s]
    axes[2].plot(r["steps"], r["ffn"], color="tab:orange", alpha=0.8,
                 label="FFN experts/token" if s == SEEDS[0] else None)
    axes[2].plot(r["steps"], K_EFF + 1 - r["ffn"], color="tab:gray", alpha=0.8, linestyle="--",
                 label="zero experts/token" if s == SEEDS[0] else None)
axes[2].axhline(K_EFF, color="k", linewidth=0.8, linestyle=":", label=f"target K_e = {K_EFF}")
axes[0].set(xlabel="step", ylabel="training loss", title="training loss (mean, min-max over seeds)")
axes[1].set(xlabel="activated FFN experts per token (measured)", ylabel="held-out loss",
            title="held-out loss vs activated compute")
axes[2].set(xlabel="step", ylabel="slots per token", title=f"{z_arm}: budget controller")
for ax in axes:
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Results across seeds
#
# Per arm, mean ± sample standard deviation over the seeds. *train loss*: mean of the last 10% of
# steps; *held-out*: the loss on the held-out samples after the last step; *FFN experts/token*:
# measured average over the whole run (the compute actually spent) and over the last 20% of the
# logged windows (where the controller settled); *zero share*: fraction of routed slots that went
# to zero experts over the last 20%; *activated params/token*: the matmul parameters a token runs
# through at the measured FFN experts per token (`agentic_jax.train.flops`); *ms/step*: training
# wall-clock per step.

# %%
def last(x, frac):
    x = np.asarray(x)
    return x[-max(1, int(round(frac * len(x)))):]

rows = {}
for arm in ARMS:
    per_seed = []
    for s in SEEDS:
        r = runs[arm, s]
        per_seed.append(dict(
            train=last(r["losses"], 0.1).mean(), heldout=r["eval_loss"],
            ffn_run=r["ffn"].mean(), ffn_end=last(r["ffn"], 0.2).mean(),
            zero_end=last(r["zero"], 0.2).mean(),
            act_params=r["flop_model"].activated_params(r["ffn"].mean()),
            ms=1000 * r["s_per_step"]))
    rows[arm] = per_seed

def fmt(values, spec):
    v = np.asarray(values, float)
    sd = f" ± {v.std(ddof=1):{spec}}" if len(v) > 1 else ""
    return f"{v.mean():{spec}}{sd}"

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
print("per seed (held-out loss):", {arm: [round(p["heldout"], 4) for p in rows[arm]] for arm in rows})

# %% [markdown]
# ## Did the paper's direction hold here?
#
# The rule, fixed before the runs: take the paired per-seed difference of held-out loss,
# d = (Z > 0) − (Z = 0). The direction held if the mean d is below 0 ("beats"), or if it is above
# 0 by no more than two standard errors of the mean over seeds ("matches" within seed noise);
# otherwise it did not hold. The wall-clock comparison is reported beside it: at this size the
# zero-expert arm routes 3 slots per token instead of 2, and its FFN savings are no larger.

# %%
d = np.array([rz["heldout"] - r0["heldout"] for rz, r0 in zip(rows[z_arm], rows["Z=0"])])
se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
if d.mean() < 0:
    verdict = (f"held: Z={ZERO_EXPERTS} beat Z=0 on held-out loss by {-d.mean():.4f} on average "
               f"({int((d < 0).sum())} of {len(d)} seeds)")
elif len(d) > 1 and d.mean() <= 2 * se:
    verdict = (f"held as a match: Z={ZERO_EXPERTS} is {d.mean():.4f} worse on held-out loss, within "
               f"two standard errors ({2 * se:.4f}) of the seed noise")
else:
    verdict = (f"did not hold: Z={ZERO_EXPERTS} is {d.mean():.4f} worse on held-out loss"
               + (f", beyond two standard errors ({2 * se:.4f})" if len(d) > 1 else " (one seed)"))
ffn_z = np.mean([p["ffn_run"] for p in rows[z_arm]])
ms_ratio = np.mean([p["ms"] for p in rows[z_arm]]) / np.mean([p["ms"] for p in rows["Z=0"]])
print(f"At {STEPS} steps of {BATCH}x256 tokens on this {os.cpu_count()}-core machine, with the Z={ZERO_EXPERTS} "
      f"arm at {ffn_z:.2f} FFN experts per token against Z=0's {K_EFF}, LongCat-Flash's direction {verdict}; "
      f"its wall-clock per step was {ms_ratio:.2f}x Z=0's.")
commit = subprocess.run(["git", "-C", str(PKG_ROOT), "rev-parse", "--short", "HEAD"],
                        capture_output=True, text=True).stdout.strip() or "unknown"
print(f"run: {time.strftime('%Y-%m-%d')}, commit {commit}, {platform.machine()} {os.cpu_count()} CPU cores, "
      f"JAX {jax.__version__} on {jax.devices()[0].platform}, QUICK={QUICK}")
