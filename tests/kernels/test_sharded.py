"""Vocabulary split over a mesh axis: partial log-sum-exps combine to the unsharded answer."""
import functools

import chex
import jax
import pytest
from jax.sharding import AxisType

from alignx_jax import kernels


def _mesh(data, tensor):
    return jax.make_mesh((data, tensor), ("data", "tensor"), axis_types=(AxisType.Auto, AxisType.Auto))


@pytest.mark.parametrize("data, tensor, token_axis", [(1, 4, None), (2, 2, "data")])
def test_vocab_sharded_matches_naive(data, tensor, token_axis, make_problem, value_and_grads):
    problem = make_problem(36, 16, 96)
    sharded = functools.partial(
        kernels.sharded_token_logprobs,
        mesh=_mesh(data, tensor),
        vocab_axis="tensor",
        token_axis=token_axis,
        impl="xla",
        block_tokens=8,
        block_vocab=20,  # does not divide the 24 columns of a shard
    )
    got = value_and_grads(sharded, problem)
    chex.assert_trees_all_close(got, value_and_grads(kernels.naive_token_logprobs, problem), atol=1e-5, rtol=1e-5)


def test_vocab_that_does_not_split_evenly_is_refused(make_problem):
    problem = make_problem(8, 8, 30)
    with pytest.raises(ValueError, match="V=30 does not split evenly over 4 'tensor' shards"):
        kernels.sharded_token_logprobs(problem["hidden"], problem["w"], problem["labels"], mesh=_mesh(1, 4), vocab_axis="tensor")


def test_unknown_axis_is_refused(make_problem):
    problem = make_problem(8, 8, 32)
    with pytest.raises(ValueError, match="vocab_axis 'model' is not an axis"):
        kernels.sharded_token_logprobs(problem["hidden"], problem["w"], problem["labels"], mesh=_mesh(1, 4), vocab_axis="model")
