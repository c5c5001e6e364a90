"""Benchmark: MetaCLIP entry matching, ours against the naive loop and a plain pyahocorasick loop.

    python benchmarks/matching.py [--captions 100000] [--naive-captions 200] [--batches 8] [--repeats 3]

Metadata: every lemma of WordNet 3.0 (``wordnet_entries(all_lemmas=True)``, 148,730 entries;
the head lemmas alone are 87,379). Captions: a synthetic, reproducible corpus of 8 to 20 words
each: function words, WordNet lemmas drawn with Zipf's law over their rank in WordNet's own
sense-tagged counts (``cntlist.rev``; multi-word lemmas included), random capitalisation, and
punctuation attached as on the web ("dog,", "art!", "#tag").

1. ``naive``: :func:`match_naive` (one substring test per entry) on ``--naive-captions`` captions.
2. ``pyahocorasick_loop``: what a user would write: an automaton of ``" entry "`` patterns, then
   for every caption ``normalise``, ``automaton.iter`` and a set of ids.
3. ``ours``: ``EntryMatcher.match`` on the whole corpus (batched, one automaton pass per batch).
   Results of 2 and 3 must be identical on the corpus, and 1 and 3 on its subset.
4. Dask: the corpus in ``--batches`` batches matched on a local cluster of 1 and of 2
   single-threaded worker processes; the matcher and the batches are scattered before timing,
   so the time is the matching and the return of the results, not the cluster's start.

Timings are medians of ``--repeats`` runs (automaton builds excluded from all). Throughput is
captions per second. The figures go to ``benchmarks/results/matching.json`` as well, and the
last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.metaclip.matching import EntryMatcher, Matches, match_naive, normalise  # noqa: E402
from tasks.metaclip.metadata import DEFAULT_WORDNET_DIR, wordnet_entries  # noqa: E402
from timing import median_seconds  # noqa: E402 - benchmarks/timing.py, next to this script

RESULTS = Path(__file__).resolve().parent / "results" / "matching.json"
FUNCTION_WORDS = ("a", "the", "of", "in", "on", "with", "and", "for", "at", "my", "this", "is", "to", "an",
                  "new", "best", "free", "photo", "image", "by", "from", "your", "our", "2021", "HD", "-", "|", "&")
ATTACHED = (",", ".", "!", ":", "?", ";", "...", ")", "'s")


def popularity_order(entries: list[str], wordnet_dir: str, rng: np.random.Generator) -> np.ndarray:
    """Entry ids, most used first: by WordNet's sense-tagged corpus counts (``cntlist.rev``), then
    the lemmas it never saw in a random order."""
    counts: dict[str, int] = {}
    path = Path(wordnet_dir) / "cntlist.rev"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            key, _, count = line.split(" ")
            lemma = key.split("%")[0].replace("_", " ")
            counts[lemma] = counts.get(lemma, 0) + int(count)
    seen = np.array([counts.get(entry, 0) for entry in entries], dtype=np.int64)
    noise = rng.random(len(entries))
    return np.lexsort((noise, -seen))


def caption_corpus(entries: list[str], n: int, seed: int, wordnet_dir: str = DEFAULT_WORDNET_DIR) -> list[str]:
    rng = np.random.default_rng(seed)
    popularity = popularity_order(entries, wordnet_dir, rng)
    weights = 1.0 / (1.0 + np.arange(len(entries)))
    lengths = rng.integers(8, 21, n)
    total = int(lengths.sum())
    lemma_ids = popularity[rng.choice(len(entries), size=total, p=weights / weights.sum())]
    function_ids = rng.integers(0, len(FUNCTION_WORDS), total)
    is_function = rng.random(total) < 0.4
    attach = rng.random(total)
    attached = rng.integers(0, len(ATTACHED), total)
    case = rng.random(total)
    captions, position = [], 0
    for length in lengths.tolist():
        words = []
        for k in range(position, position + length):
            word = FUNCTION_WORDS[function_ids[k]] if is_function[k] else entries[lemma_ids[k]]
            if case[k] < 0.05:
                word = word.title()
            elif case[k] < 0.07:
                word = word.upper()
            if attach[k] < 0.12:
                word += ATTACHED[attached[k]]
            elif attach[k] < 0.14:
                word = "#" + word.replace(" ", "")
            elif attach[k] < 0.15:
                word = f'"{word}"'
            words.append(word)
        position += length
        captions.append(" ".join(words))
    return captions


def plain_automaton(entries: list[str]):
    import ahocorasick

    automaton = ahocorasick.Automaton()
    for entry_id, entry in enumerate(entries):
        automaton.add_word(f" {entry} ", entry_id)
    automaton.make_automaton()
    return automaton


def plain_loop(automaton, captions: list[str]) -> list[set[int]]:
    return [{entry_id for _, entry_id in automaton.iter(normalise(caption))} for caption in captions]


def _match_batch(matcher: EntryMatcher, batch: list[str]) -> Matches:
    return matcher.match(batch)


def dask_seconds(matcher: EntryMatcher, captions: list[str], workers: int, batches: int,
                 repeats: int) -> tuple[float, Matches]:
    from distributed import Client, LocalCluster, wait

    size = -(-len(captions) // batches)
    parts = [captions[start:start + size] for start in range(0, len(captions), size)]
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.WARNING) as cluster, Client(cluster) as client:
        matcher_future = client.scatter(matcher, broadcast=True)
        part_futures = client.scatter(parts)
        wait(part_futures)

        holders = client.who_has(part_futures)

        def run() -> Matches:
            # each batch runs where it was scattered: work stealing would copy batches between workers
            futures = [client.submit(_match_batch, matcher_future, part, pure=False, workers=list(holders[part.key]),
                                     allow_other_workers=False) for part in part_futures]
            return Matches.concatenate(client.gather(futures))

        run()  # warm-up: every worker unpickles the matcher (rebuilding its automaton) once
        return median_seconds(run, repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=100_000)
    parser.add_argument("--naive-captions", type=int, default=200)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-dask", action="store_true")
    args = parser.parse_args(argv)

    entries = wordnet_entries(all_lemmas=True)
    captions = caption_corpus(entries, args.captions, args.seed)
    subset = captions[:args.naive_captions]

    started = time.perf_counter()
    matcher = EntryMatcher(entries)
    ours_build = time.perf_counter() - started
    started = time.perf_counter()
    automaton = plain_automaton(entries)
    plain_build = time.perf_counter() - started

    naive_s, naive = median_seconds(lambda: match_naive(subset, entries), args.repeats)
    plain_s, plain = median_seconds(lambda: plain_loop(automaton, captions), args.repeats)
    ours_s, ours = median_seconds(lambda: matcher.match(captions), args.repeats)
    assert ours.as_sets() == plain, "EntryMatcher and the plain pyahocorasick loop disagree"
    assert ours.take(np.arange(len(subset))) == naive, "EntryMatcher and match_naive disagree"

    per_s = {"naive": len(subset) / naive_s, "pyahocorasick_loop": len(captions) / plain_s,
             "ours": len(captions) / ours_s}
    print(f"{len(entries)} entries, {len(captions)} captions, {ours.counts_per_text().mean():.1f} matches per "
          f"caption; automaton build: ours {ours_build:.2f} s, plain {plain_build:.2f} s")
    print("captions per second: " + ", ".join(f"{name} {value:,.0f}" for name, value in per_s.items()))
    figures = {"benchmark": "matching", "entries": len(entries), "captions": len(captions),
               "naive_captions": len(subset), "repeats": args.repeats,
               "mean_matches_per_caption": round(float(ours.counts_per_text().mean()), 2),
               "naive_captions_per_s": round(per_s["naive"], 1),
               "pyahocorasick_loop_captions_per_s": round(per_s["pyahocorasick_loop"]),
               "ours_captions_per_s": round(per_s["ours"]),
               "matching_ratio_vs_pyahocorasick": round(per_s["ours"] / per_s["pyahocorasick_loop"], 3),
               "matching_ratio_vs_naive": round(per_s["ours"] / per_s["naive"], 1),
               "automaton_build_seconds": round(ours_build, 2)}
    if not args.no_dask:
        one_s, one = dask_seconds(matcher, captions, 1, args.batches, args.repeats)
        two_s, two = dask_seconds(matcher, captions, 2, args.batches, args.repeats)
        assert one == ours and two == ours, "Dask batches disagree with one EntryMatcher.match"
        print(f"Dask, {args.batches} batches: 1 worker {one_s:.2f} s, 2 workers {two_s:.2f} s")
        figures.update({"dask_batches": args.batches, "dask_1_worker_seconds": round(one_s, 3),
                        "dask_2_workers_seconds": round(two_s, 3),
                        "dask_2_workers_captions_per_s": round(len(captions) / two_s),
                        "dask_speedup_1_to_2_workers": round(one_s / two_s, 3)})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures) + "\n")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
