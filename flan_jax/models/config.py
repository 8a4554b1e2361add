"""The T5 architecture as one plain, gin-configurable, JSON-serialisable dataclass.

The same record is stored beside every checkpoint, so commands that load a checkpoint need no size gin file.
"""

import dataclasses
import json

import gin

from flan_jax.errors import UserError

ACTIVATIONS = ("gelu", "relu", "silu", "linear")
# peft's names for T5's projections (attention q/k/v/o in all three attentions, MLP wi / wi_0 / wi_1 / wo).
LORA_TARGETS = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")
# Fields that change neither parameter shapes nor their meaning: a checkpoint takes them from the run.
RUNTIME_ONLY_FIELDS = ("dropout_rate", "dtype", "remat", "attention")
LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "lora_use_rslora")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5Config:
  """T5 hyperparameters. Defaults are T5.1.1 / Flan-T5 small."""

  vocab_size: int = 32128
  d_model: int = 512
  d_ff: int = 1024
  num_heads: int = 6
  d_kv: int = 64
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  # ("gelu", "linear") is T5.1.1's gated GELU; ("relu",) is the original T5's MLP.
  mlp_activations: tuple = ("gelu", "linear")
  # Original T5 ties input and output embeddings and scales decoder outputs by d_model**-0.5.
  tie_embeddings: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  # One relative-position bias per layer (t5x's scalable_t5) instead of one shared by a stack (T5, HF).
  relpos_per_layer: bool = False
  dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-6
  # Activation dtype; parameters always stay float32.
  dtype: str = "float32"
  # Rematerialise each layer in the backward pass to save activation memory.
  remat: bool = False
  # "auto": cuDNN's fused attention where it applies (a GPU, bf16, no attention dropout; models/t5.py), XLA's
  # elsewhere; "xla": XLA's everywhere.
  attention: str = "auto"
  # LoRA adapters as peft builds them (None: off): rank, alpha (scale alpha / rank, or alpha / sqrt(rank) with
  # rslora), dropout on the adapter's input, and the targets by peft's T5 module names.
  lora_rank: int | None = None
  lora_alpha: float = 8.0
  lora_dropout: float = 0.0
  lora_targets: tuple = ("q", "v")
  lora_use_rslora: bool = False

  def __post_init__(self):
    object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
    object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
    if self.lora_rank is not None:
      if self.lora_rank < 1:
        raise UserError(f"T5Config.lora_rank must be >= 1 (or None for no LoRA), got {self.lora_rank}")
      unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS)) or ([] if self.lora_targets else ["(none)"])
      if unknown:
        raise UserError(f"unknown LoRA target {unknown[0]!r}; T5's are {', '.join(LORA_TARGETS)}")
      if not 0.0 <= self.lora_dropout < 1.0:
        raise UserError(f"T5Config.lora_dropout must be in [0, 1), got {self.lora_dropout}")
    for act in self.mlp_activations:
      if act not in ACTIVATIONS:
        raise UserError(f"unknown MLP activation {act!r}; expected one of {ACTIVATIONS}")
    if self.attention not in ("auto", "xla"):
      raise UserError(f"T5Config.attention must be 'auto' or 'xla', not {self.attention!r}")
    if self.dtype not in ("float32", "bfloat16"):
      raise UserError(f"dtype must be 'float32' or 'bfloat16', not {self.dtype!r}")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise UserError(f"DROPOUT_RATE must be in [0, 1), got {self.dropout_rate}")
    for name in ("vocab_size", "d_model", "d_ff", "num_heads", "d_kv", "num_encoder_layers",
                 "num_decoder_layers", "relative_attention_num_buckets", "relative_attention_max_distance"):
      if getattr(self, name) <= 0:
        raise UserError(f"T5Config.{name} must be positive, got {getattr(self, name)}")

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["mlp_activations"] = list(self.mlp_activations)
    d["lora_targets"] = list(self.lora_targets)
    return d

  @classmethod
  def from_dict(cls, d: dict) -> "T5Config":
    """Exactly `d`, the defaults for fields it lacks (an older checkpoint's), and nothing from gin."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(defaults))
    if unknown:
      raise UserError(f"unknown T5Config fields {unknown} (a checkpoint from a newer flan-jax?)")
    return cls(**{**defaults, **d})

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  def architecture_diff(self, other: "T5Config") -> list[str]:
    """Fields that change parameter shapes or meaning (dropout, dtype and remat do not)."""
    a, b = self.to_dict(), other.to_dict()
    return [f"{k}: {a[k]} != {b[k]}" for k in sorted(a) if k not in RUNTIME_ONLY_FIELDS and a[k] != b[k]]
