"""XLA's matmuls against torch's on this CPU, on the kinds of matmul a train step of the Flan-T5-small shape runs.

    .venv/bin/python scripts/bench_matmul.py [--tokens 1024] [--decode_dots]

Why: the train step is mostly matmuls, so on a CPU where XLA's matmuls are no faster than torch's, flan-jax
cannot be much faster than transformers whatever else it saves (BENCHMARKS.md). Best of 10 calls each, float32;
also prints which library XLA's CPU backend hands its dots to. With a few tokens (--tokens 8: a decode step at
batch 8) the 2D matmuls are bound by reading their weights, so GB/s of the second operand is printed too;
--decode_dots compiles XLA's side as the decode loops are (decoding.LOOP_COMPILER_OPTIONS).
"""

import argparse
import re

import numpy as np

from bench_decode import best_of
from bench_train import SMALL, TINY


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--tokens", type=int, default=1024, help="rows of the projections (batch x length)")
  parser.add_argument("--decode_dots", action="store_true", help="XLA's dots as in the decode loops")
  parser.add_argument("--tiny", action="store_true", help="a tiny model: checks that the script runs")
  args = parser.parse_args()
  import jax
  import jax.numpy as jnp
  import torch

  from flan_jax.decoding import LOOP_COMPILER_OPTIONS
  options = LOOP_COMPILER_OPTIONS if args.decode_dots else None
  c = {**SMALL, **TINY} if args.tiny else SMALL
  tokens, d, inner, length = args.tokens, c["d_model"], c["num_heads"] * c["d_kv"], args.tokens // 8
  heads = (8, c["num_heads"], length)  # attention: batch 8, per head
  # name: (XLA's einsum as flan_jax.models.t5 writes it, torch's matmul as transformers' T5 and autograd run it,
  # the operands' shapes)
  kinds = {"projection [tokens, d_model] x [d_model, heads x d_kv]":
               ("td,di->ti", torch.matmul, (tokens, d), (d, inner)),
           "MLP [tokens, d_model] x [d_model, d_ff]": ("td,df->tf", torch.matmul, (tokens, d), (d, c["d_ff"])),
           "logits [tokens, d_model] x [d_model, vocab]":
               ("td,dv->tv", torch.matmul, (tokens, d), (d, c["vocab_size"])),
           "attention scores q k^T (per head [length, d_kv] x [length, d_kv]^T)":
               ("bhqd,bhkd->bhqk", lambda q, k: q @ k.transpose(-1, -2), heads + (c["d_kv"],), heads + (c["d_kv"],)),
           "attention p v (per head [length, length] x [length, d_kv])":
               ("bhqk,bhkd->bhqd", torch.matmul, heads + (length,), heads + (c["d_kv"],)),
           "attention gradient dv = p^T do (per head [length, length]^T x [length, d_kv])":
               ("bhqk,bhqd->bhkd", lambda p, g: p.transpose(-1, -2) @ g, heads + (length,), heads + (c["d_kv"],))}
  square = np.ones((64, 64), np.float32)
  hlo = jax.jit(jnp.matmul, compiler_options=options).lower(square, square).compile().as_text()
  library = sorted(set(re.findall(r'"kind":"__(\w+)_fusion"', hlo))) or ["XLA's own dot emitter"]
  print(f"XLA's CPU backend runs dots with: {', '.join(library)}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads")
  print(f"| matmul ({tokens} tokens, float32) | XLA GFLOP/s | torch GFLOP/s | XLA / torch | XLA GB/s | torch GB/s |")
  print("|---|---:|---:|---:|---:|---:|")
  for name, (equation, torch_matmul, shape_a, shape_b) in kinds.items():
    a = np.random.default_rng(0).standard_normal(shape_a, np.float32)
    b = np.random.default_rng(1).standard_normal(shape_b, np.float32)
    sizes = dict(zip(equation.split("->")[0].replace(",", ""), shape_a + shape_b))
    flops = 2 * np.prod(list(sizes.values()))  # a multiply and an add for every combination of the indices
    matmul = jax.jit(lambda x, y, e=equation: jnp.einsum(e, x, y), compiler_options=options)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    ours, theirs = lambda: matmul(ja, jb).block_until_ready(), lambda: torch_matmul(ta, tb)
    ours(), theirs()  # warm-up (XLA compiles)
    xla_s, ref_s = best_of(ours, 10), best_of(theirs, 10)
    print(f"| {name} | {flops / xla_s / 1e9:.0f} | {flops / ref_s / 1e9:.0f} | {ref_s / xla_s:.2f}x | "
          f"{b.nbytes / xla_s / 1e9:.1f} | {b.nbytes / ref_s / 1e9:.1f} |", flush=True)


if __name__ == "__main__":
  main()
