"""The loop's input feed: each call's batches on the devices in order, the next call's put
while the current one runs, and the checkpointed data position that of the calls trained."""

import json

import jax
import ml_collections
import numpy as np

from flax_bert.trainer import feed as feed_lib, sharding
from tests.unit.test_train_step import DATA_PARALLEL, make_batch, make_step


class ListIterator:
    """A data iterator over a list, with grain's get_state / set_state."""

    def __init__(self, batches):
        self.batches, self.index = batches, 0

    def __next__(self):
        self.index += 1
        return self.batches[self.index - 1]

    def get_state(self):
        return {"next_index": self.index}


def mesh():
    return sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))


def test_feed_hands_out_calls_in_order_and_saves_the_trained_position():
    batches = [{"x": np.full((16, 3), i, np.int32)} for i in range(6)]
    feed = feed_lib.DeviceFeed(ListIterator(batches), [2, 3, 1], mesh())
    handed_out = 0
    for size, call in feed:
        expected = np.stack([b["x"] for b in batches[handed_out:handed_out + size]])
        assert call["x"].shape == (size, 16, 3)
        np.testing.assert_array_equal(np.asarray(call["x"]), expected)
        handed_out += size
        feed.prefetch()  # the next call is read from the iterator ...
        assert feed.data_iter.index == min(handed_out + {2: 3, 5: 1, 6: 0}[handed_out], 6)
        # ... but a checkpoint taken now resumes after the calls handed out.
        assert json.loads(feed.get_state()) == {"next_index": handed_out}
    assert handed_out == 6 and next(feed, None) is None


def test_prefetch_trains_the_same_params_bitwise():
    """The same run with and without prefetch (one compiled step for both: the
    data-parallel run's of test_train_step, a step a call)."""
    m, state, shardings, step = make_step(DATA_PARALLEL)
    initial = jax.device_get(state)
    rng = np.random.default_rng(0)
    batches = [make_batch(rng, 16) for _ in range(6)]
    sizes = [1] * 6

    it, plain = ListIterator(batches), jax.device_put(initial, shardings)
    for size in sizes:
        local = feed_lib.stack_batches([next(it) for _ in range(size)])
        plain, _ = step(plain, feed_lib.global_batch(local, m, stacked=True), jax.random.PRNGKey(1))
    feed, fed = feed_lib.DeviceFeed(ListIterator(batches), sizes, m), jax.device_put(initial, shardings)
    for _, call in feed:
        fed, _ = step(fed, call, jax.random.PRNGKey(1))
        feed.prefetch()

    plain, fed = jax.device_get(plain.params), jax.device_get(fed.params)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(fed)):
        np.testing.assert_array_equal(a, b)
    # and the runs trained: not a comparison of two initial states
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(initial.params),
                                                         jax.tree.leaves(plain)))
