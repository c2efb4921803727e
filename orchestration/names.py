"""Every shared asset's name, defined once. A system's lifecycle assets are named by its
SPEC (``SPEC.model_asset``, ``SPEC.eval_asset``, ``SPEC.champion_asset``)."""


def raw(table: str) -> str:
    return f"raw_{table}"


def validated(table: str) -> str:
    return f"validated_{table}"


VALIDATED_FRAMES = "validated_frames"
GRAPH_NEIGHBOR_PAIRS = "graph_neighbor_pairs"
PIN_TEXT_FEATURES = "pin_text_features"
# The video systems' shared inputs (mmpipe.media.features names them in its errors; a test
# checks both spell them alike).
FRAME_FEATURES = "frame_features"
SHOT_FEATURES = "shot_features"
QUERY_TEXT_FEATURES = "query_text_features"
PIN_EMBEDDINGS = "pin_embeddings"
FAISS_PIN_INDEX = "faiss_pin_index"
VIDEO_EMBEDDINGS = "video_embeddings"
FAISS_VIDEO_INDEX = "faiss_video_index"
MOMENT_PREDICTIONS = "moment_predictions"
VIDEO_SUMMARIES = "video_summaries"
EVAL_OVERVIEW = "eval_overview"
BEHAVIOR_ITEM_EMBEDDINGS = "behavior_item_embeddings"
PIN_SEMANTIC_IDS = "pin_semantic_ids"
