"""Pin–pin neighbor pairs from the pin–board graph (and co-engagement)."""


import dagster as dg

from mmpipe.graph.pairs import PairConfig, build_neighbor_pairs
from mmpipe.io import write_parquet_atomic
from mmpipe.params import load_params
from orchestration.assets.validated import read_validated
from orchestration.automation import EAGER
from orchestration.partitions import SINGLE_RUN
from orchestration.metadata import preview_table
from orchestration.names import GRAPH_NEIGHBOR_PAIRS, validated
from orchestration.resources import PipelinePaths

_DEFAULTS = load_params()["graph"]


class NeighborPairsConfig(dg.Config):
    max_pairs_per_board: int = _DEFAULTS["max_pairs_per_board"]
    co_engagement: bool = _DEFAULTS["co_engagement"]
    max_pairs_per_user: int = _DEFAULTS["max_pairs_per_user"]
    seed: int = _DEFAULTS["seed"]


@dg.asset(
    name=GRAPH_NEIGHBOR_PAIRS,
    group_name="graph",
    kinds={"parquet"},
    deps=[validated("pins"), validated("board_pins"), validated("interactions")],
    description="Capped pin–pin pairs sharing a board (plus co-engagement), split by pin date; "
                "reads every day partition.",
    code_version="1",
    automation_condition=EAGER,
    backfill_policy=SINGLE_RUN,
)
def graph_neighbor_pairs(config: NeighborPairsConfig, paths: PipelinePaths) -> dg.MaterializeResult:
    pairs, stats = build_neighbor_pairs(
        read_validated(paths, "pins"),
        read_validated(paths, "board_pins"),
        read_validated(paths, "interactions"),
        PairConfig(
            max_pairs_per_board=config.max_pairs_per_board,
            co_engagement=config.co_engagement,
            max_pairs_per_user=config.max_pairs_per_user,
            seed=config.seed,
        ),
    )
    write_parquet_atomic(pairs, paths.storage("graph") / "neighbor_pairs.parquet")
    return dg.MaterializeResult(
        metadata={
            "pairs": len(pairs),
            "stats": dg.MetadataValue.json(stats),
            "preview": preview_table(pairs),
            "dagster/row_count": len(pairs),
        }
    )
