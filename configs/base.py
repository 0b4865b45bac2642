"""BERT-Base (Devlin et al. 2018): L=12, H=768, A=12, intermediate 3072."""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    return default.with_size(default.get_config(), layers=12, hidden=768, heads=12)
