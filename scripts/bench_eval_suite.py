"""What `eval --suite flan` costs at the protocols' lengths: examples per second and minutes per benchmark.

    JAX_PLATFORMS=cpu .venv/bin/python scripts/bench_eval_suite.py [--examples 16] [--batch_size 8] [--tiny]

A random model with Flan-T5-small's shape (../shared/data/hf/flan-t5-small/config.json; --tiny: a narrow one, a
check that the script runs) evaluates the first `--examples` examples of one task of each benchmark with the
default flags, after one warm-up call per task, and the rate is scaled to the benchmark's example count. A
random model never emits EOS, so every chain of thought runs to its task's decode length: an upper bound for a
trained model, which stops after "The answer is ...".
"""

import argparse
import json
import os
import tempfile
import time

import torch
import transformers

from flan_jax import evaluation, hf, inference
from flan_jax.data import registration
from flan_jax.data.paths import shared_data_dir

BENCHMARKS = {"MMLU direct": "mmlu", "MMLU CoT": "mmlu_cot", "BBH direct": "bbh_direct", "BBH CoT": "bbh_cot",
              "MGSM": "mgsm"}


def random_model(directory: str, tiny: bool) -> inference.Model:
  with open(os.path.join(shared_data_dir(), "hf", "flan-t5-small", "config.json")) as f:
    config = json.load(f)
  config.update(dropout_rate=0.0, **(dict(d_model=64, d_ff=96, num_heads=4, d_kv=16, num_layers=2,
                                          num_decoder_layers=2) if tiny else {}))
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**config))
  # transformers 5 ties the head to the embedding; Flan-T5's is its own
  model.lm_head.weight = torch.nn.Parameter(torch.randn(config["vocab_size"], config["d_model"]) * config["d_model"] ** -0.5)
  model.save_pretrained(directory + "/hf")
  vocabulary = os.path.join(shared_data_dir(), "t5_vocab", "spiece.model")
  return inference.load(hf.import_hf(directory + "/hf", directory + "/ckpt", vocabulary=vocabulary))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--examples", type=int, default=16)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--tiny", action="store_true")
  args = parser.parse_args()
  settings = inference.Settings(batch_size=args.batch_size)
  with tempfile.TemporaryDirectory() as tmp:
    model = random_model(tmp, args.tiny)
    print(f"{'benchmark':12} {'task':40} {'examples/s':>10} {'examples':>9} {'minutes':>8}")
    for label, mixture in BENCHMARKS.items():
      tasks = [t.name for t in registration.get_provider(mixture).tasks]
      total = sum(len(evaluation.examples(t, None, None)[1]) for t in tasks)
      evaluation.evaluate_task(model, tasks[0], None, settings, args.examples)  # compiles its buckets
      started = time.perf_counter()
      result = evaluation.evaluate_task(model, tasks[0], None, settings, args.examples)
      rate = result["examples"] / (time.perf_counter() - started)
      print(f"{label:12} {tasks[0]:40} {rate:10.2f} {total:9d} {total / rate / 60:8.1f}", flush=True)


if __name__ == "__main__":
  main()
