"""Params written before the encoder's layers were stacked (`encoder/layer_i`): exports load
stacked; a train checkpoint refuses to resume with a one-line error naming the layout."""

import dataclasses

import flax.linen as nn
import grain
import jax
import ml_collections
import numpy as np
import pytest

from flax_bert import BertForPreTraining, model
from flax_bert.errors import UserError
from flax_bert.trainer import checkpoint, state as state_lib
from tests.unit.test_model import SMALL


@pytest.fixture(scope="module")
def params():
    cfg = dataclasses.replace(SMALL, num_hidden_layers=3)
    variables = jax.jit(BertForPreTraining(cfg).init)(jax.random.key(0),
                                                     *model.example_inputs(8))
    return jax.tree.map(np.asarray, nn.unbox(variables["params"]))


def _legacy(params):
    """The old layout: encoder/layer_0 ... layer_{L-1}."""
    return params | {"bert": params["bert"] | {
        "encoder": model.unstack_layers(params["bert"]["encoder"])}}


def test_legacy_export_loads_stacked(params, tmp_path):
    legacy = _legacy(params)
    assert sorted(legacy["bert"]["encoder"]) == ["layer_0", "layer_1", "layer_2"]
    checkpoint.save_params(str(tmp_path), SMALL, legacy)
    loaded = checkpoint.load_params(str(tmp_path))
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_legacy_train_checkpoint_is_refused(params, tmp_path):
    ckpt_config = ml_collections.ConfigDict({"every": 1, "keep": 2, "async_save": False})
    data = grain.MapDataset.range(4).to_iter_dataset()
    rng = jax.random.key(0)
    saver = checkpoint.TrainCheckpointer(str(tmp_path), ckpt_config)
    old = state_lib.TrainState(step=np.int32(1), params=_legacy(params),
                               opt_state={"count": np.zeros((), np.int32)},
                               nonfinite_run=np.int32(0))
    saver.save(1, old, rng, iter(data), force=True)
    saver.close()
    new = old.replace(params=params)
    resumer = checkpoint.TrainCheckpointer(str(tmp_path), ckpt_config)
    with pytest.raises(UserError, match=r"encoder/layer_0.*stacked \(encoder/layers\)") as e:
        resumer.restore(new, rng, iter(data))
    assert "\n" not in str(e.value)
    resumer.close()
