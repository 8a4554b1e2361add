"""Decode throughput: flan-jax greedy decoding against transformers' generate, same weights, same inputs.

    .venv/bin/python scripts/bench_decode.py [--layers 8] [--batch 8] [--input_length 64] [--new_tokens 64]

Weights are random with the Flan-T5-small shape (from ../shared/data/hf/flan-t5-small/config.json, or built in);
a random model practically never emits EOS, so both decode --new_tokens tokens (checked: the outputs are compared).
Prints new tokens per second and the ratio.
"""

import argparse
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


def best_of(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--input_length", type=int, default=64)
  parser.add_argument("--new_tokens", type=int, default=64)
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
  enc_j = jnp.asarray(enc, jnp.int32)
  enc_t = torch.as_tensor(enc)

  def ours():
    tokens, _ = decoding.sample(params, enc_j, jax.random.key(0), config=ours_config, max_length=args.new_tokens)
    return np.asarray(jax.block_until_ready(tokens))

  def theirs():
    with torch.no_grad():
      return model.generate(input_ids=enc_t, do_sample=False, max_new_tokens=args.new_tokens).numpy()

  start = time.perf_counter()
  ours_tokens = ours()
  compile_s = time.perf_counter() - start
  theirs_tokens = theirs()
  agree = (ours_tokens == theirs_tokens[:, 1:]).cumprod(axis=1).sum(axis=1)  # tokens equal before the first difference
  same = f"{int((agree == args.new_tokens).sum())}/{args.batch} rows identical, mean {agree.mean():.1f} tokens agree"
  t_ours, t_theirs = best_of(ours, args.repeats), best_of(theirs, args.repeats)
  new = args.batch * args.new_tokens
  print(f"Flan-T5-small shape ({ours_config.num_encoder_layers}+{ours_config.num_decoder_layers} layers), greedy, "
        f"batch {args.batch}, {args.input_length} input tokens, {args.new_tokens} new tokens; "
        f"torch threads {torch.get_num_threads()}; {same}")
  print("| decoder | seconds | new tokens/s |")
  print("|---|---:|---:|")
  print(f"| flan-jax (jit, KV cache; first call with compile {compile_s:.1f} s) | {t_ours:.3f} | {new / t_ours:.0f} |")
  print(f"| transformers generate (PyTorch) | {t_theirs:.3f} | {new / t_theirs:.0f} |")
  print(f"ratio flan-jax / transformers: {t_theirs / t_ours:.2f}x")


if __name__ == "__main__":
  main()
