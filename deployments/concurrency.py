"""Tag concurrency limits on the heavy tasks, created (or updated) idempotently on the Prefect server.

    python -m deployments.concurrency                       # the defaults below
    python -m deployments.concurrency --limit embedding=8   # change one

The heavy @tasks carry a tag (tasks/embed: ``embedding``, per shard; tasks/cluster: ``clustering``,
per tree; tasks/train: ``training``, per model). Prefect lets at most ``limit`` task runs of a tag run
at once across every flow run on the server; the others wait in ``Pending`` for a slot (a slot of a
run whose process died is freed when its 60 s lease lapses). So a cron run and a UI run on the same
workers queue their heavy stages instead of oversubscribing the machines. ``make deploy`` runs this.
Without a limit for a tag (a bare test server, the embedded default) the tag limits nothing.

Defaults (set them to what your workers hold):
- ``embedding``: 4 shards embedding at once (one per GPU or per 8 CPU cores);
- ``clustering``: 1 tree at a time (a tree's k-means already uses the whole Dask cluster);
- ``training``: 1 model at a time (one training uses every GPU of the machine).
"""

from __future__ import annotations

import argparse

DEFAULT_LIMITS = {"embedding": 4, "clustering": 1, "training": 1}


def apply_limits(limits: dict[str, int]) -> dict[str, int]:
    """Create or update one tag concurrency limit per entry on the current Prefect API; returns them."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for tag, limit in limits.items():
            client.create_concurrency_limit(tag=tag, concurrency_limit=limit)  # an upsert by tag
    return limits


def parse_limits(pairs: list[str]) -> dict[str, int]:
    """``["embedding=8"]`` over :data:`DEFAULT_LIMITS`; a bad pair is an error naming it."""
    limits = dict(DEFAULT_LIMITS)
    for pair in pairs:
        tag, _, value = pair.partition("=")
        if not tag or not value.isdigit() or int(value) < 1:
            raise SystemExit(f"--limit {pair!r}: expected TAG=N with N >= 1, e.g. embedding=8")
        limits[tag] = int(value)
    return limits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Create the tag concurrency limits of the heavy tasks.")
    parser.add_argument("--limit", action="append", default=[], metavar="TAG=N",
                        help=f"override a default ({', '.join(f'{k}={v}' for k, v in DEFAULT_LIMITS.items())})")
    limits = apply_limits(parse_limits(parser.parse_args(argv).limit))
    print("concurrency limits: " + ", ".join(f"{tag}={limit}" for tag, limit in limits.items()))


if __name__ == "__main__":
    main()
