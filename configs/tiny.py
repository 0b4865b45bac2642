"""BERT-Tiny (Turc et al. 2019): L=2, H=128, A=2, intermediate 512."""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    return default.with_size(default.get_config(), layers=2, hidden=128, heads=2)
