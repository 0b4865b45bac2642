"""flax_bert.hf against transformers' PyTorch BERT: parity, round trips, errors, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flax_bert.trainer import checkpoint
from flax_bert import hf, hf_names  # noqa: E402
from flax_bert.config import BertConfig  # noqa: E402
from flax_bert.errors import UserError  # noqa: E402
from flax_bert.model import BertForPreTraining, BertModel  # noqa: E402

TOL = 1e-5
SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=37, max_position_embeddings=64, type_vocab_size=2)


def _hf_config() -> transformers.BertConfig:
    return transformers.BertConfig(**SMALL, attn_implementation="eager")


def _perturb_torch(model: torch.nn.Module) -> None:
    """Random LayerNorm weights/biases and biases, so ones/zeros init hides no mapping bug."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))


def _torch_model(cls: type, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = cls(_hf_config()).eval()
    _perturb_torch(model)
    return model


def _batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[B=3, S=12] ids with both segments and end padding in two rows."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, SMALL["vocab_size"], (3, 12)).astype(np.int32)
    types = np.zeros_like(ids)
    types[:, 6:] = 1
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 5:] = 0
    types[mask == 0] = 0
    ids[mask == 0] = 0
    return ids, types, mask


def _torch_run(model: torch.nn.Module, batch: tuple) -> tuple:
    ids, types, mask = (torch.from_numpy(x.astype(np.int64)) for x in batch)
    with torch.no_grad():
        return model(input_ids=ids, token_type_ids=types, attention_mask=mask)


def _maxdiff(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    d = np.abs(a - b)
    if mask is not None:
        d = d[mask.astype(bool)]
    return float(d.max())


def _our_params(config: BertConfig, seed: int = 1) -> dict:
    """Random init with perturbed LayerNorms and biases (everything non-trivial)."""
    ids = np.zeros((1, 1), np.int32)
    init = jax.jit(BertForPreTraining(config).init)
    params = nn.unbox(init(jax.random.PRNGKey(seed), ids, ids, ids)["params"])
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: np.asarray(x, np.float32) + (
            0.1 * rng.standard_normal(x.shape).astype(np.float32)
            if path[-1].key in ("scale", "bias") else 0), params)


def _assert_trees_equal(a: dict, b: dict) -> None:
    la, ta = jax.tree.flatten_with_path(a)
    lb, tb = jax.tree.flatten_with_path(b)
    assert ta == tb
    for (path, x), (_, y) in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape, path
        assert np.array_equal(x, y), path


def test_parity_pretraining_safetensors(tmp_path, recwarn):
    model = _torch_model(transformers.BertForPreTraining)
    model.save_pretrained(tmp_path, safe_serialization=True)
    config, params = hf.load_pretrained(str(tmp_path))
    assert not [w for w in recwarn if "freshly initialised" in str(w.message)]
    assert config == BertConfig(**SMALL)
    batch = _batch()
    ref = _torch_run(model, batch)
    mlm, nsp = BertForPreTraining(config).apply({"params": params}, *batch)
    seq, pooled = BertModel(config).apply({"params": params["bert"]}, *batch)
    ref_enc = _torch_run(model.bert, batch)
    d = {"seq": _maxdiff(seq, ref_enc.last_hidden_state, batch[2]),
         "pooled": _maxdiff(pooled, ref_enc.pooler_output),
         "mlm": _maxdiff(mlm, ref.prediction_logits, batch[2]),
         "nsp": _maxdiff(nsp, ref.seq_relationship_logits)}
    print("max |delta| BertForPreTraining safetensors:", d)
    assert max(d.values()) <= TOL, d


def test_parity_bert_model_and_pytorch_bin(tmp_path):
    """A bare BertModel saved as pytorch_model.bin: encoder exact, heads fresh + warned."""
    model = _torch_model(transformers.BertModel, seed=2)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / hf_names.TORCH_FILE)  # transformers 5 only writes safetensors.
    with pytest.warns(UserWarning, match="freshly initialised") as record:
        config, params = hf.load_pretrained(str(tmp_path))
    message = str(record[0].message)
    for name in ("cls.predictions.bias", "cls.predictions.transform.dense.weight",
                 "cls.seq_relationship.weight"):
        assert name in message
    assert "bert.pooler" not in message  # The pooler is in the file.
    state = model.state_dict()
    np.testing.assert_array_equal(
        params["bert"]["encoder"]["layers"]["attention"]["self"]["query"]["kernel"][1],
        state["encoder.layer.1.attention.self.query.weight"].numpy().T)
    np.testing.assert_array_equal(params["bert"]["embeddings"]["LayerNorm"]["scale"],
                                  state["embeddings.LayerNorm.weight"].numpy())
    assert params["cls"]["seq_relationship"]["kernel"].shape == (SMALL["hidden_size"], 2)
    assert np.all(params["cls"]["predictions"]["bias"] == 0)  # Fresh heads: HF-style init.
    batch = _batch()
    ref = _torch_run(model, batch)
    seq, pooled = BertModel(config).apply({"params": params["bert"]}, *batch)
    d = {"seq": _maxdiff(seq, ref.last_hidden_state, batch[2]),
         "pooled": _maxdiff(pooled, ref.pooler_output)}
    print("max |delta| BertModel pytorch_model.bin:", d)
    assert max(d.values()) <= TOL, d


def test_old_names_gamma_beta_and_tied_decoder(tmp_path):
    """gamma/beta LayerNorm names, position_ids buffers and an explicit tied decoder load."""
    from safetensors.numpy import save_file

    model = _torch_model(transformers.BertForPreTraining, seed=3)
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
    state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"]
    state["bert.embeddings.position_ids"] = np.arange(64, dtype=np.int64)[None]
    old = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
           for k, v in state.items()}
    model.config.save_pretrained(tmp_path)
    save_file(old, str(tmp_path / hf.SAFETENSORS_FILE))
    _, params = hf.load_pretrained(str(tmp_path))
    np.testing.assert_array_equal(params["cls"]["predictions"]["transform"]["LayerNorm"]["bias"],
                                  state["cls.predictions.transform.LayerNorm.bias"])

    old["cls.predictions.decoder.weight"] = old["cls.predictions.decoder.weight"] + 1.0
    save_file(old, str(tmp_path / hf.SAFETENSORS_FILE))
    with pytest.raises(UserError, match="cls.predictions.decoder.weight differs"):
        hf.load_pretrained(str(tmp_path))


def test_round_trip_to_transformers(tmp_path):
    config = BertConfig(**SMALL)
    params = _our_params(config)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n")
    out = tmp_path / "hf"
    hf.save_pretrained(config, params, str(out), vocab=str(vocab))
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "vocab.txt"]
    saved = json.loads((out / "config.json").read_text())
    assert saved["architectures"] == ["BertForPreTraining"] and saved["model_type"] == "bert"

    model, info = transformers.BertForPreTraining.from_pretrained(
        out, output_loading_info=True, attn_implementation="eager")
    model.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    batch = _batch()
    ref = _torch_run(model, batch)
    mlm, nsp = BertForPreTraining(config).apply({"params": params}, *batch)
    d = {"mlm": _maxdiff(mlm, ref.prediction_logits, batch[2]),
         "nsp": _maxdiff(nsp, ref.seq_relationship_logits)}
    print("max |delta| our params -> transformers:", d)
    assert max(d.values()) <= TOL, d

    config2, params2 = hf.load_pretrained(str(out))
    assert config2 == config
    _assert_trees_equal(params2, jax.tree.map(np.asarray, params))


def _write_small_hf(path, seed: int = 0) -> torch.nn.Module:
    model = _torch_model(transformers.BertForPreTraining, seed)
    model.save_pretrained(path)
    return model


def test_error_no_config(tmp_path):
    with pytest.raises(UserError, match=r"config\.json not found") as e:
        hf.load_pretrained(str(tmp_path))
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_error_not_bert(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 99}))
    with pytest.raises(UserError, match=r"config\.json.*gpt2") as e:
        hf.load_pretrained(str(tmp_path))
    assert "\n" not in str(e.value)


def test_error_no_weights(tmp_path):
    _hf_config().save_pretrained(tmp_path)
    with pytest.raises(UserError, match="no model.safetensors or pytorch_model.bin"):
        hf.load_pretrained(str(tmp_path))


def test_error_wrong_shape_and_missing_and_unexpected(tmp_path):
    from safetensors.numpy import load_file, save_file

    _write_small_hf(tmp_path)
    weights = str(tmp_path / hf.SAFETENSORS_FILE)
    good = load_file(weights)
    name = "bert.encoder.layer.1.intermediate.dense.weight"

    bad = dict(good, **{name: np.zeros((36, 32), np.float32)})
    save_file(bad, weights)
    with pytest.raises(UserError, match=rf"model\.safetensors: tensor '{name}' has shape \(36, 32\), "
                                        rf"expected \(37, 32\)") as e:
        hf.load_pretrained(str(tmp_path))
    assert "\n" not in str(e.value)

    missing = "bert.encoder.layer.0.attention.self.key.bias"
    save_file({k: v for k, v in good.items() if k != missing}, weights)
    with pytest.raises(UserError, match=rf"model\.safetensors: tensor '{missing}' is missing"):
        hf.load_pretrained(str(tmp_path))

    save_file(dict(good, **{"lm_head.weight": np.zeros((2, 32), np.float32)}), weights)
    with pytest.raises(UserError, match="unexpected tensor 'lm_head.weight'"):
        hf.load_pretrained(str(tmp_path))


def test_cli_round_trip(tmp_path, capsys):
    src = tmp_path / "src"
    model = _write_small_hf(src, seed=4)
    (src / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n")
    work = tmp_path / "work"
    assert hf.main(["import", str(src), "--workdir", str(work)]) == 0
    pretrained = work / "pretrained"
    assert (pretrained / "vocab.txt").read_text() == "[PAD]\n[UNK]\n[CLS]\n"
    assert checkpoint.load_config(str(pretrained)) == BertConfig(**SMALL)

    # Refuses to overwrite: exit 2, one line on stderr.
    capsys.readouterr()
    assert hf.main(["import", str(src), "--workdir", str(work)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "pretrained" in err
    (tmp_path / "trained" / "checkpoints").mkdir(parents=True)
    assert hf.main(["import", str(src), "--workdir", str(tmp_path / "trained")]) == 2
    assert "checkpoints" in capsys.readouterr().err

    out = tmp_path / "out"
    assert hf.main(["export", "--workdir", str(pretrained), str(out)]) == 0
    assert (out / "vocab.txt").exists()
    loaded, info = transformers.BertForPreTraining.from_pretrained(
        out, output_loading_info=True, attn_implementation="eager")
    loaded.eval()
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    batch = _batch()
    ref, got = _torch_run(model, batch), _torch_run(loaded, batch)
    d = {"mlm": _maxdiff(got.prediction_logits, ref.prediction_logits),
         "nsp": _maxdiff(got.seq_relationship_logits, ref.seq_relationship_logits)}
    print("max |delta| CLI import -> export:", d)
    assert max(d.values()) <= TOL, d  # In fact exact: fp32 copies all the way.

    capsys.readouterr()  # Drop transformers' progress bars.
    assert hf.main(["export", "--workdir", str(tmp_path / "nothing"), str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "nothing" in err


def test_cli_subprocess_error_exit_code(tmp_path):
    """A real process: exit 2, a single `error:` line on stderr, no traceback."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    proc = subprocess.run(
        [sys.executable, "-m", "flax_bert.hf", "import", str(tmp_path), "--workdir",
         str(tmp_path / "work")], capture_output=True, text=True, timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "gpt2" in lines[0], proc.stderr
    assert "config.json" in lines[0]
    assert not (tmp_path / "work").exists()  # nothing made for a bad source


def test_bf16_safetensors(tmp_path):
    """bfloat16 checkpoints load without torch at read time, exactly widened to float32."""
    import safetensors.torch

    model = _torch_model(transformers.BertForPreTraining, seed=5)
    model.config.save_pretrained(tmp_path)
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()
             if k != "cls.predictions.decoder.weight" and k != "cls.predictions.decoder.bias"}
    safetensors.torch.save_file(state, str(tmp_path / hf.SAFETENSORS_FILE), metadata={"format": "pt"})
    _, params = hf.load_pretrained(str(tmp_path))
    np.testing.assert_array_equal(
        params["bert"]["encoder"]["layers"]["output"]["dense"]["kernel"][0],
        state["bert.encoder.layer.0.output.dense.weight"].float().numpy().T)


def test_pytorch_bin_without_torch(tmp_path, monkeypatch):
    _hf_config().save_pretrained(tmp_path)
    (tmp_path / hf_names.TORCH_FILE).write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError.
    with pytest.raises(UserError, match=r"pytorch_model\.bin needs PyTorch to read; pip install torch"):
        hf.load_pretrained(str(tmp_path))


def test_checkpoint_without_pooler_warns(tmp_path):
    """BertForMaskedLM has no pooler and no NSP head: both initialised and listed."""
    torch.manual_seed(6)
    model = transformers.BertForMaskedLM(_hf_config()).eval()
    model.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="bert.pooler, cls.seq_relationship") as record:
        _, params = hf.load_pretrained(str(tmp_path))
    assert "cls.predictions" not in str(record[0].message).split("initialised:")[0]
    np.testing.assert_array_equal(params["cls"]["predictions"]["bias"],
                                  model.state_dict()["cls.predictions.bias"].numpy())
