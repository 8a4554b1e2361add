"""Random-weight HuggingFace T5 models written as HF folders: the reference our model is checked against."""

import json
import os
import shutil

import numpy as np
import torch
import transformers
from safetensors.torch import save_file


def write_hf_folder(model, config_dict: dict, out_dir: str, vocab_file: str | None = None) -> str:
  """Write config.json and model.safetensors (every tensor, untied lm_head included) like a Hub folder."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config_dict, f, indent=2)
  state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()
           if not k.endswith("embed_tokens.weight")}
  save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  if vocab_file:
    shutil.copyfile(vocab_file, os.path.join(out_dir, "spiece.model"))
  return out_dir


def build(config_dict: dict, seed: int = 0):
  """A random T5ForConditionalGeneration for config_dict, with an untied lm_head where the config says so."""
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**config_dict))
  if config_dict.get("tie_word_embeddings", True) is False:
    # transformers 5 always ties; give the untied head its own weights, as Flan-T5 has.
    d = config_dict["d_model"]
    model.lm_head.weight = torch.nn.Parameter(torch.randn(config_dict["vocab_size"], d) * d ** -0.5)
  return model.eval()


def flan_t5_small_config(shared_data: str, **overrides) -> dict:
  with open(os.path.join(shared_data, "hf", "flan-t5-small", "config.json")) as f:
    config = json.load(f)
  config.update(overrides)
  return config


V10_CONFIG = dict(
    model_type="t5", vocab_size=32128, d_model=64, d_ff=96, num_heads=4, d_kv=12, num_layers=3,
    num_decoder_layers=2, feed_forward_proj="relu", relative_attention_num_buckets=16,
    relative_attention_max_distance=64, dropout_rate=0.0, layer_norm_epsilon=1e-6,
    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
# V10_CONFIG's widths, for Flan-T5-small's config in tests whose maths do not depend on the width.
NARROW = {k: V10_CONFIG[k] for k in ("d_model", "d_ff", "num_heads", "d_kv")}


def logits(model, enc_tokens, enc_mask, dec_inputs) -> np.ndarray:
  with torch.no_grad():
    out = model(input_ids=torch.as_tensor(enc_tokens), attention_mask=torch.as_tensor(enc_mask),
                decoder_input_ids=torch.as_tensor(dec_inputs))
  return out.logits.numpy()
