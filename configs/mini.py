"""BERT-Mini (Turc et al. 2019): L=4, H=256, A=4, intermediate 1024."""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    return default.with_size(default.get_config(), layers=4, hidden=256, heads=4)
