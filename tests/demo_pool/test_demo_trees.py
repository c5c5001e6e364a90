"""The demo's two tree configurations, from the default pool down to pools the filters nearly emptied."""

import pytest

from tasks.cluster.run import ClusterConfig
from tasks.common.errors import InputError
from tasks.demo_pool.task import demo_trees


def levels(config: dict) -> list[int]:
    return [level if isinstance(level, int) else level["k"] for level in config["levels"]]


def test_default_pool_gets_the_papers_recipe_scaled_down():
    trees = demo_trees(15_633)
    assert levels(trees["1 level"]) == [100]
    assert levels(trees["4 levels, resampling"]) == [1000, 400, 200, 100]


@pytest.mark.parametrize("kept", [2, 3, 7, 40, 41, 150, 1999])
def test_small_pools_get_strictly_decreasing_levels_that_the_clustering_accepts(kept):
    for config in demo_trees(kept).values():
        ks = levels(config)
        assert ks == sorted(set(ks), reverse=True) and ks[0] <= kept and ks[-1] >= 2
        ClusterConfig.from_dict(config)  # the clustering stage's own check of the levels
    assert levels(demo_trees(kept)["1 level"])[-1] == levels(demo_trees(kept)["4 levels, resampling"])[-1]


@pytest.mark.parametrize("kept", [0, 1])
def test_too_few_kept_samples_are_said_plainly(kept):
    with pytest.raises(InputError, match=f"the filters kept {kept} "):
        demo_trees(kept)
