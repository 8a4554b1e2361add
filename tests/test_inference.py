"""Decoding, scoring, export and held-out evaluation, against HuggingFace transformers."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

import hf_reference
from flan_jax import checkpoints, cli, decoding, evaluation, gin_utils, hf, inference, train
from flan_jax.errors import UserError
from flan_jax.models import T5

DECODE_LEN = 12


@pytest.fixture(scope="module")
def eos_prone(tmp_path_factory, shared_data):
  """A 2-layer Flan-T5-small-shaped random HF model whose EOS logit is raised, so outputs end at varied
  lengths; imported as ours."""
  model = hf_reference.build(hf_reference.flan_t5_small_config(shared_data, num_layers=2, num_decoder_layers=2,
                                                               dropout_rate=0.0))
  with torch.no_grad():
    others = model.lm_head.weight[2:100]
    model.lm_head.weight[1] = others.mean(0) + 3.0 * others.std(0) * torch.sign(others.mean(0))
  hf_dir = str(tmp_path_factory.mktemp("eos") / "hf")
  model.save_pretrained(hf_dir)
  config, params = hf.read_hf(hf_dir)
  return model, config, jax.tree.map(jnp.asarray, params)


def _inputs(n=20, length=16, seed=0):
  rng = np.random.default_rng(seed)
  enc = np.zeros((n, length), np.int64)
  for i in range(n):
    k = rng.integers(4, length + 1)
    enc[i, :k] = rng.integers(2, 32000, k)
  return enc


def _hf_generate(model, enc, **kwargs):
  with torch.no_grad():
    out = model.generate(input_ids=torch.as_tensor(enc), attention_mask=torch.as_tensor((enc > 0).astype(np.int64)),
                         do_sample=False, max_new_tokens=DECODE_LEN, **kwargs).numpy()[:, 1:]
  return _after_eos_zero(np.pad(out, ((0, 0), (0, DECODE_LEN - out.shape[1]))))


def _after_eos_zero(tokens):
  """HF pads finished beams with EOS; we pad with 0. Compare up to and including the first EOS."""
  tokens = np.array(tokens)
  for row in tokens:
    eos = np.flatnonzero(row == 1)
    if len(eos):
      row[eos[0] + 1:] = 0
  return tokens


def test_greedy_equals_hf_generate(eos_prone):
  model, config, params = eos_prone
  enc = _inputs()
  ours, _ = decoding.sample(params, jnp.asarray(enc, jnp.int32), jax.random.key(0), config=config,
                            max_length=DECODE_LEN)
  theirs = _hf_generate(model, enc, num_beams=1)
  assert 3 <= (theirs == 1).any(-1).sum() <= 17  # some rows stop early, some run to the length limit
  assert np.array_equal(np.asarray(ours), theirs)


def test_beam_search_against_hf_beam_search(eos_prone):
  """Same 4 beams, no length penalty. Where the two differ, ours found the more likely sequence: HF lets an
  EOS candidate finish only if it ranks in the top num_beams of the 2 x num_beams candidates, t5x (and we)
  let any of the 2 x num_beams candidates finish."""
  model, config, params = eos_prone
  enc = _inputs(seed=1)
  ours, our_scores = decoding.beam_search(params, jnp.asarray(enc, jnp.int32), config=config,
                                          max_length=DECODE_LEN, beam_size=4, alpha=0.0)
  with torch.no_grad():
    out = model.generate(input_ids=torch.as_tensor(enc), attention_mask=torch.as_tensor((enc > 0).astype(np.int64)),
                         do_sample=False, max_new_tokens=DECODE_LEN, num_beams=4, length_penalty=0.0,
                         early_stopping=False, output_scores=True, return_dict_in_generate=True)
  seqs = out.sequences.numpy()[:, 1:]
  theirs = _after_eos_zero(np.pad(seqs, ((0, 0), (0, DECODE_LEN - seqs.shape[1]))))
  same = (np.asarray(ours) == theirs).all(-1)
  assert (theirs == 1).any(-1).sum() >= 3
  assert same.sum() >= 15, same
  # Where they differ, transformers itself rescores our sequence: it is what we said, and more likely than its own.
  rows = np.flatnonzero(~same)
  rescored = _hf_log_likelihood(model, enc[rows], _after_eos_zero(np.asarray(ours)[rows]).astype(np.int64))
  assert np.allclose(rescored, np.asarray(our_scores)[rows], atol=1e-4)
  assert np.all(rescored > out.sequences_scores.numpy()[rows] + 1e-4)
  # Our score is the sequence's log-likelihood, as HF computes it for the sequences both found.
  assert np.allclose(np.asarray(our_scores)[same], out.sequences_scores.numpy()[same], atol=1e-4)


def test_sampling_is_seeded_and_respects_top_k_and_top_p(eos_prone):
  _, config, params = eos_prone
  enc = jnp.asarray(_inputs(n=4), jnp.int32)
  a, _ = decoding.sample(params, enc, jax.random.key(1), config=config, max_length=8, temperature=1.0, top_k=1)
  greedy, _ = decoding.sample(params, enc, jax.random.key(2), config=config, max_length=8)
  assert np.array_equal(np.asarray(a), np.asarray(greedy))  # top-k 1 is greedy whatever the key
  b, _ = decoding.sample(params, enc, jax.random.key(1), config=config, max_length=8, temperature=1.0)
  c, _ = decoding.sample(params, enc, jax.random.key(1), config=config, max_length=8, temperature=1.0)
  d, _ = decoding.sample(params, enc, jax.random.key(3), config=config, max_length=8, temperature=1.0)
  assert np.array_equal(np.asarray(b), np.asarray(c)) and not np.array_equal(np.asarray(b), np.asarray(d))
  # top-p: a nucleus smaller than the most likely token's probability keeps that token alone, i.e. greedy
  e, _ = decoding.sample(params, enc, jax.random.key(1), config=config, max_length=8, temperature=1.0, top_p=1e-6)
  f, _ = decoding.sample(params, enc, jax.random.key(1), config=config, max_length=8, temperature=1.0, top_p=0.999)
  assert np.array_equal(np.asarray(e), np.asarray(greedy)) and not np.array_equal(np.asarray(f), np.asarray(greedy))


def test_score_equals_hf_log_likelihood(eos_prone):
  model, config, params = eos_prone
  enc = _inputs(n=6)
  rng = np.random.default_rng(5)
  tgt = np.zeros((6, 10), np.int64)
  for i, n in enumerate([10, 7, 4, 9, 2, 6]):
    tgt[i, :n] = rng.integers(2, 32000, n)
  dec_in = np.concatenate([np.zeros((6, 1), np.int64), tgt[:, :-1]], 1)
  ours = np.asarray(decoding.score(params, jnp.asarray(enc, jnp.int32), jnp.asarray(dec_in, jnp.int32),
                                   jnp.asarray(tgt, jnp.int32), config=config))
  with torch.no_grad():
    logits = model(input_ids=torch.as_tensor(enc), attention_mask=torch.as_tensor((enc > 0).astype(np.int64)),
                   decoder_input_ids=torch.as_tensor(dec_in)).logits
  logp = torch.log_softmax(logits, -1).gather(-1, torch.as_tensor(tgt)[..., None])[..., 0].numpy()
  theirs = (logp * (tgt > 0)).sum(-1)
  assert np.max(np.abs(ours - theirs)) <= 1e-4


# --- export ---

def _train_a_few_steps(tmp_path, hf_model, name, shared_data):
  """import-hf, then 3 training steps on real data from that checkpoint; returns the run's MODEL_DIR."""
  hf_dir = str(tmp_path / f"{name}_hf")
  hf_model.save_pretrained(hf_dir)
  imported = hf.import_hf(hf_dir, str(tmp_path / f"{name}_ckpt"),
                          vocabulary=os.path.join(shared_data, "t5_vocab", "spiece.model"))
  model_dir = str(tmp_path / f"{name}_run")
  gin_utils.parse(["runs/finetune.gin"], [
      f"MODEL_DIR = '{model_dir}'", "MIXTURE_OR_TASK_NAME = 'shared_nq_open'", "TRAIN_STEPS = 3",
      "BATCH_SIZE = 4", "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 8}", "DROPOUT_RATE = 0.0",
      f"INITIAL_CHECKPOINT_PATH = '{imported}'", "LEARNING_RATE = 1e-2", "EVAL_TASKS = []"])
  train.train(log_fn=lambda line: None)
  return hf_dir, imported, model_dir


@pytest.mark.parametrize("kind", ["t5_1_1", "v1_0"])
def test_import_export_roundtrip_and_trained_export_loads_in_hf(kind, tmp_path, shared_data):
  # Flan-T5-small's config (gated-GELU, untied head, its buckets) at the width of V10_CONFIG: shapes test nothing here.
  config = (hf_reference.flan_t5_small_config(shared_data, num_layers=2, num_decoder_layers=1, dropout_rate=0.0,
                                              **hf_reference.NARROW)
            if kind == "t5_1_1" else dict(hf_reference.V10_CONFIG))
  hf_dir, imported, model_dir = _train_a_few_steps(tmp_path, hf_reference.build(config), kind, shared_data)

  # import then export: identical tensors
  roundtrip = hf.export_hf(imported, str(tmp_path / "roundtrip"))
  original, exported = load_file(os.path.join(hf_dir, "model.safetensors")), \
      load_file(os.path.join(roundtrip, "model.safetensors"))
  assert set(exported) <= set(original)
  assert all(np.array_equal(exported[k], original[k]) for k in exported)
  assert set(original) - set(exported) <= {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}

  # trained, then exported: transformers loads every weight and computes our logits
  out = hf.export_hf(os.path.join(model_dir, "checkpoints"), str(tmp_path / "exported"))
  loaded, info = transformers.T5ForConditionalGeneration.from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  with open(os.path.join(out, "config.json")) as f:
    written = json.load(f)
  assert written["tie_word_embeddings"] is (kind == "v1_0")
  assert written["feed_forward_proj"] == ("gated-gelu" if kind == "t5_1_1" else "relu")
  assert written["decoder_start_token_id"] == 0
  generation = transformers.GenerationConfig.from_pretrained(out)  # README: export-hf writes it
  assert (generation.decoder_start_token_id, generation.eos_token_id, generation.pad_token_id) == (0, 1, 0)
  trained = inference.load(os.path.join(model_dir, "checkpoints"))
  before = inference.load(imported)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(before.params)))
  enc = _inputs(n=3, length=12)
  dec_in = np.concatenate([np.zeros((3, 1), np.int64), enc[:, :5]], 1)
  ours = np.asarray(T5(trained.config).apply(
      {"params": trained.params}, jnp.asarray(enc), jnp.asarray(dec_in), jnp.ones_like(jnp.asarray(dec_in))))
  theirs = hf_reference.logits(loaded.eval(), enc, (enc > 0).astype(np.int64), dec_in)
  assert np.max(np.abs(ours - theirs)) <= 1e-4

  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  text = "Translate English to German: That is good."
  assert tokenizer(text).input_ids == list(trained.vocabulary.encode(text)) + [1]


def test_export_refuses_config_without_hf_equivalent(tmp_path, capsys):
  from flan_jax.models import T5Config
  from flan_jax.models.t5 import init_variables
  import flax.linen as nn
  config = T5Config(vocab_size=128, d_model=16, d_ff=32, num_heads=2, d_kv=8, num_encoder_layers=1,
                    num_decoder_layers=1, mlp_activations=("gelu",))
  params = nn.unbox(init_variables(config, jax.random.key(0)))["params"]
  ckpt = str(tmp_path / "ckpt")
  with checkpoints.manager(ckpt) as mngr:
    checkpoints.save(mngr, 1, params, {"model_config": config.to_dict(), "vocabulary_fingerprint": "ByteVocabulary:259"})
  assert cli.main(["export-hf", "--checkpoint", ckpt, "--out", str(tmp_path / "out")]) == 2
  assert "have no HuggingFace T5 equivalent" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_bad_checkpoint_paths_and_malformed_jsonl(tmp_path, capsys):
  assert cli.main(["infer", "--checkpoint", str(tmp_path / "nope"), "--input", "x", "--output", "y"]) == 2
  assert "checkpoint not found" in capsys.readouterr().err
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "weights.bin").write_bytes(b"x")
  assert cli.main(["export-hf", "--checkpoint", str(tmp_path / "other"), "--out", str(tmp_path / "o")]) == 2
  assert "holds no flan-jax checkpoint" in capsys.readouterr().err
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"inputs": "fine"}\n{"inputs": oops}\n')
  with pytest.raises(UserError, match=r"bad.jsonl:2: malformed JSON line"):
    inference.read_jsonl(str(bad))


@pytest.mark.parametrize("flag, value, message", [
    ("--top_p", "1.5", "must be in (0, 1], got 1.5"), ("--top_p", "0", "must be in (0, 1], got 0"),
    ("--temperature", "-1", "must be in [0, inf], got -1"), ("--top_k", "-2", "must be in [0, inf], got -2"),
    ("--beam_size", "0", "must be in [1, inf], got 0"), ("--max_decode_length", "0", "must be in [1, inf], got 0"),
    ("--batch_size", "two", "not an integer: 'two'"), ("--num_processes", "0", "must be in [1, inf], got 0")])
def test_out_of_range_decoding_flags_are_usage_errors_before_anything_runs(flag, value, message, tmp_path, capsys):
  for command in (["infer", "--output", str(tmp_path / "p.jsonl")], ["eval", "--tasks", "demo_held_in"]):
    with pytest.raises(SystemExit) as exit_:
      cli.main(command + ["--checkpoint", str(tmp_path / "ckpt"), flag, value])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"argument {flag}: {message}")
  assert not (tmp_path / "p.jsonl").exists()


# --- infer and eval end to end on a tiny model with the T5 vocabulary ---

@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory, shared_data):
  """(flan-jax checkpoint, the transformers model it was imported from)."""
  root = tmp_path_factory.mktemp("tiny")
  hf_dir = str(root / "hf")
  model = hf_reference.build(dict(hf_reference.V10_CONFIG))
  model.save_pretrained(hf_dir)
  ckpt = hf.import_hf(hf_dir, str(root / "ckpt"), vocabulary=os.path.join(shared_data, "t5_vocab", "spiece.model"))
  return ckpt, model


def _hf_log_likelihood(model, enc, targets):
  """transformers' log-likelihood of each target row (its non-pad tokens) given each encoder row."""
  dec_in = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], 1)
  logits = hf_reference.logits(model, enc, (enc > 0).astype(np.int64), dec_in)
  logp = torch.log_softmax(torch.as_tensor(logits), -1).gather(-1, torch.as_tensor(targets)[..., None])[..., 0]
  return (logp.numpy() * (targets > 0)).sum(-1)


def test_infer_predict_and_score_jsonl(tiny_t5, tmp_path, capsys, shared_data):
  ckpt, hf_model = tiny_t5
  src = tmp_path / "in.jsonl"
  src.write_text('{"inputs": "What is the capital of France?", "targets": "Paris"}\n'
                 '{"inputs": "2 + 2 =", "targets": "4"}\n{"inputs": "Hello", "targets": "Hi"}\n')
  texts, targets = ["What is the capital of France?", "2 + 2 =", "Hello"], ["Paris", "4", "Hi"]
  out = tmp_path / "pred.jsonl"
  assert cli.main(["infer", "--checkpoint", ckpt, "--input", str(src), "--output", str(out),
                   "--max_decode_length", "8", "--batch_size", "2"]) == 0
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["inputs"] for r in rows] == texts
  # transformers' greedy generate on the same weights and token ids (tokenizer parity: test_foundation)
  vocabulary = inference.load(ckpt).vocabulary
  enc = inference.encode(vocabulary, texts, 32).astype(np.int64)
  with torch.no_grad():
    generated = hf_model.generate(input_ids=torch.as_tensor(enc), attention_mask=torch.as_tensor((enc > 0) * 1),
                                  do_sample=False, max_new_tokens=8).numpy()[:, 1:]
  assert [r["prediction"] for r in rows] == [inference.decode_tokens(vocabulary, g) for g in generated]
  # the sampling flags reach the decoder: top-k 1 at temperature 1 is greedy again, a seed's samples repeat
  sampled = [tmp_path / f"sampled{i}.jsonl" for i in range(3)]
  for path, flags in zip(sampled, (["--top_k", "1"], ["--top_p", "0.9", "--seed", "3"], ["--top_p", "0.9", "--seed", "3"])):
    assert cli.main(["infer", "--checkpoint", ckpt, "--input", str(src), "--output", str(path), "--max_decode_length",
                     "8", "--batch_size", "2", "--temperature", "1.0"] + flags) == 0
  assert sampled[0].read_text() == out.read_text() and sampled[1].read_text() == sampled[2].read_text()
  scored = tmp_path / "score.jsonl"
  assert cli.main(["infer", "--checkpoint", ckpt, "--input", str(src), "--output", str(scored),
                   "--mode", "score", "--max_decode_length", "8", "--batch_size", "2"]) == 0
  ll = [json.loads(line)["log_likelihood"] for line in scored.read_text().splitlines()]
  # the targets as transformers' tokenizer writes them: their pieces and one EOS
  tokenizer = transformers.AutoTokenizer.from_pretrained(os.path.join(shared_data, "hf", "flan-t5-small"))
  labels = tokenizer(targets, padding="max_length", max_length=8, return_tensors="np").input_ids
  assert np.max(np.abs(np.array(ll) - _hf_log_likelihood(hf_model, enc, labels))) <= 1e-4


def test_scored_targets_carry_one_eos_built_by_hand(t5_vocab):
  """Targets are their pieces, then EOS (1), then padding; a target longer than the length keeps its first pieces
  and EOS, as training cuts it, and is reported."""
  piece = t5_vocab.tokenizer.piece_to_id
  dec_in, tgt, cut = inference._teacher_forcing(t5_vocab, ["A", "Paris", "A B C D"], 4)
  assert tgt.tolist() == [[71, 1, 0, 0], [piece("▁Paris"), 1, 0, 0], [71, piece("▁B"), piece("▁C"), 1]]
  assert dec_in.tolist() == [[0, 71, 1, 0], [0, piece("▁Paris"), 1, 0], [0, 71, piece("▁B"), piece("▁C")]]
  assert cut.tolist() == [False, False, True]
  ids, cut = inference.tokenize(t5_vocab, ["A B C D", "A"], 3)
  assert ids == [[71, piece("▁B"), 1], [71, 1]] and cut.tolist() == [True, False]


def test_inference_cuts_an_input_as_the_training_pipeline_does():
  """One rule for a long input in training, in-training eval, eval and infer: its first tokens, then EOS."""
  from flan_jax.data import pipeline, register_prompt_task
  from flan_jax.vocab import byte_vocabulary
  texts = ["a long input that does not fit in sixteen tokens", "short"]
  register_prompt_task("test_cut_task", {"validation": [{"inputs": t, "targets": "x"} for t in texts]},
                       byte_vocabulary())
  ds = pipeline.get_dataset("test_cut_task", "validation", {"inputs": 16, "targets": 4}, shuffle=False, num_epochs=1,
                            pack=False)
  trained = np.stack([row["encoder_input_tokens"] for row in pipeline.iterate(ds)])
  assert np.array_equal(inference.encode(byte_vocabulary(), texts, 16), trained)
  assert trained[0, -1] == 1 and inference.tokenize(byte_vocabulary(), texts, 16)[1].tolist() == [True, False]


def test_eval_counts_what_does_not_fit_and_shows_the_lengths_it_changed(tiny_t5, tmp_path, capsys, shared_data):
  """Flags shorter than the protocol's lengths: every cut prompt and stopped answer is counted per task, in the
  JSON and in the task's progress line, and the changed lengths are shown beside the protocol's."""
  ckpt, _ = tiny_t5
  out = tmp_path / "results.json"
  assert cli.main(["eval", "--checkpoint", ckpt, "--tasks", "mmlu_abstract_algebra", "bbh_navigate_cot",
                   "--max_examples", "3", "--max_decode_length", "8", "--batch_size", "8",
                   "--inputs_length", "256", "--output", str(out)]) == 0
  err = capsys.readouterr().err
  results = json.loads(out.read_text())
  mmlu, bbh = results["tasks"]["mmlu_abstract_algebra"], results["tasks"]["bbh_navigate_cot"]
  tokenizer = transformers.AutoTokenizer.from_pretrained(os.path.join(shared_data, "hf", "flan-t5-small"))
  for task, result in (("mmlu_abstract_algebra", mmlu), ("bbh_navigate_cot", bbh)):
    _, rows = evaluation.examples(task, None, 3)
    longer = sum(len(tokenizer(text).input_ids) > 256 for text, _ in rows)
    assert result["inputs_cut"] == longer > 0
  assert mmlu["method"] == "first_token" and mmlu["split"] == "test" and mmlu["answers_cut"] == 0
  assert mmlu["overrides"] == {"inputs_length": {"protocol": 2048, "used": 256}}
  assert bbh["method"] == "generation" and bbh["overrides"]["max_decode_length"]["used"] == 8
  assert bbh["answers_cut"] == 3  # a random model never says EOS
  assert "mmlu_abstract_algebra: accuracy" in err and f"NOT FIT: {mmlu['inputs_cut']} inputs longer than 256" in err
  assert "3 answers stopped at 8 tokens" in err
  # a task tokenized with another vocabulary (the demo's bytes) is refused, not decoded into nonsense
  assert cli.main(["eval", "--checkpoint", ckpt, "--tasks", "demo_held_in", "--max_examples", "1"]) == 2
  assert "flan-jax: error: vocab mismatch: task demo_held_in uses ByteVocabulary" in capsys.readouterr().err


def test_metric_fns_are_applied_to_targets_and_predictions(monkeypatch):
  """seqio-style metric functions registered with a task run on its targets and predictions; accuracy is counted
  as by hand."""
  from flan_jax import evaluation
  from flan_jax.data import register_prompt_task
  from flan_jax.vocab import byte_vocabulary
  records = {"validation": [{"inputs": f"q{i}", "targets": t} for i, t in enumerate(["a", "b", "The answer is c.", "d"])]}
  seen = {}

  def exact(targets, predictions):
    seen["args"] = (list(targets), list(predictions))
    return {"exact": sum(t == p for t, p in zip(targets, predictions)) / len(targets)}

  register_prompt_task("test_metric_task", records, byte_vocabulary(), metric_fns=[exact])
  predictions = ["a", "x", "so the answer is c", "d"]
  fits = np.zeros(len(predictions), bool)
  monkeypatch.setattr(inference, "predict",
                      lambda model, inputs, settings, progress=None: inference.Output(predictions, fits, fits))
  model = inference.Model(config=None, params=None, vocabulary=byte_vocabulary())
  result = evaluation.evaluate_task(model, "test_metric_task", "validation", inference.Settings())
  assert seen["args"] == (["a", "b", "The answer is c.", "d"], predictions)
  assert result["metrics"] == {"exact": 0.5}
  assert result["accuracy"] == 0.75  # "the answer is c" counts by its answer


def test_answer_extraction():
  from flan_jax.evaluation import answer_of
  assert answer_of("Step one. So the answer is (B).") == "(B)"
  assert answer_of("16 - 7 = 9.\nThe answer is 9.") == "9"
  assert answer_of("  Yes ") == "Yes"


def test_decoding_compiles_once_per_batch_shape():
  """docs/training.md: 10 inputs in batches of 4 (the last padded) decode with one compilation,
  and a new batch size is one more."""
  import dataclasses
  from flan_jax.models import T5Config
  from flan_jax.models.t5 import init_variables
  from flan_jax.vocab import byte_vocabulary
  import flax.linen as nn
  config = T5Config(vocab_size=384, d_model=16, d_ff=32, num_heads=2, d_kv=8, num_encoder_layers=1,
                    num_decoder_layers=1)
  params = nn.unbox(init_variables(config, jax.random.key(0)))["params"]
  model = inference.Model(config, params, byte_vocabulary())
  settings = inference.Settings(batch_size=4, inputs_length=8, max_decode_length=3, temperature=0.5)
  texts = [f"input {i}" for i in range(10)]
  before = decoding.sample._cache_size()
  first = inference.predict(model, texts, settings)
  assert decoding.sample._cache_size() == before + 1 and len(first.values) == 10
  assert inference.predict(model, texts[:3], settings).values and decoding.sample._cache_size() == before + 1
  inference.predict(model, texts, dataclasses.replace(settings, batch_size=5))
  assert decoding.sample._cache_size() == before + 2
