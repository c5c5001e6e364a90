"""The demo pool generator: deterministic, long-tailed, and its truth file matches what it planted."""

import hashlib
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.common.errors import InputError
from tasks.demo_pool.captions import UNSAFE_TERMS
from tasks.demo_pool.concepts import CONCEPTS
from tasks.demo_pool.generate import DemoPoolConfig, generate_demo_pool, plan_pool, pool_index_for
from tests_support import SMALL_POOL


def _digest_tree(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "generated.json"}


def test_same_seed_gives_identical_bytes(tmp_path, small_web):
    again = tmp_path / "again"
    generate_demo_pool(SMALL_POOL, again)
    assert _digest_tree(again) == _digest_tree(small_web)


def test_rendering_on_a_dask_cluster_gives_the_same_bytes(tmp_path):
    from tasks.common.dask_cluster import dask_client

    config = DemoPoolConfig(n_samples=600, seed=5, n_concepts=10, min_per_concept=20)
    generate_demo_pool(config, tmp_path / "serial")
    with dask_client(n_workers=2, gpu=False) as client:
        generate_demo_pool(config, tmp_path / "parallel", client=client)
    assert _digest_tree(tmp_path / "serial") == _digest_tree(tmp_path / "parallel")


def test_other_seed_gives_other_pool(tmp_path, small_truth):
    other = tmp_path / "other"
    generate_demo_pool(DemoPoolConfig(**{**SMALL_POOL.__dict__, "seed": 12}), other)
    assert not set(pd.read_parquet(other / "truth.parquet")["uid"]) & set(small_truth["uid"])


def test_complete_web_root_is_not_regenerated(small_web):
    before = (small_web / "generated.json").stat().st_mtime_ns
    generate_demo_pool(SMALL_POOL, small_web)
    assert (small_web / "generated.json").stat().st_mtime_ns == before


def test_long_tail_over_concepts():
    plan = plan_pool(DemoPoolConfig())
    counts = plan["concept_id"].value_counts()
    assert len(counts) == 100 and len(plan) == 20_000
    assert counts.iloc[0] > 30 * counts.iloc[-1]          # a few concepts dominate
    assert (counts < 60).sum() >= 30                       # many are rare
    assert set(counts.index[:4]) == {0, 1, 2, 3}           # the web concepts head the tail


def test_truth_matches_planted_defects(small_web, small_truth):
    index = pd.read_parquet(small_web / "pool.parquet").set_index("uid")
    truth = small_truth.set_index("uid")
    routes = json.loads((small_web / "routes.json").read_text())
    files = small_web / "files"
    config = SMALL_POOL
    n = config.n_samples
    assert len(truth) == n and truth.index.is_unique and (index.index == truth.index).all()
    for failure in ("http_404", "timeout", "truncated", "not_an_image"):
        assert (truth["url_failure"] == failure).sum() == round(n * getattr(config, f"{failure}_rate"))
    kind_of = {path: kind for path, (kind, _) in routes.items()}
    expected_kind = truth["url_failure"].replace("", "file")
    assert [kind_of[p] for p in index["path"]] == expected_kind.tolist()

    exact = truth[truth["dup_kind"] == "exact"]
    assert len(exact) == round(n * config.exact_dup_rate)
    assert (index.loc[exact.index, "sha256"].to_numpy() == index.loc[exact["dup_of"], "sha256"].to_numpy()).all()
    near = truth[truth["dup_kind"].isin(["reencode", "resize", "crop"])]
    assert len(near) == round(n * config.near_dup_rate)
    assert (index.loc[near.index, "sha256"].to_numpy() != index.loc[near["dup_of"], "sha256"].to_numpy()).all()
    assert (truth.loc[near.index, "concept_id"].to_numpy() == truth.loc[near["dup_of"], "concept_id"].to_numpy()).all()

    unsafe_word = re.compile(r"\b(" + "|".join(re.escape(t) for t in UNSAFE_TERMS) + r")\b", re.I)
    has_term = index["text"].str.contains(unsafe_word)
    assert (has_term == truth["unsafe_caption"]).all()
    assert truth["unsafe_caption"].sum() > 0

    served = truth[truth["url_failure"].isin(["", "truncated"])]
    for uid, row in served.iterrows():
        kind, name = routes[index.loc[uid, "path"]]
        data = (files / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == index.loc[uid, "sha256"]
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == (row["width"], row["height"])
    small = truth[truth["too_small"]]
    assert len(small) and (np.minimum(small["width"], small["height"]) <= 40).all()
    extreme = truth[truth["extreme_aspect"]]
    ratio = np.maximum(extreme["width"], extreme["height"]) / np.minimum(extreme["width"], extreme["height"])
    assert len(extreme) and (ratio >= 3).all()
    normal = truth[~truth["too_small"] & ~truth["extreme_aspect"]]
    normal_ratio = np.maximum(normal["width"], normal["height"]) / np.minimum(normal["width"], normal["height"])
    assert (normal_ratio < 1.5).all() and (np.minimum(normal["width"], normal["height"]) >= 50).all()


def test_captions_name_the_concept_unless_junk_or_foreign(small_web, small_truth):
    index = pd.read_parquet(small_web / "pool.parquet").set_index("uid")
    truth = small_truth.set_index("uid")
    named = truth[truth["caption_kind"].isin(["named", "mismatched"])]
    for uid, row in named.iterrows():
        concept = CONCEPTS[row["caption_concept_id"]]
        text = index.loc[uid, "text"].lower()
        words = set(re.findall(r"[a-z-]+", text))
        if concept.kind == "shape":
            assert any(w in text for w in ("circle", "disc", "dot", "square", "box", "tile", "triangle", "three",
                                            "star", "hexagon", "six", "cross", "plus", "ring", "donut", "hoop",
                                            "diamond", "rhombus", "lozenge", "heart", "crescent", "moon", "arrow",
                                            "pentagon", "five")) or words, uid
    junk = truth[truth["caption_kind"] == "junk"]
    assert len(junk) and (junk["caption_concept_id"] == -1).all()
    mismatched = truth[truth["caption_kind"] == "mismatched"]
    assert len(mismatched) and (mismatched["caption_concept_id"] != mismatched["concept_id"]).all()


def test_index_has_datacomp_columns(small_web):
    index = pool_index_for(small_web, "http://127.0.0.1:9")
    assert list(index.columns) == ["uid", "url", "text", "original_width", "original_height", "sha256"]
    assert index["url"].str.startswith("http://127.0.0.1:9/").all()
    assert index["uid"].str.fullmatch(r"[0-9a-f]{32}").all()


@pytest.mark.parametrize("field,value", [("n_samples", 10), ("n_concepts", 101), ("http_404_rate", 0.7),
                                          ("min_per_concept", 1000)])
def test_bad_config_names_the_parameter(field, value):
    with pytest.raises(InputError, match=field):
        plan_pool(DemoPoolConfig(**{field: value}))


def test_duplicates_that_repeat_a_caption_repeat_its_truth(small_web, small_truth):
    index = pd.read_parquet(small_web / "pool.parquet").set_index("uid")
    truth = small_truth.set_index("uid")
    dups = truth[(truth["dup_kind"] != "") & ~truth["unsafe_caption"]]
    same = dups[index.loc[dups.index, "text"].to_numpy() == index.loc[dups["dup_of"], "text"].to_numpy()]
    assert len(same) > 5
    sources = truth.loc[same["dup_of"]]
    assert (same["caption_kind"].to_numpy() == sources["caption_kind"].to_numpy()).all()
    assert (same["caption_concept_id"].to_numpy() == sources["caption_concept_id"].to_numpy()).all()


def test_leaked_evaluation_images_are_copies_of_them(small_web, small_truth, tmp_path):
    from tasks.demo_pool.eval_sets import classification_image

    index = pd.read_parquet(small_web / "pool.parquet").set_index("uid")
    routes = json.loads((small_web / "routes.json").read_text())
    leaks = small_truth[small_truth["eval_leak"]]
    assert len(leaks) == round(SMALL_POOL.n_samples * SMALL_POOL.eval_leak_rate) > 0
    assert set(leaks["eval_leak_kind"]) <= {"exact", "reencode"}
    for _, row in leaks.iterrows():
        concept_id, image = map(int, row["eval_leak_image"].split(":"))
        assert concept_id == row["concept_id"]
        original = classification_image(SMALL_POOL.seed, concept_id, image)
        served = (small_web / "files" / routes[index.loc[row["uid"], "path"]][1]).read_bytes()
        assert (served == original) == (row["eval_leak_kind"] == "exact")
        with Image.open(io.BytesIO(served)) as a, Image.open(io.BytesIO(original)) as b:
            assert a.size == b.size == (row["width"], row["height"])
