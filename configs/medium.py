"""BERT-Medium (Turc et al. 2019): L=8, H=512, A=8, intermediate 2048."""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    return default.with_size(default.get_config(), layers=8, hidden=512, heads=8)
