"""BERT-Large (Devlin et al. 2018): L=24, H=1024, A=16, intermediate 4096."""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    return default.with_size(default.get_config(), layers=24, hidden=1024, heads=16)
