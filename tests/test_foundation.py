"""Parameter counts, vocabulary parity with HF's tokenizer, gin errors and import-hf's refusals."""

import json
import math
import os
import re

import pytest

from flan_jax import cli, gin_utils
from flan_jax.errors import UserError
from flan_jax.models import T5Config
from flan_jax.models.t5 import param_count

EXPECTED_PARAMS = {
    "small": 76_961_152, "base": 247_577_856, "large": 783_150_080,
    "xl": 2_849_757_184, "xxl": 11_135_332_352,
}


@pytest.mark.parametrize("size", sorted(EXPECTED_PARAMS))
def test_param_counts_exact(size):
  gin_utils.parse([f"models/{size}.gin"], [])
  assert param_count(T5Config()) == EXPECTED_PARAMS[size]


def test_gin_bad_binding_names_it():
  with pytest.raises(UserError, match="T5Config.d_modle"):
    gin_utils.parse(["models/tiny.gin"], ["T5Config.d_modle = 3"])


def test_gin_bad_file_names_file_and_line(tmp_path):
  bad = tmp_path / "bad.gin"
  bad.write_text("import flan_jax.models.config\nT5Config.d_model = 64\nT5Config.nope = 1\n")
  with pytest.raises(UserError, match=r"bad\.gin.*line 3"):
    gin_utils.parse([str(bad)], [])


def test_gin_missing_file():
  with pytest.raises(UserError, match="gin file not found: models/nope.gin"):
    gin_utils.parse(["models/nope.gin"], [])


def _sentences(shared_data, n_each=600):
  out = []
  with open(os.path.join(shared_data, "gsm8k", "train.jsonl")) as f:
    for line, _ in zip(f, range(n_each)):
      ex = json.loads(line)
      out += [ex["question"], ex["answer"]]
  with open(os.path.join(shared_data, "nli", "esnli", "dev.jsonl")) as f:
    for line, _ in zip(f, range(n_each)):
      ex = json.loads(line)
      out += [ex["premise"], ex["hypothesis"], ex["explanation"]]
  return out


def test_vocabulary_matches_hf_tokenizer(shared_data):
  from tokenizers import Tokenizer
  from flan_jax.vocab import sentencepiece_vocabulary
  ours = sentencepiece_vocabulary(os.path.join(shared_data, "t5_vocab", "spiece.model"))
  theirs = Tokenizer.from_file(os.path.join(shared_data, "hf", "flan-t5-small", "tokenizer.json"))
  sentences = _sentences(shared_data)
  assert len(sentences) >= 1000
  assert ours.vocab_size == 32100
  mismatches = [s for s in sentences if list(ours.encode(s)) + [1] != theirs.encode(s).ids]
  assert not mismatches, f"{len(mismatches)} of {len(sentences)} differ, e.g. {mismatches[0]!r}"
  assert ours.decode(ours.encode(sentences[0])) == sentences[0]
  assert ours.encode("<extra_id_0>") == [32099]


# --- import-hf refusals: one error line, exit 2, nothing left at --out ---

def _run_import(tmp_path, hf_dir, capsys):
  out = tmp_path / "ckpt"
  code = cli.main(["import-hf", "--hf", str(hf_dir), "--out", str(out)])
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert len(err.splitlines()) == 1 and err.startswith("flan-jax: error:")
  assert not out.exists()
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".ckpt")]
  return err


def test_import_without_config(tmp_path, capsys):
  (tmp_path / "hf").mkdir()
  assert "has no config.json" in _run_import(tmp_path, tmp_path / "hf", capsys)


def test_import_non_t5_config(tmp_path, capsys):
  (tmp_path / "hf").mkdir()
  (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "bert"}))
  assert "not a T5 config: model_type is 'bert'" in _run_import(tmp_path, tmp_path / "hf", capsys)


def test_import_pickle_only(tmp_path, capsys, shared_data):
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text(open(os.path.join(shared_data, "hf", "flan-t5-small", "config.json")).read())
  (hf / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
  assert "only pickle weights (pytorch_model.bin)" in _run_import(tmp_path, hf, capsys)


def test_import_mismatched_shapes(tmp_path, capsys):
  import hf_reference
  config = dict(hf_reference.V10_CONFIG)
  hf_dir = tmp_path / "hf"
  hf_reference.build(config).save_pretrained(str(hf_dir))
  config["d_ff"] = 128  # the weights say 96
  (hf_dir / "config.json").write_text(json.dumps(config))
  capsys.readouterr()
  err = _run_import(tmp_path, hf_dir, capsys)
  assert "DenseReluDense.wi.weight has shape (96, 64) but config.json implies (128, 64)" in err


def test_import_refuses_existing_checkpoint_dir(tmp_path, capsys):
  out = tmp_path / "ckpt"
  out.mkdir()
  (out / "keep.txt").write_text("precious")
  code = cli.main(["import-hf", "--hf", str(tmp_path), "--out", str(out)])
  assert code == 2 and "already exists and is not empty" in capsys.readouterr().err
  assert (out / "keep.txt").read_text() == "precious"


def test_gin_search_paths_find_files_and_their_includes(tmp_path, capsys):
  """--gin_search_paths (t5x's flag): a file and what it includes are found there, the repository's gin/ after."""
  (tmp_path / "my_run.gin").write_text("include 'models/tiny.gin'\ninclude 'my_size.gin'\n")
  (tmp_path / "my_size.gin").write_text("T5Config.d_model = 32\n")
  assert cli.main(["model-info", f"--gin_search_paths={tmp_path}", "--gin_file=my_run.gin", "--batch=1",
                   "--length=8"]) == 0
  assert "parameters: 2," in capsys.readouterr().out  # tiny.gin's model at d_model 32: about half its 4.3M
  assert T5Config().d_model == 32 and T5Config().num_heads == 4
  assert cli.main(["model-info", "--gin_file=my_run.gin", "--batch=1", "--length=8"]) == 2  # not searched there
  assert "gin file not found: my_run.gin" in capsys.readouterr().err


def test_model_info_cli(capsys):
  assert cli.main(["model-info", "--gin_file=models/tiny.gin", "--batch=1", "--length=8"]) == 0
  out = capsys.readouterr().out
  assert "parameters: 4,310,016" in out
  # Freshly initialised, T5 predicts nearly uniformly: the loss is close to ln(vocab) (logits of unit variance
  # add about 0.5); a mis-scaled init or a broken output layer lands far from it.
  match = re.search(r"loss ([\d.]+) \(ln vocab = ([\d.]+)\), grad norm ([\d.]+)", out)
  loss, ln_vocab, grad_norm = (float(x) for x in match.groups())
  assert ln_vocab == pytest.approx(math.log(32128), abs=1e-4)
  assert 0 <= loss - ln_vocab <= 1.0 and grad_norm > 0


def test_progress_eta_leaves_out_compilation_and_eval(monkeypatch):
  from flan_jax import logs
  clock = [1000.0]
  monkeypatch.setattr(logs.time, "time", lambda: clock[0])
  lines = []
  progress = logs.Progress(0, 101, period=10.0, log_fn=lines.append)
  clock[0] += 60.0  # the first step compiles for a minute
  progress.update(1, {"loss": 1.0})
  assert "first step with compilation 1m00s" in lines[-1] and "ETA" not in lines[-1]
  for done in range(2, 31):  # steps of 0.2 s, then an eval of 30 s at step 30 (it makes a line due)
    clock[0] += 0.2
    if done == 30:
      clock[0] += 30.0
      progress.exclude(30.0)
    progress.update(done, {"loss": 1.0})
  assert lines[-1] == "step 30/101  loss 1.0000  0.200 s/step  ETA 0m14s", lines[-1]


def test_learning_rate_cooldown_falls_linearly_to_zero_at_the_last_step():
  from flan_jax.optim import adafactor, learning_rate_schedule
  schedule = learning_rate_schedule(1e-2, warmup_steps=10, cooldown_steps=20, total_steps=100)
  rates = [float(schedule(step)) for step in (0, 5, 10, 79, 80, 90, 100)]
  assert rates == pytest.approx([0.0, 5e-3, 1e-2, 1e-2, 1e-2, 5e-3, 0.0])
  assert float(learning_rate_schedule(5e-4)(10 ** 6)) == pytest.approx(5e-4)  # Flan's constant rate by default
  with pytest.raises(UserError, match="needs to be in"):
    adafactor(cooldown_fraction=0.25)
  with pytest.raises(UserError, match="do not fit in 10 steps"):
    adafactor(warmup_steps=8, cooldown_fraction=0.5, total_steps=10)
  adafactor(cooldown_fraction=0.25, total_steps=2)  # a short test run of the demo: no cooldown step at all
