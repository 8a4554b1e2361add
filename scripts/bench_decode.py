"""Decoding and scoring speed: flan-jax against transformers, same weights, same inputs, outputs compared.

    .venv/bin/python scripts/bench_decode.py [--batch 8] [--input_length 64] [--new_tokens 64] [--beams 4]

Three measurements, each side by side in this run (best of --repeats calls after a warm-up):
- greedy: `decoding.sample` against `generate(do_sample=False)`, token for token;
- beam search (--beams, no length penalty on either side): `decoding.beam_search(alpha=0)` against
  `generate(num_beams=..., length_penalty=0)`, best sequence compared;
- rank classification (MMLU's 4 options, --input_length prompt tokens, 2-token options): `decoding.score_options`
  (the encoder once per prompt) against transformers scoring each (prompt, option) pair, as lm-eval-harness does,
  and against transformers with the encoder run once per prompt; log-likelihoods compared.
Greedy and beam search also run compiled without decoding.LOOP_COMPILER_OPTIONS (XLA's default CPU dots,
YNNPACK), to show what those options change.
Weights are random with the Flan-T5-small shape (from ../shared/data/hf/flan-t5-small/config.json, or built in);
a random model practically never emits EOS, so both decode --new_tokens tokens.
"""

import argparse
import functools
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from flan_jax import decoding, hf
from flan_jax.data.paths import shared_data_dir

SMALL = dict(model_type="t5", vocab_size=32128, d_model=512, d_ff=1024, num_heads=6, d_kv=64, num_layers=8,
             num_decoder_layers=8, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
             decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
OPTIONS = 4


def best_of(fn, repeats):
  """Best time of `repeats` calls; each fn has run once already (its outputs compared), which compiled it."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def agreement(ours, theirs):
  """Rows identical, and mean tokens equal before the first difference."""
  agree = (ours == theirs).cumprod(axis=1).sum(axis=1)
  return f"{int((agree == ours.shape[1]).sum())}/{ours.shape[0]} rows identical, mean {agree.mean():.1f} tokens agree"


def table(title, rows, work, unit, default_dots=None):
  """rows: flan-jax's, then its peers'; `default_dots`: flan-jax's seconds without LOOP_COMPILER_OPTIONS."""
  if default_dots is not None:
    rows = rows + [("flan-jax, dots in YNNPACK (XLA's CPU default)", default_dots)]
  print(f"\n{title}")
  print(f"| {'':s} | seconds | {unit} |")
  print("|---|---:|---:|")
  for name, seconds in rows:
    print(f"| {name} | {seconds:.3f} | {work / seconds:.0f} |")
  print(f"ratio flan-jax / transformers: {rows[1][1] / rows[0][1]:.2f}x")
  if default_dots is not None:
    print(f"ratio flan-jax / flan-jax with XLA's default dots: {default_dots / rows[0][1]:.2f}x")


def with_default_dots(fn, **static):
  """A decode loop compiled without decoding.LOOP_COMPILER_OPTIONS: what those options change."""
  return jax.jit(functools.partial(fn.__wrapped__, **static))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--input_length", type=int, default=64)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--beams", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--tiny", action="store_true", help="a tiny model: checks that the script runs")
  args = parser.parse_args()
  config = dict(SMALL)
  if args.tiny:
    config.update(d_model=64, d_ff=128, num_heads=2, d_kv=32, num_layers=2, num_decoder_layers=2)
  elif shared_data_dir():
    with open(os.path.join(shared_data_dir(), "hf", "flan-t5-small", "config.json")) as f:
      config.update(json.load(f), dropout_rate=0.0)
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**config)).eval()
  with torch.no_grad():
    model.lm_head.weight = torch.nn.Parameter(torch.randn(config["vocab_size"], config["d_model"]) * 0.05)
  with tempfile.TemporaryDirectory() as d:
    model.save_pretrained(d)
    ours_config, params = hf.read_hf(d)
  params = jax.tree.map(jnp.asarray, params)
  rng = np.random.default_rng(0)
  enc = rng.integers(2, 32000, (args.batch, args.input_length))
  enc_j, enc_t = jnp.asarray(enc, jnp.int32), torch.as_tensor(enc)
  new = args.batch * args.new_tokens
  print(f"Flan-T5-small shape ({ours_config.num_encoder_layers}+{ours_config.num_decoder_layers} layers), "
        f"batch {args.batch}, {args.input_length} input tokens, {args.new_tokens} new tokens; "
        f"torch threads {torch.get_num_threads()}")

  # Greedy.
  greedy = lambda: np.asarray(jax.block_until_ready(decoding.sample(
      params, enc_j, jax.random.key(0), config=ours_config, max_length=args.new_tokens)[0]))
  generate = lambda **kw: lambda: model.generate(input_ids=enc_t, max_new_tokens=args.new_tokens, **kw).numpy()
  hf_greedy = torch.no_grad()(generate(do_sample=False))
  default_sample = with_default_dots(decoding.sample, config=ours_config, max_length=args.new_tokens)
  greedy_default_dots = lambda: np.asarray(jax.block_until_ready(default_sample(params, enc_j, jax.random.key(0))[0]))
  same = agreement(greedy(), hf_greedy()[:, 1:])
  print(f"\nflan-jax with XLA's default dots against without: {agreement(greedy_default_dots(), greedy())}")
  table(f"Greedy ({same})", [("flan-jax (jit, KV cache)", best_of(greedy, args.repeats)),
                              ("transformers generate", best_of(hf_greedy, args.repeats))], new, "new tokens/s",
        best_of(greedy_default_dots, args.repeats))

  # Beam search, no length penalty on either side.
  beam = lambda: np.asarray(jax.block_until_ready(decoding.beam_search(
      params, enc_j, config=ours_config, max_length=args.new_tokens, beam_size=args.beams, alpha=0.0)[0]))
  hf_beam = torch.no_grad()(generate(do_sample=False, num_beams=args.beams, length_penalty=0.0))
  default_beam = with_default_dots(decoding.beam_search, config=ours_config, max_length=args.new_tokens,
                                   beam_size=args.beams, alpha=0.0)
  beam_default_dots = lambda: np.asarray(jax.block_until_ready(default_beam(params, enc_j)[0]))
  same = agreement(beam(), hf_beam()[:, 1:])
  print(f"\nflan-jax with XLA's default dots against without: {agreement(beam_default_dots(), beam())}")
  table(f"Beam search, {args.beams} beams ({same})",
        [("flan-jax beam_search", best_of(beam, args.repeats)),
         (f"transformers generate(num_beams={args.beams})", best_of(hf_beam, args.repeats))], new, "new tokens/s",
        best_of(beam_default_dots, args.repeats))

  # Rank classification over 4 two-token options ("(A)" ... as MMLU's answers are short).
  targets = rng.integers(2, 32000, (OPTIONS, 2))
  targets = np.concatenate([targets, np.ones((OPTIONS, 1), targets.dtype)], axis=1)  # EOS
  dec_in = np.concatenate([np.zeros((OPTIONS, 1), targets.dtype), targets[:, :-1]], axis=1)
  ours_score = lambda: np.asarray(jax.block_until_ready(decoding.score_options(
      params, enc_j, jnp.asarray(dec_in, jnp.int32), jnp.asarray(targets, jnp.int32), config=ours_config)))

  labels = torch.as_tensor(np.tile(targets, (args.batch, 1)))

  def option_loglik(logits):  # [batch * options, length, vocab] -> [batch, options]
    return torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0].sum(-1).reshape(args.batch, OPTIONS)

  def hf_pairs():  # each (prompt, option) pair through the whole model
    return option_loglik(model(input_ids=enc_t.repeat_interleave(OPTIONS, 0), labels=labels).logits)

  def hf_encode_once():  # the encoder once per prompt, its output repeated for the options
    encoded = model.encoder(input_ids=enc_t).last_hidden_state.repeat_interleave(OPTIONS, 0)
    return option_loglik(model(encoder_outputs=(encoded,), labels=labels).logits)

  hf_pairs, hf_encode_once = torch.no_grad()(hf_pairs), torch.no_grad()(hf_encode_once)
  ours_ll, pairs_ll, once_ll = ours_score(), hf_pairs().numpy(), hf_encode_once().numpy()
  diff = max(np.abs(ours_ll - pairs_ll).max(), np.abs(ours_ll - once_ll).max())
  t_ours = best_of(ours_score, args.repeats)
  t_pairs, t_once = best_of(hf_pairs, args.repeats), best_of(hf_encode_once, args.repeats)
  table(f"Rank classification, {OPTIONS} options (log-likelihoods: max difference {diff:.1e}, same argmax in "
        f"{int((ours_ll.argmax(1) == pairs_ll.argmax(1)).sum())}/{args.batch})",
        [("flan-jax score_options", t_ours), ("transformers, each (prompt, option) pair", t_pairs),
         ("transformers, encoder once per prompt", t_once)], args.batch, "prompts/s")
  print(f"ratio flan-jax / transformers (encoder once): {t_once / t_ours:.2f}x")


if __name__ == "__main__":
  main()
