"""flax_bert: BERT pretraining (MLM + NSP) in JAX/Flax, and fine-tuning heads.

The model classes and `functional` are imported on first use, so that the command-line
entry points start (and take SIGTERM) before jax is loaded.
"""

import importlib
from typing import Any

_EXPORTS = {"BertConfig": "flax_bert.config", "BertModel": "flax_bert.model",
            "BertForPreTraining": "flax_bert.model",
            "BertForSequenceClassification": "flax_bert.heads",
            "BertForTokenClassification": "flax_bert.heads",
            "BertForQuestionAnswering": "flax_bert.heads"}

__all__ = [*_EXPORTS, "functional"]


def __getattr__(name: str) -> Any:
    if name == "functional":
        return importlib.import_module("flax_bert.functional")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'flax_bert' has no attribute {name!r}")
