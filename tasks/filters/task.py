"""Prefect tasks of the filtering stage: thin wrappers over :mod:`tasks.filters.run`."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.common.prefect_support import RETRY_DELAYS, retry_unless_input_error, store_from
from tasks.filters.config import FilterConfig
from tasks.filters.run import poolwide_filters, rowwise_filters


@task(name="rowwise_filters", retries=2, retry_delay_seconds=RETRY_DELAYS[:2],
      retry_condition_fn=retry_unless_input_error)
def rowwise_filters_task(store: str, embed_parquet: str, config: dict, out_folder: str,
                         eval_embeddings: str | None = None, storage_options: dict | None = None) -> str:
    return rowwise_filters(store_from(store, storage_options), embed_parquet, FilterConfig.from_dict(config),
                           out_folder, eval_embeddings)


@task(name="poolwide_filters", retries=1, retry_delay_seconds=RETRY_DELAYS[:1],
      retry_condition_fn=retry_unless_input_error)
def poolwide_filters_task(store: str, rows_files: list[str], config: dict, out_folder: str, pool_name: str,
                          storage_options: dict | None = None, embeddings_folder: str = "") -> dict:
    the_store = store_from(store, storage_options)
    report = poolwide_filters(the_store, rows_files, FilterConfig.from_dict(config), out_folder, embeddings_folder)
    logger = get_run_logger()
    for name, why in report["skipped"].items():
        logger.warning("filter %s skipped: %s", name, why)
    rows = [{"filter": name, "removed": report["removed_by"][name], "removed_only_by_it": report["removed_only_by"][name],
             "reasons": ", ".join(f"{k}: {v}" for k, v in report["reasons"][name].items())}
            for name in report["removed_by"]]
    rows += [{"filter": name, "removed": None, "removed_only_by_it": None, "reasons": f"skipped: {why}"}
             for name, why in report["skipped"].items()]
    slug = pool_name.replace("_", "-")
    create_table_artifact(key=f"{slug}-filters", table=rows,
                          description=f"Filters on pool `{pool_name}`: {report['kept']} of {report['samples']} kept.")
    create_markdown_artifact(key=f"{slug}-filter-report", markdown=(
        f"# Filters on `{pool_name}`\n\n{report['kept']} of {report['samples']} samples kept.\n\n"
        f"- report: `{the_store.uri(out_folder + '/report.json')}`\n"
        f"- plot: `{the_store.uri(out_folder + '/report.png')}`\n"))
    return report
