"""Train-step benchmark: flan-jax against transformers' PyTorch T5 with HF's Adafactor, measured in one run.

    .venv/bin/python scripts/bench_train.py [--shapes 128/32 512/128] [--batch 8] [--steps 5] [--bf16] [--size small]

Same model (the Flan-T5-small shape, random weights), batch, lengths and optimizer settings (Adafactor, constant
learning rate 5e-4, factored second moments, update clipping 1.0, parameter scaling), float32; with --bf16,
bfloat16 activations and float32 parameters on both sides (flan-jax `T5Config.dtype='bfloat16'`, transformers
under `torch.autocast('cpu', dtype=torch.bfloat16)`). Each framework
runs in its own subprocess so peak memory (max RSS) is its own. flan-jax runs with glibc's huge-page malloc, as
the `flan-jax` command does (flan_jax.hugepages); transformers runs as it comes and, in a third row, with the
same setting. MFU is model FLOPs per second (6 x parameters
x tokens for the matmuls, plus attention) over the machine's measured float32 matmul peak.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

from flan_jax import hugepages

SMALL = dict(model_type="t5", vocab_size=32128, d_model=512, d_ff=1024, num_heads=6, d_kv=64, num_layers=8,
             num_decoder_layers=8, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
             decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
TINY = dict(d_model=64, d_ff=128, num_heads=2, d_kv=32, num_layers=2, num_decoder_layers=2)  # --tiny: the test
SIZES = {"small": {}, "base": dict(d_model=768, d_ff=2048, num_heads=12, num_layers=12, num_decoder_layers=12),
         "large": dict(d_model=1024, d_ff=2816, num_heads=16, num_layers=24, num_decoder_layers=24)}  # gin/models


def batch(batch_size, inputs, targets, seed=0):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, 32000, (batch_size, inputs))
  tgt = rng.integers(2, 32000, (batch_size, targets))
  dec_in = np.concatenate([np.zeros((batch_size, 1), np.int64), tgt[:, :-1]], axis=1)
  return enc, dec_in, tgt


def model_flops(c, batch_size, inputs, targets):
  """Forward+backward FLOPs of one step (3 x forward; forward = 2 x multiply-adds)."""
  d, f, inner, layers_e, layers_d = c["d_model"], c["d_ff"], c["num_heads"] * c["d_kv"], c["num_layers"], c["num_decoder_layers"]
  mlp = 3 * d * f  # gated: wi_0, wi_1, wo
  attn_proj = 4 * d * inner
  enc = inputs * layers_e * (mlp + attn_proj) + layers_e * 2 * inputs * inputs * inner
  dec = targets * layers_d * (mlp + 2 * attn_proj) + layers_d * 2 * (targets * targets + targets * inputs) * inner
  dec += targets * d * c["vocab_size"]
  return 3 * 2 * batch_size * (enc + dec)


def matmul_peak(framework):
  """The best of 20 single n x n float32 matmuls, in FLOP/s: a peak, so not an average that other load lowers.
  n = 4 x d_model: 2048 for Flan-T5-small (256 for --tiny, whose peak only shows that the script runs)."""
  n = 4 * SMALL["d_model"]
  if framework == "jax":
    import jax
    import jax.numpy as jnp
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    matmul = lambda: f(a).block_until_ready()
  else:
    import torch
    a = torch.ones(n, n)
    matmul = lambda: a @ a
  matmul()
  times = []
  for _ in range(20):
    start = time.perf_counter()
    matmul()
    times.append(time.perf_counter() - start)
  return 2 * n ** 3 / min(times)


def jax_on_gpu() -> bool:
  import jax
  return jax.default_backend() == "gpu"


def run_jax(shape, batch_size, steps, bf16):
  import dataclasses

  import jax

  from flan_jax import partitioning, trainer
  from flan_jax.hf import config_from_hf
  from flan_jax.optim import adafactor

  config = dataclasses.replace(config_from_hf(SMALL), dtype="bfloat16" if bf16 else "float32")
  tx = adafactor(learning_rate=5e-4)
  mesh = partitioning.make_mesh()
  shardings = trainer.Shardings(config, tx, mesh)
  state = trainer.init_state(config, tx, shardings, jax.random.key(0))
  step = trainer.jit_train_step(trainer.make_train_step(config, tx, z_loss=0.0), shardings)
  enc, dec_in, tgt = batch(batch_size, *shape)
  features = {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in, "decoder_target_tokens": tgt,
              "decoder_loss_weights": (tgt > 0).astype(np.int32)}
  features = partitioning.global_batch({k: np.asarray(v, np.int32) for k, v in features.items()}, mesh,
                                      partitioning.data_layout(mesh, batch_size))
  key = jax.random.key(1)
  start = time.perf_counter()
  state, metrics = step(state, features, key)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step(state, features, key)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  result = {"seconds": float(np.median(times)), "compile": compile_s, "loss": float(metrics["loss"])}
  stats = jax.devices()[0].memory_stats() if jax_on_gpu() else None
  if stats:
    result["device_peak_mb"] = stats["peak_bytes_in_use"] / 2 ** 20
  else:
    result["peak"] = matmul_peak("jax")
  return result


def run_torch(shape, batch_size, steps, bf16):
  import torch
  import transformers
  from transformers.optimization import Adafactor

  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  # SDPA attention (T5's position bias goes in as its mask), as transformers picks it by default where it can.
  model = transformers.AutoModelForSeq2SeqLM.from_config(transformers.T5Config(**SMALL), attn_implementation="sdpa")
  model.lm_head.weight = torch.nn.Parameter(torch.randn(SMALL["vocab_size"], SMALL["d_model"]) * 0.05)
  model.to(device).train()
  opt = Adafactor(model.parameters(), lr=5e-4, relative_step=False, scale_parameter=True, warmup_init=False,
                  clip_threshold=1.0, decay_rate=-0.8, beta1=None)
  enc, dec_in, tgt = (torch.as_tensor(x, device=device) for x in batch(batch_size, *shape))
  sync = torch.cuda.synchronize if device == "cuda" else lambda: None

  def one():
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
      loss = model(input_ids=enc, decoder_input_ids=dec_in, labels=tgt).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync()
    return loss

  start = time.perf_counter()
  one()
  first = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    loss = one()
    times.append(time.perf_counter() - start)
  result = {"seconds": float(np.median(times)), "compile": first, "loss": float(loss), "threads": torch.get_num_threads()}
  if device == "cuda":
    result["device_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
  else:
    result["peak"] = matmul_peak("torch")
  return result


def child(framework, shape, batch_size, steps, bf16):
  shape = tuple(int(x) for x in shape.split("/"))
  result = (run_jax if framework == "jax" else run_torch)(shape, batch_size, steps, bf16)
  result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print("RESULT " + json.dumps(result))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shapes", nargs="+", default=["128/32", "512/128"])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--bf16", action="store_true", help="bfloat16 activations on both sides")
  parser.add_argument("--child", nargs=2, metavar=("FRAMEWORK", "SHAPE"), help=argparse.SUPPRESS)
  parser.add_argument("--tiny", action="store_true", help="a tiny model: checks that the script runs")
  parser.add_argument("--size", choices=sorted(SIZES), default="small", help="the Flan-T5 shape (default small)")
  args = parser.parse_args()
  SMALL.update(SIZES[args.size])
  if args.tiny:
    SMALL.update(TINY)
  if args.child:
    return child(args.child[0], args.child[1], args.batch, args.steps, args.bf16)
  if jax_on_gpu():
    raise SystemExit("on a GPU: scripts/gpu_check.sh (this table's RSS and CPU matmul peak are the CPU's)")
  dtype = "bfloat16 activations, float32 parameters" if args.bf16 else "float32"
  print(f"Flan-T5-{args.size} shape, batch {args.batch}, {dtype}, median of {args.steps} steps after a warm-up step; "
        f"{os.cpu_count()} CPU cores")
  print("| inputs/targets | framework | s/step | first step (compile) | tokens/s | MFU | peak RSS MB | loss |")
  # MFU's denominator: printed below each shape.
  print("|---|---|---:|---:|---:|---:|---:|---:|")
  default = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  huge = hugepages.environ_with_hugepages(default)  # what the flan-jax command runs with
  runs = [("jax", "flan-jax", huge), ("torch", "transformers + HF Adafactor", default)]
  if huge != default:  # the peer with the same allocator setting, to show what is allocator and what is not
    runs.append(("torch", "transformers + HF Adafactor, huge-page malloc", huge))
  for shape in args.shapes:
    results = []
    for framework, name, env in runs:
      out = subprocess.run([sys.executable, __file__, "--child", framework, shape, "--batch", str(args.batch),
                            "--steps", str(args.steps)] + (["--tiny"] if args.tiny else []) +
                           (["--bf16"] if args.bf16 else []), capture_output=True, text=True, env=env)
      line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
      if not line:
        raise SystemExit(f"{name} {shape} failed:\n{out.stdout}\n{out.stderr[-3000:]}")
      results.append((name, json.loads(line[0][len("RESULT "):])))
    inputs, targets = (int(x) for x in shape.split("/"))
    flops = model_flops(SMALL, args.batch, inputs, targets)
    peak = max(r["peak"] for _, r in results)  # the machine's: the faster of XLA's and torch's matmul
    for name, r in results:
      print(f"| {shape} | {name} | {r['seconds']:.3f} | {r['compile']:.1f} | "
            f"{args.batch * (inputs + targets) / r['seconds']:.0f} | {flops / r['seconds'] / peak:.1%} | {r['max_rss_mb']:.0f} | {r['loss']:.4f} |", flush=True)
    print(f"| {shape} | measured float32 matmul peak: XLA {results[0][1]['peak'] / 1e9:.0f}, torch "
          f"{results[1][1]['peak'] / 1e9:.0f} GFLOP/s | | | | | | |")
    for name, r in results[1:]:
      print(f"| {shape} | ratio ({name} s/step / flan-jax s/step) | **{r['seconds'] / results[0][1]['seconds']:.2f}x** | | | | | |",
            flush=True)


if __name__ == "__main__":
  main()
