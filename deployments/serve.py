"""Serve the flows without a work pool: one long-running process that runs scheduled and UI runs.

    python -m deployments.serve --pool-index s3://bucket/index/ --store s3://bucket/curation \
        --pool-name web --cron "0 3 * * *"

This is Prefect's ``serve`` (the process must keep running); ``prefect.yaml`` is the work-pool
alternative for several machines. Both need a Prefect API (``prefect server start``).
"""

from __future__ import annotations

import argparse

from prefect import serve
from tasks.common.prefect_settings import use_project_settings

from flows.demo import demo
from flows.pool_refresh import pool_refresh


def main(argv: list[str] | None = None) -> None:
    use_project_settings()  # prefect.toml, also when started from another folder
    parser = argparse.ArgumentParser(description="Serve pool_refresh (on a cron schedule) and demo.")
    parser.add_argument("--pool-index", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--pool-name", default="web")
    parser.add_argument("--cron", default="0 3 * * *", help="pool refresh schedule (UTC); '' for none")
    args = parser.parse_args(argv)
    refresh = pool_refresh.to_deployment(
        name="pool-refresh-served", cron=args.cron or None,
        parameters={"pool_index": args.pool_index, "store": args.store, "pool_name": args.pool_name})
    serve(refresh, demo.to_deployment(name="demo-served"))


if __name__ == "__main__":
    main()
