"""DataComp's baselines as recipe steps: the rules on hand-checked cases, then subsets made from a small
filtered pool (scores, reasons, captions, a tree and target embeddings written through the catalog)."""

import json

import numpy as np
import pandas as pd
import pytest

from tasks.cluster.hierarchical import ClusterLevel
from tasks.cluster.tree import StoreCheckpoints
from tasks.common.catalog import Catalog
from tasks.common.errors import InputError
from tasks.common.manifest import Manifest
from tasks.common.store import Store
from tasks.filters.basic import basic_decisions
from tasks.filters.config import FilterConfig
from tasks.metaclip.matching import EntryMatcher
from tasks.sample.datacomp_baselines import (BASELINES, IMAGENET1K_CLASSES, ScoreParts, allot_ties, caption_filter_mask,
                                             clip_selection, english_mask, imagenet1k_class_names, prepare_entries,
                                             target_clusters, text_matches, top_count)
from tasks.sample.run import SubsetConfig, make_subset
from tasks.sample.subset_files import uids_from_datacomp
from tests.sample.test_subset import write_pool


# ----- the rules, by hand ---------------------------------------------------------------------
def test_top_fraction_is_exact_and_ties_go_by_pool_row():
    assert top_count(10, 0.3) == 3 and top_count(117, 0.3) == 35 and top_count(100, 0.29) == 29
    scores = [np.array([0.5, 0.1, np.nan]), np.array([0.9, 0.5, 0.5])]  # pool rows 0-2, 3-5
    keep, figures = clip_selection(ScoreParts.from_arrays(scores), 0.4, None, "exact")
    # 5 finite scores, top 40% = 2: the 0.9, and of the three 0.5s the first in pool order (shard 0, row 0)
    assert [k.tolist() for k in keep] == [[True, False, False], [True, False, False]]
    assert figures == {"population": 5, "selected_in_population": 2, "at_cutoff": 3, "ties_kept": 1, "cutoff": 0.5}
    keep, _ = clip_selection(ScoreParts.from_arrays(scores), 0.6, None, "exact")  # 3: the 0.9 and two 0.5s
    assert [k.tolist() for k in keep] == [[True, False, False], [True, True, False]]
    # DataComp's code: cutoff = the (int(5 * 0.4) + 1) = 3rd largest score, every score >= it
    keep, figures = clip_selection(ScoreParts.from_arrays(scores), 0.4, None, "datacomp")
    assert figures["cutoff"] == 0.5 and sum(int(k.sum()) for k in keep) == 4
    keep, figures = clip_selection(ScoreParts.from_arrays(scores), None, 0.5, "exact")  # a threshold: >=
    assert [k.tolist() for k in keep] == [[True, False, False], [True, True, True]]
    keep, figures = clip_selection(ScoreParts.from_arrays(scores), 0.1, None, "exact")  # floor(0.5) = 0
    assert figures["cutoff"] is None and not any(k.any() for k in keep)
    scores = [np.arange(10, dtype=float)]
    keep, _ = clip_selection(ScoreParts.from_arrays(scores), 0.3, None, "exact")
    assert np.flatnonzero(keep[0]).tolist() == [7, 8, 9]


def test_ties_are_handed_to_shards_in_order():
    assert allot_ties([2, 0, 3, 4], 4) == [2, 0, 2, 0]
    assert allot_ties([1, 1], 0) == [0, 0] and allot_ties([], 3) == []


def test_english_is_the_basic_filters_language_rule_only():
    reasons = pd.Series(["", "not_english", "too_short,not_english", "too_small", None, "not_english,aspect_ratio"])
    assert english_mask(reasons).tolist() == [True, False, False, True, True, False]


def test_caption_filter_boundaries():
    texts = pd.Series(["ab cdef", "ab cde", "ab cd", "abcdefg", "a b", "", None, "  ab\tcdef  "])
    # at least 2 words and more than 5 characters (DataComp's caption_filter: words > 1, chars > 5)
    assert caption_filter_mask(texts).tolist() == [True, True, False, False, False, False, False, True]


def test_basic_rules_at_their_boundaries_are_datacomps():
    frame = pd.DataFrame({
        "text": ["one two three", "one two", "a b cd", "a b c", "one two three", "one two three",
                 "one two three", "one two three"],
        "original_width": [300, 300, 300, 300, 199, 200, 600, 601],
        "original_height": [300, 300, 300, 300, 400, 600, 200, 200]})
    decided = basic_decisions(frame, FilterConfig(english_only=False))
    # > 2 words, > 5 characters ("a b c" has 5), smaller side >= 200, aspect ratio <= 3 (600/200 passes)
    assert decided["keep_basic"].tolist() == [True, False, True, False, False, True, True, False]
    assert decided["reason_basic"].tolist() == ["", "too_few_words", "", "too_short", "too_small", "", "",
                                                "aspect_ratio"]


def test_text_matching_is_whole_words_lowercased():
    entries = prepare_entries(["cat", "great white shark", "St. Bernard", "Cat"], lowercase=True)
    assert entries == ["cat", "great white shark", "st .  bernard"]
    matcher = EntryMatcher(entries)
    texts = pd.Series(["a cat, sleeping", "concatenate", "cats", "A Great White Shark!", "my St. Bernard",
                       "tomcat", "CAT", "cat-like", None])
    assert (text_matches(matcher, texts, True).counts_per_text() > 0).tolist() == [
        True, False, False, True, True, False, True, False, False]
    cased = EntryMatcher(prepare_entries(["cat", "great white shark"], lowercase=False))
    assert (text_matches(cased, texts, False).counts_per_text() > 0).tolist() == [
        True, False, False, False, False, False, False, False, False]


def test_the_shipped_imagenet_list_is_open_clips():
    with open(IMAGENET1K_CLASSES, encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    assert lines[-1] == "" and lines[:-1] == imagenet1k_class_names() and len(lines[:-1]) == 998
    matcher = EntryMatcher(prepare_entries(lines[:-1], lowercase=True))
    texts = pd.Series(["My Tabby Cat", "a website screenshot", "tigers", "Tiger, burning bright"])
    assert (text_matches(matcher, texts, True).counts_per_text() > 0).tolist() == [True, True, False, True]


def test_target_clusters_by_the_trees_rule():
    centroids = np.array([[1, 0], [0, 1], [-1, 0], [3, 3]], dtype=np.float32)
    targets = np.array([[0.9, 0.1], [0.2, 0.8], [0.8, 0.3]], dtype=np.float32)
    assert target_clusters(targets, centroids, "l2", "t").tolist() == [True, True, False, False]
    # cosine: the row is normalised first (to about (0.72, 0.69)), which is nearest (1, 0), not (3, 3)
    far = np.array([[30.0, 29.0]], dtype=np.float32)
    assert target_clusters(far, centroids, "l2", "t").tolist() == [False, False, False, True]
    assert target_clusters(far, centroids, "cosine", "t").tolist() == [True, False, False, False]
    many = np.repeat(targets, 50, axis=0)
    assert target_clusters(many, centroids, "l2", "t", chunk_rows=7).tolist() == [True, True, False, False]
    with pytest.raises(InputError, match="t: embeddings of dimension 3, but the tree's centroids have dimension 2"):
        target_clusters(np.ones((2, 3), dtype=np.float32), centroids, "l2", "t")
    with pytest.raises(InputError, match="row 1 is not finite"):
        target_clusters(np.array([[1, 0], [np.nan, 0]], dtype=np.float32), centroids, "l2", "t")
    with pytest.raises(InputError, match="2-D float array"):
        target_clusters(np.ones((2, 2), dtype=np.int64), centroids, "l2", "t")


# ----- a filtered pool with DataComp's columns ---------------------------------------------------
CAPTIONS = ["a red circle on white", "x", "un cercle rouge", "blue square", "a green star, stock image",
            "website screenshot of a shop", "bar chart", "ok"]


def write_scored_pool(store: Store, filters_config: dict | None = None, scores: tuple = ("l14", "b32"),
                      skipped: dict | None = None) -> pd.DataFrame:
    """``write_pool``'s 117 samples with an embedding run and a filter run whose decisions carry ``text``,
    ``keep``, ``keep_basic``, ``reason_basic`` and CLIP scores (rounded to 2 decimals: ties), published through
    the catalog; returns every sample with its columns and ``row`` (pool row)."""
    catalog = Catalog(store)
    samples = write_pool(store).reset_index(drop=True)
    rng = np.random.default_rng(11)
    n = len(samples)
    samples["row"] = np.arange(n)
    samples["text"] = [CAPTIONS[i % len(CAPTIONS)] for i in range(n)]
    samples["english"] = ~samples["text"].str.startswith("un ")
    samples["keep_basic"] = samples["english"] & (rng.random(n) < 0.8)
    samples["reason_basic"] = np.where(~samples["english"], "not_english,too_small",
                                       np.where(samples["keep_basic"], "", "too_small"))
    for name in ("clip_score", "clip_l14_score", "clip_b32_score"):
        samples[name] = np.round(rng.random(n) * 0.4, 2).astype(np.float32)
    samples["keep"] = rng.random(n) < 0.85
    pool = catalog.pool("test")
    embedding_folder, filter_folder = catalog.embedding_folder("test", "emb"), catalog.filter_folder("test", "f" * 16)
    columns = ["uid", "key", "text", "keep", "keep_basic", "reason_basic", "clip_score"] + [
        f"clip_{name}_score" for name in scores]
    embedded, decisions = [], {}
    for number, shard in enumerate(pool.shards_with_samples):
        frame = samples[samples["key"].str.startswith(f"{number:04d}")]
        matrix = (np.eye(5, 8)[frame["concept"].to_numpy()] * 3 + rng.normal(size=(len(frame), 8)) * 0.1)
        record = catalog.embedded_shard(embedding_folder, shard.shard_id)
        store.write_npy(record.image_embeddings, matrix.astype(np.float16))
        store.write_npy(record.text_embeddings, matrix.astype(np.float16))
        store.write_bytes(record.parquet, frame[["uid"]].to_parquet(index=False))
        decisions[shard.shard_id] = store.write_bytes(catalog.filter_decisions(filter_folder, shard.shard_id),
                                                      frame[columns].to_parquet(index=False))
        embedded.append({**record.to_dict(), "rows": len(frame), "parquet": store.uri(record.parquet),
                         "image_embeddings": store.uri(record.image_embeddings),
                         "text_embeddings": store.uri(record.text_embeddings)})
    embeddings = catalog.publish(embedding_folder, Manifest(
        stage="embed", name="test", store=store.root, config={}, code_version="test",
        inputs={"pool_manifest": pool.content_hash}, outputs={"folder": store.uri(embedding_folder), "shards": embedded}),
        archive=True)
    filters = catalog.publish(filter_folder, Manifest(
        stage="filter", name="test", store=store.root, config={**FilterConfig().to_dict(), **(filters_config or {})},
        code_version="test", inputs={"embeddings": embeddings["content_hash"]},
        outputs={"folder": store.uri(filter_folder), "decisions": decisions}, stats={"skipped": skipped or {}}))
    catalog.set_latest_runs("test", embeddings, filters)
    return samples


def write_concept_tree(store: Store, samples: pd.DataFrame, folder: str = "clusters/test/concepts") -> dict:
    """A 2-level tree over the kept samples: level-1 clusters = the concepts (centroids at 3 * e_c), level 2
    joins concepts 0-2 and 3-4; published with the snapshot's hashes, as the clustering stage does."""
    kept = samples[samples["keep"]]
    checkpoints = StoreCheckpoints(store, folder)
    checkpoints.save_level(1, ClusterLevel(centroids=(np.eye(5, 8) * 3).astype(np.float32),
                                           labels=kept["concept"].to_numpy(),
                                           distances=np.zeros(len(kept), dtype=np.float32)))
    checkpoints.save_level(2, ClusterLevel(centroids=np.eye(2, 8, dtype=np.float32), labels=np.array([0, 0, 0, 1, 1]),
                                           distances=np.zeros(5, dtype=np.float32)))
    inputs = store.write_bytes(f"{folder}/inputs.parquet", kept[["uid"]].to_parquet(index=False))
    catalog = Catalog(store)
    return catalog.publish(folder, Manifest(
        stage="cluster", name="test", store=store.root, config={"metric": "l2"}, code_version="test",
        inputs=catalog.snapshot("test").hashes, outputs={"folder": store.uri(folder), "inputs": inputs}))


def subset(store: Store, name: str, recipe, trees: dict | None = None, client=None) -> tuple[dict, set]:
    catalog = Catalog(store)
    config = SubsetConfig.from_dict({"recipe": recipe, "reshard": False, "ngrams": {"min_unigram_count": 5}})
    manifest = make_subset(catalog, catalog.snapshot("test"), name, config, trees or {}, client=client)
    uids = set(pd.read_parquet(manifest["outputs"]["parquet"])["uid"])
    assert set(uids_from_datacomp(np.load(manifest["outputs"]["datacomp"]))) == uids  # DataComp's subset file
    return manifest, uids


def top_rows(samples: pd.DataFrame, column: str, k: int, population=None) -> set:
    """The k highest scores of the population, ties by pool row: the uids."""
    frame = samples if population is None else samples[population]
    order = np.lexsort((frame["row"].to_numpy(), -frame[column].to_numpy(dtype=np.float64)))
    return set(frame["uid"].to_numpy()[order[:k]])


@pytest.fixture
def scored(tmp_path):
    store = Store(str(tmp_path / "store"))
    samples = write_scored_pool(store)
    targets = str(tmp_path / "targets.npy")
    np.save(targets, (np.eye(5, 8)[[1, 3, 3]] * 3 + 0.2).astype(np.float32))  # nearest: clusters 1 and 3
    return store, samples, write_concept_tree(store, samples), targets


def test_named_recipes_no_filter_basic_clip_laion(scored):
    store, samples, _, _ = scored
    _, uids = subset(store, "none", "datacomp:no_filter")
    assert uids == set(samples["uid"])
    manifest, uids = subset(store, "basic", "datacomp:basic")
    assert uids == set(samples.loc[samples["keep_basic"], "uid"])
    step = manifest["stats"]["steps"][0]
    assert step["step"] == "datacomp:basic" and step["datacomp_settings"] and "langid" in step["english_rule"]
    manifest, uids = subset(store, "clip", "datacomp:clip_l14_30")
    assert len(uids) == 35 and uids == top_rows(samples, "clip_l14_score", 35)
    clip = manifest["stats"]["steps"][0]["clip"]
    assert clip["population"] == 117 and clip["column"] == "clip_l14_score"
    assert clip["cutoff"] == pytest.approx(float(np.sort(samples["clip_l14_score"])[::-1][34]))
    _, uids = subset(store, "laion", "datacomp:laion2b")
    b32 = samples["clip_b32_score"].to_numpy(dtype=np.float64)
    assert uids == set(samples.loc[(b32 >= 0.28) & samples["english"], "uid"])
    # DataComp's own tie rule: every score at or above the (35 + 1)-th largest
    _, uids = subset(store, "clip-dc", [{"step": "datacomp", "baseline": "clip_l14_30", "ties": "datacomp"}])
    cutoff = np.sort(samples["clip_l14_score"].to_numpy())[::-1][35]
    assert uids == set(samples.loc[samples["clip_l14_score"] >= cutoff, "uid"]) and len(uids) >= 36


def test_text_based(scored, tmp_path):
    store, samples, _, _ = scored
    manifest, uids = subset(store, "text", "datacomp:text_based")
    # of CAPTIONS, only "website screenshot of a shop" names an ImageNet-1k class ("website"); all are English but one
    assert uids == set(samples.loc[samples["text"] == "website screenshot of a shop", "uid"])
    step = manifest["stats"]["steps"][0]
    assert step["top_entries"] == {"website": len(uids)} and step["n_entries"] == 998
    entries = tmp_path / "entries.txt"
    entries.write_text("Star\nred circle\ncercle\n", encoding="utf-8")
    _, uids = subset(store, "text-own", [{"step": "datacomp", "baseline": "text_based", "entries": str(entries)}])
    named = samples["text"].isin(["a red circle on white", "a green star, stock image"])  # "cercle" is not English
    assert uids == set(samples.loc[named, "uid"])


def test_image_based_and_its_intersection_with_clip(scored):
    store, samples, tree, targets = scored
    caption = caption_filter_mask(samples["text"]) & samples["english"].to_numpy()
    near = samples["keep"] & samples["concept"].isin([1, 3])
    step = {"step": "datacomp", "baseline": "image_based", "targets": targets, "tree": "concepts"}
    manifest, uids = subset(store, "image", [step], {"concepts": tree})
    assert uids == set(samples.loc[near & caption, "uid"])
    figures = manifest["stats"]["steps"][0]
    assert figures["image"]["target_clusters"] == 2 and figures["image"]["k"] == 5
    assert figures["image"]["candidates_outside_tree"] == int((~samples["keep"]).sum())
    assert manifest["inputs"]["files"][targets]  # the targets' sha256 is part of the subset's key
    both = {**step, "baseline": "image_based_clip_l14_30"}
    manifest, uids = subset(store, "both", [both], {"concepts": tree})
    top = top_rows(samples, "clip_l14_score", 35)  # 30% of the whole pool, not of the image-based survivors
    assert uids == set(samples.loc[near & caption, "uid"]) & top and manifest["stats"]["steps"][0]["clip"][
        "population"] == 117


def test_chains_with_the_projects_steps(scored):
    store, samples, tree, targets = scored
    manifest, uids = subset(store, "chain-hk", [
        {"step": "datacomp", "baseline": "clip_l14_30"}, {"step": "hkmeans", "target": 10, "tree": "concepts"}],
        {"concepts": tree})
    assert len(uids) == 10 and uids <= top_rows(samples, "clip_l14_score", 35) & set(samples.loc[samples["keep"], "uid"])
    report = json.loads(open(manifest["outputs"]["indicators"]).read())
    assert [stage["after"] for stage in report["stages"]] == ["pool", "1. datacomp:clip_l14_30", "2. hkmeans"]
    # over the candidates: 30% of what the random step left
    _, uids = subset(store, "chain-rand", [{"step": "random", "target": 60, "seed": 1},
                                           {"step": "datacomp", "baseline": "clip_l14_30", "over": "candidates"}])
    _, drawn = subset(store, "rand", [{"step": "random", "target": 60, "seed": 1}])
    assert len(uids) == 18 and uids == top_rows(samples, "clip_l14_score", 18, samples["uid"].isin(drawn))
    # filters, then MetaCLIP's matched captions, then LAION-2B's rule
    manifest, uids = subset(store, "chain-meta", [{"step": "filters"}, {"step": "metaclip", "matched_only": True},
                                                  {"step": "datacomp", "baseline": "laion2b"}])
    laion = samples["keep"] & samples["english"] & (samples["clip_b32_score"] >= 0.28)
    assert uids and uids <= set(samples.loc[laion, "uid"])
    assert [s["step"] for s in manifest["stats"]["steps"]] == ["filters", "metaclip", "datacomp:laion2b"]


def test_a_dask_run_gives_the_same_baseline(scored):
    from distributed import Client, LocalCluster

    store, _, tree, targets = scored
    recipe = [{"step": "datacomp", "baseline": "image_based_clip_l14_30", "targets": targets, "tree": "concepts"},
              {"step": "datacomp", "baseline": "clip_score", "score": "pool", "fraction": 0.5, "over": "candidates"}]
    local, uids = subset(store, "local", recipe, {"concepts": tree})
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        remote, remote_uids = subset(store, "remote", recipe, {"concepts": tree}, client=client)
    assert uids == remote_uids and local["stats"]["steps"] == remote["stats"]["steps"]


def test_bad_settings(scored, tmp_path):
    store, samples, tree, targets = scored
    with pytest.raises(InputError, match="expected one of no_filter, basic, clip_score"):
        SubsetConfig.from_dict([{"step": "datacomp", "baseline": "clip_l14_31"}])
    with pytest.raises(InputError, match="datacomp:no_filter, datacomp:basic"):
        SubsetConfig.from_dict("datacomp:best")
    with pytest.raises(InputError, match="need a file of target embeddings"):
        SubsetConfig.from_dict("datacomp:image_based")
    with pytest.raises(InputError, match="score='l13'; expected one of l14, b32, pool"):
        SubsetConfig.from_dict([{"step": "datacomp", "baseline": "clip_l14_30", "score": "l13"}])
    with pytest.raises(InputError, match="exactly one of fraction or threshold"):
        SubsetConfig.from_dict([{"step": "datacomp", "baseline": "clip_l14_30", "threshold": 0.3}])
    with pytest.raises(InputError, match="fraction=1.5 must be in"):
        SubsetConfig.from_dict([{"step": "datacomp", "baseline": "clip_score", "fraction": 1.5}])
    with pytest.raises(InputError, match=r"unknown setting\(s\) \['target'\]"):
        SubsetConfig.from_dict([{"step": "datacomp", "baseline": "basic", "target": 3}])
    with pytest.raises(InputError, match="targets=None"):
        SubsetConfig.from_dict([{"step": "datacomp", "baseline": "image_based"}])
    assert set(BASELINES) >= {"no_filter", "basic", "clip_l14_30", "laion2b", "text_based", "image_based",
                              "image_based_clip_l14_30"}
    wrong = str(tmp_path / "wrong.npy")
    np.save(wrong, np.ones((3, 4), dtype=np.float32))
    with pytest.raises(InputError, match=f"targets file {wrong}: embeddings of dimension 4"):
        subset(store, "dims", [{"step": "datacomp", "baseline": "image_based", "targets": wrong, "tree": "concepts"}],
               {"concepts": tree})
    with pytest.raises(InputError, match="missing.npy cannot be read"):
        subset(store, "gone", [{"step": "datacomp", "baseline": "image_based", "targets": str(tmp_path / "missing.npy"),
                                "tree": "concepts"}], {"concepts": tree})


def test_pool_without_datacomp_scores_or_datacomp_settings(tmp_path):
    store = Store(str(tmp_path / "store"))
    samples = write_scored_pool(store, {"min_image_side": 48}, scores=())
    with pytest.raises(InputError, match="no column 'clip_l14_score'.*score='pool'"):
        subset(store, "l14", "datacomp:clip_l14_30")
    with pytest.raises(InputError, match="no column 'clip_b32_score'"):
        subset(store, "laion", "datacomp:laion2b")
    _, uids = subset(store, "own", [{"step": "datacomp", "baseline": "clip_l14_30", "score": "pool"}])
    assert uids == top_rows(samples, "clip_score", 35)
    with pytest.raises(InputError, match="min_image_side=48, DataComp's basic filtering has min_image_side=200"):
        subset(store, "basic", "datacomp:basic")
    manifest, uids = subset(store, "basic-loose", [{"step": "datacomp", "baseline": "basic", "strict": False}])
    step = manifest["stats"]["steps"][0]
    assert uids == set(samples.loc[samples["keep_basic"], "uid"])
    assert step["basic_settings"]["min_image_side"] == 48 and step["datacomp_settings"] is False
    other = Store(str(tmp_path / "other"))
    write_scored_pool(other, {"english_only": False})
    with pytest.raises(InputError, match="english_only=false"):
        subset(other, "text", "datacomp:text_based")
    sizes = Store(str(tmp_path / "sizes"))
    write_scored_pool(sizes, skipped={"basic_size_rules": "too_small and aspect_ratio not checked for 5 of 117"})
    with pytest.raises(InputError, match="not checked for 5 of 117, which DataComp's basic filtering removes"):
        subset(sizes, "basic", "datacomp:basic")
    step = subset(sizes, "loose", [{"step": "datacomp", "baseline": "basic", "strict": False}])[0]["stats"]["steps"][0]
    assert step["basic_size_rules_skipped"] and step["datacomp_settings"] is False
    raw = Store(str(tmp_path / "raw"))
    write_pool(raw)
    with pytest.raises(InputError, match="has not been filtered"):
        subset(raw, "raw", "datacomp:clip_l14_30")
    _, uids = subset(raw, "raw-all", "datacomp:no_filter")
    assert len(uids) == 117
