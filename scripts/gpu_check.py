"""flan-jax on one NVIDIA GPU against transformers on the same GPU, in one run: a markdown table.

    python scripts/gpu_check.py [--out gpu_check.md] [--tiny]      (scripts/gpu_check.sh sets a GPU machine up)

1. Parity, float32 (matmuls at full precision on both sides, no TF32): logits of the Flan-T5-small shape with
   random weights, moved into flan-jax through the HF export format, and greedy tokens against `generate`.
2. The bf16 train step (Adafactor at the recipe's settings, scripts/bench_train.py's children, each framework in
   its own process): base and large at 512/128 and 2048/512; s/step, tokens/s, MFU against the H200's datasheet
   dense bf16 peak and against the torch matmul peak measured on it, peak device memory.
3. Decoding at batch 32: greedy and beam search (4 beams, no length penalty) against `generate`.
--tiny runs all of it on a tiny model at tiny shapes, on whatever device there is (the CPU test).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_train  # noqa: E402

DATASHEET_TFLOPS = 990  # H200 SXM, dense bf16 (NVIDIA's datasheet; 1,979 with sparsity)
MEASURED_TFLOPS = 790   # a torch bf16 matmul on this H200 (the device tool's H200.md)
# (size, inputs/targets, batch): batches chosen to fill much of 141 GB without OOM on either side.
TRAIN_POINTS = [("base", "512/128", 64), ("base", "2048/512", 16), ("large", "512/128", 32), ("large", "2048/512", 8)]
TINY_POINTS = [("small", "32/8", 2)]
DECODE = {"batch": 32, "input_length": 128, "new_tokens": 64, "beams": 4}
TINY_DECODE = {"batch": 2, "input_length": 8, "new_tokens": 4, "beams": 2}


def hf_model(config, device):
  import torch
  import transformers
  torch.manual_seed(0)
  model = transformers.AutoModelForSeq2SeqLM.from_config(transformers.T5Config(**config), attn_implementation="sdpa")
  with torch.no_grad():
    model.lm_head.weight = torch.nn.Parameter(torch.randn(config["vocab_size"], config["d_model"]) * 0.05)
  return model.to(device).eval()


def ours_from(model):
  """The HF model's weights through the HF format, as `flan-jax import-hf` reads them."""
  import jax
  import jax.numpy as jnp

  from flan_jax import hf
  with tempfile.TemporaryDirectory() as d:
    model.save_pretrained(d)
    config, params = hf.read_hf(d)
  return config, jax.tree.map(jnp.asarray, params)


def parity(config, device, rows):
  import jax
  import jax.numpy as jnp
  import torch

  from flan_jax import decoding
  from flan_jax.models import T5
  torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
  model = hf_model(config, device)
  ours_config, params = ours_from(model)
  rng = np.random.default_rng(0)
  enc = rng.integers(2, config["vocab_size"] - 200, (8, 64))
  dec_in = np.concatenate([np.zeros((8, 1), np.int64), rng.integers(2, 1000, (8, 15))], axis=1)
  with torch.no_grad():
    theirs = model(input_ids=torch.as_tensor(enc, device=device),
                   decoder_input_ids=torch.as_tensor(dec_in, device=device)).logits.float().cpu().numpy()
    generated = model.generate(input_ids=torch.as_tensor(enc, device=device), max_new_tokens=16,
                               do_sample=False).cpu().numpy()[:, 1:]
  with jax.default_matmul_precision("highest"):
    # the decoder's targets only mark which positions are real (non-zero): all of them, as transformers assumes
    ours = np.asarray(T5(ours_config).apply({"params": params}, jnp.asarray(enc, jnp.int32),
                                            jnp.asarray(dec_in, jnp.int32), jnp.ones(dec_in.shape, jnp.int32)))
    greedy = np.asarray(decoding.sample(params, jnp.asarray(enc, jnp.int32), jax.random.key(0), config=ours_config,
                                        max_length=generated.shape[1])[0])
  diff = float(np.abs(ours - theirs).max())
  same = int((greedy == generated).all(axis=1).sum())
  rows.append(f"| float32 logits, 8 x 64 -> 16 | max abs difference {diff:.1e} | {'ok' if diff <= 1e-4 else 'OVER 1e-4'} |")
  rows.append(f"| greedy tokens, 8 rows x 16 | {same}/8 rows identical | {'ok' if same == 8 else 'DIFFERENT'} |")
  return diff, same


def train_point(size, shape, batch, steps, tiny):
  results = {}
  for framework in ("jax", "torch"):
    cmd = [sys.executable, bench_train.__file__, "--child", framework, shape, "--batch", str(batch), "--steps",
           str(steps), "--bf16", "--size", size] + (["--tiny"] if tiny else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    results[framework] = json.loads(line[0][len("RESULT "):]) if line else {"error": out.stderr.strip()[-300:]}
  return results


def train_table(points, steps, tiny, rows):
  rows += ["", "| size | inputs/targets x batch | framework | s/step | tokens/s | MFU (990) | MFU (790) | "
           "peak memory GiB | loss |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
  for size, shape, batch in points:
    config = {**bench_train.SMALL, **bench_train.SIZES[size], **(bench_train.TINY if tiny else {})}
    inputs, targets = (int(x) for x in shape.split("/"))
    flops = bench_train.model_flops(config, batch, inputs, targets)
    results = train_point(size, shape, batch, steps, tiny)
    for framework, name in (("jax", "flan-jax"), ("torch", "transformers (SDPA, HF Adafactor)")):
      r = results[framework]
      if "error" in r:
        rows.append(f"| {size} | {shape} x {batch} | {name} | failed: {r['error'].splitlines()[-1] if r['error'] else '?'} |"
                    " | | | | |")
        continue
      memory = r.get("device_peak_mb", r["max_rss_mb"]) / 1024
      rows.append(f"| {size} | {shape} x {batch} | {name} | {r['seconds']:.4f} | {batch * (inputs + targets) / r['seconds']:.0f} | "
                  f"{flops / r['seconds'] / DATASHEET_TFLOPS / 1e12:.1%} | {flops / r['seconds'] / MEASURED_TFLOPS / 1e12:.1%} | "
                  f"{memory:.1f} | {r['loss']:.4f} |")
    if all("seconds" in results[f] for f in results):
      rows.append(f"| {size} | {shape} x {batch} | ratio transformers / flan-jax | "
                  f"**{results['torch']['seconds'] / results['jax']['seconds']:.2f}x** | | | | | |")


def decode_table(config, device, settings, rows):
  import jax
  import jax.numpy as jnp
  import torch

  from flan_jax import decoding
  model = hf_model(config, device)
  ours_config, params = ours_from(model)
  b, n = settings["batch"], settings["new_tokens"]
  enc = np.random.default_rng(1).integers(2, config["vocab_size"] - 200, (b, settings["input_length"]))
  enc_j, enc_t = jnp.asarray(enc, jnp.int32), torch.as_tensor(enc, device=device)
  sync = torch.cuda.synchronize if device == "cuda" else lambda: None

  def timed(fn):
    out = fn()  # compiles
    start = time.perf_counter()
    for _ in range(3):
      out = fn()
    return (time.perf_counter() - start) / 3, out

  def theirs(**kw):
    def run():
      with torch.no_grad():
        out = model.generate(input_ids=enc_t, max_new_tokens=n, min_new_tokens=n, **kw)
      sync()
      return out.cpu().numpy()[:, 1:]
    return run

  ours_greedy = lambda: np.asarray(jax.block_until_ready(decoding.sample(
      params, enc_j, jax.random.key(0), config=ours_config, max_length=n)[0]))
  ours_beam = lambda: np.asarray(jax.block_until_ready(decoding.beam_search(
      params, enc_j, config=ours_config, max_length=n, beam_size=settings["beams"], alpha=0.0)[0]))
  rows += ["", f"| decoding, batch {b}, {settings['input_length']} input tokens, {n} new | flan-jax s | "
           f"transformers s | ratio | rows identical |", "|---|---:|---:|---:|---:|"]
  for name, ours, hf_kwargs in (("greedy", ours_greedy, {"do_sample": False}),
                                (f"beam search, {settings['beams']} beams", ours_beam,
                                 {"do_sample": False, "num_beams": settings["beams"], "length_penalty": 0.0})):
    t_ours, a = timed(ours)
    t_theirs, h = timed(theirs(**hf_kwargs))
    same = int((a[:, :h.shape[1]] == h[:, :a.shape[1]]).all(axis=1).sum())
    rows.append(f"| {name} | {t_ours:.3f} | {t_theirs:.3f} | **{t_theirs / t_ours:.2f}x** | {same}/{b} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", help="also write the table here")
  parser.add_argument("--steps", type=int, default=5, help="timed train steps after a warm-up step")
  parser.add_argument("--tiny", action="store_true", help="a tiny model at tiny shapes: checks that it runs")
  args = parser.parse_args()
  import jax
  import torch
  device = "cuda" if torch.cuda.is_available() else "cpu"
  config = {**bench_train.SMALL, **(bench_train.TINY if args.tiny else {})}
  gpu = torch.cuda.get_device_name() if device == "cuda" else "no GPU"
  rows = [f"# gpu_check: {gpu}; jax {jax.__version__} on {jax.default_backend()}, torch {torch.__version__}",
          "", "| check | result | |", "|---|---|---|"]
  start = time.time()
  parity(config, device, rows)
  train_table(TINY_POINTS if args.tiny else TRAIN_POINTS, 1 if args.tiny else args.steps, args.tiny, rows)
  decode_table(config, device, TINY_DECODE if args.tiny else DECODE, rows)
  rows += ["", f"{time.time() - start:.0f} s in all"]
  text = "\n".join(rows)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
