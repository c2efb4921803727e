"""The day partitions: one key per day of the landing zone's declared window (YYYY-MM-DD).

Dynamic, so the UI shows exactly the days delivered (not every day up to today): the keys
are added by the new-data sensor and daily ingest schedule (``orchestration.ingest``) and
by ``python -m orchestration.ingest sync``, which ``make run`` calls before materializing.
Partitioned assets take a single-run backfill policy, so a range of days (the first full
run: ``--partition-range first...last``) is one run that handles the days in order.
"""

import dagster as dg

from mmpipe.partitions import date_range

DAY = dg.DynamicPartitionsDefinition(name="day")
SINGLE_RUN = dg.BackfillPolicy.single_run()


def context_days(context) -> list[str]:
    """The day keys an asset or asset-check execution covers, in order.

    A check on a partitioned asset runs once per run: it covers the run's partition (or
    range); a run without partitions covers every day registered.
    """
    op_context = getattr(context, "op_execution_context", context)
    if op_context.has_partition_key_range or op_context.has_partition_key:
        keys = list(op_context.partition_keys)
        if keys:
            return sorted(keys)
    tags = op_context.run.tags
    if "dagster/partition" in tags:
        return [tags["dagster/partition"]]
    start, end = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    if start and end:
        return date_range(start, end)
    return sorted(op_context.instance.get_dynamic_partitions(DAY.name))
