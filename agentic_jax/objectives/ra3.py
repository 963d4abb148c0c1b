"""RA3 (Reasoning as Action Abstractions, arXiv 2509.25810): the pure math of the bound, the E-step
reward and the M-step loss (issue 13). No model, no sampling, no training loop: jax.numpy only.

Our reading (../shared/docs/objectives-spec.md §3, ../shared/docs/ra3.md §2–§4). An expert
trajectory is cut into primitive actions a_0..a_{T-1} (agentic_jax.data.segment); s_t is everything
before a_t. At each boundary t a latent z_t is either "continue" (keep z_{t-1}; rendered as nothing
extra) or a *new* rationale (tokens between rationale markers). The sequential bound (spec §3):

    log p(a_{0:T-1} | s) >= E_q [ Σ_t log π(a_t | s_t, z_t)
                                  − KL(q(z_t | ·) ‖ p(z_t | s_t, z_{t-1})) ]

with the persistence prior p(z_t | s_t, z_{t-1}) = α·δ(z_t = z_{t-1}) + (1−α)·U(z_t), α = p_keep.

Terms (`bound_terms`, per sequence, summed over the valid boundaries m_t; a one-sample estimate for
the sampled latents, as RL uses it):
  log_likelihood = Σ_t m_t · log π(a_t | s_t, z_t),  log π(a_t | ·) = Σ over the action's tokens
                   (masked) of the per-token log-probs (`action_logprob`).
  log_prior      = Σ_t m_t · log p(z_t): log p_keep for a continue; for a new rationale of n tokens
                   log(1 − p_keep) + log U(z) with log U(z) = −n·log(prior_vocab_size) (uniform
                   tokens; ra3.md §2 "uniform over new latents"). Choice: prior_vocab_size=None
                   (default) drops the log U term, i.e. keeps only the Bernoulli switch part of the
                   prior: log |Z| for comment strings is enormous and ra3.md §2 says c is tuned, not
                   computed from α, so the uniform part is a constant we do not pretend to know.
  log_posterior  = Σ_t m_t · log q(z_t | ·): the proposal policy's log-prob of its decision token
                   and, for a new rationale, of the rationale tokens (given, `q_logp`).
  kl             = log_posterior − log_prior (one-sample estimate of Σ_t KL(q ‖ p)).
  elbo           = log_likelihood − kl.
  num_new        = Σ_t m_t · 1[z_t new];  cost = c · num_new.
  surrogate      = log_likelihood − cost = Σ_t r_t, the practical objective (spec §3: "the KL
                   collapses to a constant cost per new latent").

E-step reward (`estep_reward`, spec §3 / ra3.md §3): r_t = log π(a_t | s_t, z_t) − c·1[z_t new].
A continue reuses the previous rationale and pays nothing. Choices: novelty is the *decision*, not
the text (a new rationale that happens to repeat the old one still pays c); the first boundary's
"previous" latent is the empty rationale, so a continue at t=0 means "no rationale". c = +inf is
allowed (a new proposal then gets −inf, a continue its plain log-likelihood; no inf·0 NaN).

Group baselines (`group_advantages`, the registry's GRPO estimator): the G proposals at one
boundary form a group and A_i = r_i − mean_g r. Choice: std="none" by default, no division by the
group std. The rewards are log-likelihoods in nats, so their scale means something, and at a
boundary where every proposal is a continue the rewards are identical (std 0) and dividing would
only blow up round-off. std="unbiased" (ddof=1, verl's choice, spec §0) and "population" (ddof=0)
are options; both divide by (std + eps). The job (rl/ra3_estep.py) gets the same numbers from the
configured RL loss: config.estep.rl.loss "grpo" with loss_options.std_norm / std_ddof.

Choosing the annotation (`choose_latents`): the proposal with the largest reward at each boundary
(ties: the first, so put the continue proposal first to prefer it). With c = inf every new proposal
scores −inf, so a continue is chosen wherever one was proposed.

M-step (`mstep_loss`, spec §3 "NTP on sequences with the chosen rationales interleaved"; ra3.md §4):
token-weighted next-token cross-entropy over the action tokens, plus the rationale tokens when
train_rationale=True (ra3.md §4 recommends training them: at test time the model writes its own
rationales; the bound's term alone only needs the action tokens, so False is the literal ELBO
M-step). Normaliser: the number of trained tokens, or a given one (the whole optimizer batch, as
objectives/next_token.py does).

Reduction to next-token training (spec §3: "c → ∞ never opens a latent and RA3 reduces to plain
NTP"): with c = inf the E-step picks continue-with-the-empty-rationale at every boundary, so the
annotated sequence *is* the expert sequence, it has no rationale tokens, and mstep_loss equals the
next-token cross-entropy on the action tokens (loss and gradient, whatever train_rationale says).
With p_keep = 1 and a deterministic continue (q_logp = 0) the bound's kl is 0 and elbo equals
Σ_t log π(a_t | s_t), the NTP log-likelihood. tests/test_ra3_bound.py checks both.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

Array = jax.Array

STD_MODES = ("none", "unbiased", "population")


def action_logprob(token_logp: Array, mask: Array) -> Array:
  """log π(a | ·) = Σ over the action's tokens of the per-token log-probs; mask [..., L] marks them.
  Masked-out entries may hold anything (even -inf): they are replaced by 0, not multiplied."""
  return jnp.sum(jnp.where(mask.astype(bool), token_logp, 0.0), axis=-1)


def estep_reward(action_logp: Array, is_new: Array, c) -> Array:
  """r = log π(a_t | s_t, z_t) − c·1[z_t new]; c may be inf (new → −inf, continue unchanged)."""
  return jnp.where(is_new.astype(bool), action_logp - c, action_logp)


def group_advantages(rewards: Array, *, std: str = "none", eps: float = 1e-6) -> Array:
  """Advantages of the proposals of each group (last axis = the G proposals at one boundary),
  computed by the RL registry's GRPO estimator (objectives/rl_advantages.grpo_advantages; no
  second copy of its group statistics): std "none" = R − mean, "unbiased" / "population" =
  divided by (std + eps) with ddof 1 / 0. A group of one follows the registry's (verl's)
  convention: mean 0, std 1, so its advantage is its reward."""
  if std not in STD_MODES:
    raise ValueError(f"std must be one of {STD_MODES}, got {std!r}")
  from agentic_jax.objectives import rl_advantages  # pylint: disable=import-outside-toplevel
  r = jnp.asarray(rewards, jnp.float32)
  g = r.shape[-1]
  flat = r.reshape(-1)
  group_id = jnp.arange(flat.shape[0], dtype=jnp.int32) // g
  adv = rl_advantages.grpo_advantages(flat, group_id, std_norm=std != "none",
                                      std_ddof=1 if std == "unbiased" else 0, eps=eps)
  return adv.reshape(r.shape)


def latent_log_prior(is_new: Array, p_keep: float, rationale_len: Optional[Array] = None,
                     prior_vocab_size: Optional[int] = None) -> Array:
  """log p(z_t | s_t, z_{t-1}): log p_keep for a continue; log(1 − p_keep) − n·log V for a new
  rationale of n tokens (the −n·log V part only when prior_vocab_size is given)."""
  if not 0.0 <= p_keep <= 1.0:
    raise ValueError(f"p_keep must be in [0, 1], got {p_keep}")
  log_keep = math.log(p_keep) if p_keep > 0 else -math.inf
  log_switch = math.log1p(-p_keep) if p_keep < 1 else -math.inf
  new_term = jnp.full(is_new.shape, log_switch, jnp.float32)
  if prior_vocab_size is not None:
    if rationale_len is None:
      raise ValueError("prior_vocab_size needs rationale_len")
    new_term = new_term - rationale_len * math.log(prior_vocab_size)
  return jnp.where(is_new.astype(bool), new_term, log_keep)


def bound_terms(action_logp: Array, is_new: Array, q_logp: Array, mask: Array, *, c,
                p_keep: float, rationale_len: Optional[Array] = None,
                prior_vocab_size: Optional[int] = None) -> dict[str, Array]:
  """The bound's terms per sequence. Inputs are [B, T] over boundaries: log π(a_t | s_t, z_t) of
  the chosen latents, whether z_t is new, log q(z_t | ·), and the valid-boundary mask."""
  m = mask.astype(bool)

  def total(x):
    return jnp.sum(jnp.where(m, x, 0.0), axis=-1)

  new = jnp.logical_and(is_new.astype(bool), m)
  log_likelihood = total(action_logp)
  log_prior = total(latent_log_prior(is_new, p_keep, rationale_len, prior_vocab_size))
  log_posterior = total(q_logp)
  kl = log_posterior - log_prior
  num_new = jnp.sum(new, axis=-1).astype(jnp.float32)
  rewards = estep_reward(action_logp, is_new, c)
  return {
      "log_likelihood": log_likelihood,
      "log_prior": log_prior,
      "log_posterior": log_posterior,
      "kl": kl,
      "elbo": log_likelihood - kl,
      "num_new": num_new,
      "cost": jnp.where(num_new > 0, c * num_new, 0.0),
      "surrogate": total(rewards),
  }


def choose_latents(rewards: Array) -> Array:
  """Index of the best proposal per boundary (last axis = proposals; ties → the first)."""
  return jnp.argmax(rewards, axis=-1)


def mstep_loss(logits: Array, targets: Array, action_mask: Array, rationale_mask: Array, *,
               train_rationale: bool, normalizer: Optional[Array] = None) -> Array:
  """Next-token cross-entropy on an annotated sequence: logits [B, L, V] predict targets [B, L];
  action_mask / rationale_mask [B, L] mark target tokens of actions / of rationales (and markers).
  Trained tokens: the actions, plus the rationales when train_rationale. Token mean over them
  (or over `normalizer`)."""
  weights = action_mask.astype(jnp.float32)
  if train_rationale:
    weights = jnp.maximum(weights, rationale_mask.astype(jnp.float32))
  logits = logits.astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  denom = jnp.maximum(jnp.sum(weights), 1.0) if normalizer is None else normalizer
  return -jnp.sum(weights * picked) / denom
