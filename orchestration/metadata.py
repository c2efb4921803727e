"""Turning library results into Dagster metadata (presentation only, no data logic)."""


import dagster as dg
import pandas as pd

from mmpipe.media.preview import png_markdown


def preview_table(df: pd.DataFrame, rows: int = 10, max_chars: int = 60) -> dg.MetadataValue:
    """A Markdown preview of the first rows, long strings shortened."""
    head = df.head(rows).copy()
    for column in head.columns:
        if head[column].dtype == object or pd.api.types.is_string_dtype(head[column]):
            head[column] = head[column].map(
                lambda v: v if not isinstance(v, str) or len(v) <= max_chars else v[: max_chars - 1] + "…"
            )
    return dg.MetadataValue.md(head.to_markdown(index=False))


def png_metadata(png: bytes, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(png_markdown(png, alt))
