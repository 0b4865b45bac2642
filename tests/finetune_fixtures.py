"""A tiny pretrained model (an export directory with its vocab) and a tiny labelled task
for the fine-tuning tests."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import numpy as np

from flax_bert.config import BertConfig
from flax_bert.data import vocab as vocab_lib
from flax_bert.model import BertForPreTraining
from flax_bert.trainer import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPICS = {"animals": "cat dog bird fish horse", "weather": "rain snow wind sun cloud",
          "food": "bread soup cake apple rice"}
FILLER = "the a and of on".split()
WORDS = sorted({w for words in TOPICS.values() for w in words.split()} | set(FILLER))
TINY_MODEL = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=32)
# finetune.py flags of a tiny, fast run (everything else from configs/finetune.py).
TINY_RUN = ["--config.data.max_seq_length=16", "--config.train.global_batch_size=8",
            "--config.train.steps=8", "--config.train.steps_per_call=2",
            "--config.train.log_every=2", "--config.train.eval_every=4",
            "--config.train.eval_batch_size=8", "--config.optimizer.warmup_steps=2",
            "--config.checkpoint.every=4", "--config.train.tensorboard=False"]


def write_vocab(path: str, extra: tuple[str, ...] = ()) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(t + "\n" for t in (*vocab_lib.SPECIAL_TOKENS, *WORDS, *extra))
    return path


def write_pretrained(folder: str, seed: int = 0) -> tuple[BertConfig, dict]:
    """An export directory (config.json, params/, vocab.txt) of a random tiny BERT."""
    os.makedirs(folder)
    vocab = write_vocab(os.path.join(folder, "vocab.txt"))
    config = BertConfig(vocab_size=len(vocab_lib.read_vocab(vocab)), **TINY_MODEL)
    ids = np.zeros((1, 4), np.int32)
    params = jax.device_get(nn.unbox(jax.jit(BertForPreTraining(config).init)(
        jax.random.PRNGKey(seed), ids, ids, ids)["params"]))
    checkpoint.save_params(folder, config, params)
    return config, params


def write_task(path: str, num: int, seed: int, labels: tuple[str, ...] = tuple(TOPICS),
               pairs: bool = False) -> list[dict]:
    """JSONL rows: 4-8 words, mostly of the label's topic."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(num):
        label = labels[i % len(labels)]
        pool = TOPICS.get(label, TOPICS["food"]).split() + FILLER
        row = {"text": " ".join(rng.choice(pool, int(rng.integers(4, 9)))), "label": label}
        if pairs:
            row["text_pair"] = " ".join(rng.choice(pool, 3))
        rows.append(row)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows
