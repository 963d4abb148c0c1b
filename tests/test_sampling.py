"""generate(): padding invariance, EOS, seeded sampling, nucleus filtering, sampler log-probs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic_jax import models, sampling
from tests.model_fixtures import perturbed_variables as _perturbed

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [100, 2, 50, 60]]


@pytest.fixture(scope="module")
def longcat():
  cfg = models.presets.get("longcat_flash_tiny")
  return cfg, _perturbed(cfg, seed=7)


def test_batched_left_padded_equals_each_prompt_alone(longcat):
  cfg, variables = longcat
  batched = sampling.generate(cfg, variables, PROMPTS, 6)
  assert [len(o) for o in batched] == [6, 6, 6]
  for prompt, out in zip(PROMPTS, batched):
    assert sampling.generate(cfg, variables, [prompt], 6) == [out]


def test_eos_stops_each_row_and_is_included(longcat):
  cfg, variables = longcat
  greedy = sampling.generate(cfg, variables, PROMPTS, 6)
  eos = greedy[1][2]
  out = sampling.generate(cfg, variables, PROMPTS, 6, eos_id=eos)
  for full, cut in zip(greedy, out):
    expected = full[:full.index(eos) + 1] if eos in full else full
    assert cut == expected
  assert out[1][-1] == eos and len(out[1]) <= 3


def test_seeded_sampling_is_deterministic_and_seed_dependent(longcat):
  cfg, variables = longcat
  kw = dict(temperature=1.5, top_p=1.0)
  a = sampling.generate(cfg, variables, PROMPTS, 8, seed=1, **kw)
  assert a == sampling.generate(cfg, variables, PROMPTS, 8, seed=1, **kw)
  assert a != sampling.generate(cfg, variables, PROMPTS, 8, seed=2, **kw)
  # a nucleus this small keeps only the arg-max token: sampling becomes greedy
  tiny_p = sampling.generate(cfg, variables, PROMPTS, 8, seed=3, temperature=1.0, top_p=1e-6)
  assert tiny_p == sampling.generate(cfg, variables, PROMPTS, 8)


def test_top_p_keeps_the_smallest_nucleus():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.2]] * 4000))
  keys = jax.random.key(0)
  tok, logp = sampling.sample_logits(logits, keys, temperature=1.0, top_p=0.6)
  counts = np.bincount(np.asarray(tok), minlength=3)
  assert counts[2] == 0 and counts[0] > 0 and counts[1] > 0  # {0, 1} carry 0.8 >= 0.6
  assert counts[0] / counts.sum() == pytest.approx(0.5 / 0.8, abs=0.03)
  np.testing.assert_allclose(np.asarray(logp), np.log(np.where(np.asarray(tok) == 0, 0.5, 0.3)), rtol=1e-5)
  tok, _ = sampling.sample_logits(logits, keys, temperature=1.0, top_p=0.5)
  assert set(np.asarray(tok).tolist()) == {0}  # token 0 alone reaches 0.5


def test_sampler_logprobs_equal_teacher_forced(longcat):
  cfg, variables = longcat
  tokens, lengths = sampling.pad_prompts(PROMPTS)
  new, logp, num = sampling.generate_arrays(
      cfg, variables, jnp.asarray(tokens), jnp.asarray(lengths), jax.random.key(4),
      max_new_tokens=5, temperature=1.0)
  forward = jax.jit(models.build(sampling.decode_config(cfg)).apply)
  for i, prompt in enumerate(PROMPTS):
    seq = jnp.asarray([prompt + np.asarray(new[i]).tolist()])
    lp = jax.nn.log_softmax(forward(variables, seq)[0], -1)
    ref = [float(lp[len(prompt) - 1 + j, int(new[i, j])]) for j in range(5)]
    np.testing.assert_allclose(np.asarray(logp[i]), ref, atol=1e-5)
  assert np.asarray(num).tolist() == [5, 5, 5]


def test_empty_prompt_rejected(longcat):
  cfg, variables = longcat
  with pytest.raises(ValueError, match="at least one token"):
    sampling.generate(cfg, variables, [[1], []], 3)


@pytest.mark.parametrize("preset", ["youtu_llm_tiny", "iquest_loop_tiny"])
def test_prefill_applies_the_head_to_the_last_position_only(preset):
  """The prefill's next-token logits are the full forward's at each prompt's last token, and
  its compiled temporaries stay far below the [B, P, V] f32 logits a head over every position
  holds (XLA kept all of them when the prefill sliced after the head: issue 18's planning)."""
  cfg = models.presets.get(preset).replace(vocab_size=16384)
  variables = _perturbed(cfg, seed=2)
  prompts = [[1, 5, 9, 33, 7, 2, 8, 90], [1, 44, 3], [1, 6, 6, 6, 6, 12]]
  tokens, lengths = sampling.pad_prompts(prompts)
  last, _ = sampling.prefill(cfg, variables, jnp.asarray(tokens), jnp.asarray(lengths),
                             cache_len=tokens.shape[1] + 4)
  model = models.build(cfg)
  for i, p in enumerate(prompts):
    full = model.apply(variables, jnp.asarray([p], jnp.int32))
    np.testing.assert_allclose(np.asarray(last[i]), np.asarray(full[0, -1]), rtol=1e-4, atol=1e-4)
  b, p = 8, 256
  compiled = sampling.prefill.lower(
      cfg, variables, jax.ShapeDtypeStruct((b, p), jnp.int32),
      jax.ShapeDtypeStruct((b,), jnp.int32), cache_len=p + 8).compile()
  full_logits = b * p * cfg.vocab_size * 4  # 128 MiB
  assert compiled.memory_analysis().temp_size_in_bytes < full_logits / 2
