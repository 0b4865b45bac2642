"""flax_bert: BERT pretraining (MLM + NSP) in JAX/Flax, and fine-tuning heads."""

from flax_bert import functional
from flax_bert.config import BertConfig
from flax_bert.model import (BertForPreTraining, BertForQuestionAnswering,
                             BertForSequenceClassification, BertForTokenClassification,
                             BertModel)

__all__ = ["BertConfig", "BertModel", "BertForPreTraining", "BertForSequenceClassification",
           "BertForTokenClassification", "BertForQuestionAnswering", "functional"]
