"""flax_bert: BERT pretraining (MLM + NSP) in JAX/Flax, and fine-tuning heads."""

from flax_bert import functional
from flax_bert.config import BertConfig
from flax_bert.heads import (BertForQuestionAnswering, BertForSequenceClassification,
                             BertForTokenClassification)
from flax_bert.model import BertForPreTraining, BertModel

__all__ = ["BertConfig", "BertModel", "BertForPreTraining", "BertForSequenceClassification",
           "BertForTokenClassification", "BertForQuestionAnswering", "functional"]
