"""The CTR system in the asset graph: it trains on the validated impressions, users and
board saves, and on the item side reads only stored files: the multimodal embeddings
(``pin_embeddings`` or ``behavior_item_embeddings``) and the ``pin_semantic_ids``
partitions, never the semantic-ID system's code. Its lifecycle comes from the factory."""

from mmpipe.systems.ctr import SPEC
from mmpipe.systems.ctr.data import ctr_inputs, item_table
from mmpipe.systems.ctr.train import CTRSettings
from orchestration import names
from orchestration.assets.validated import read_validated
from orchestration.lifecycle import SystemInputs, lifecycle
from orchestration.resources import PipelinePaths

# Where each embedding kind is stored (orchestration/systems/pinclip.py, semantic_id.py).
EMBEDDING_DIRS = {"fused": ("embeddings", "pins"), "behavior": ("embeddings", "behavior")}


def load_inputs(paths: PipelinePaths, settings: CTRSettings):
    if settings.embedding not in EMBEDDING_DIRS:
        raise ValueError(f"ctr.embedding must be one of {sorted(EMBEDDING_DIRS)}, got {settings.embedding!r}")
    items = item_table(paths.storage(*EMBEDDING_DIRS[settings.embedding]), settings.embedding,
                       paths.storage("semantic_ids", "pins"))
    return ctr_inputs(read_validated(paths, "interactions"), read_validated(paths, "pins"),
                      read_validated(paths, "board_pins"), read_validated(paths, "users"), items, settings.data,
                      raw_root=paths.raw_root)


INPUTS = SystemInputs(deps=[names.PIN_EMBEDDINGS, names.BEHAVIOR_ITEM_EMBEDDINGS, names.PIN_SEMANTIC_IDS,
                            names.validated("interactions"), names.validated("pins"), names.validated("board_pins"),
                            names.validated("users")],
                      load=load_inputs)
LIFECYCLE = lifecycle(SPEC, INPUTS)

assets = LIFECYCLE.assets
asset_checks = LIFECYCLE.asset_checks
# No retraining sensor of its own: it retrains on its weekly schedule or by its training job.
sensors = []
