"""PinCLIP's side of the promotion gate: its primary metric, and registered versions run
over the pipeline's caption cache.

The pipeline embeds pins from cached text-tower states (``pin_text_features``) instead
of running the text tower per pin. Evaluation and serving load a *registered version*
(the exact weights that are judged and promoted, not whatever checkpoint the last
training left on disk) and first check that the version reads that cache the way it was
trained: frozen tower, same width, same caption length, the packaged MiniLM.

The gate's metric is held-out board-neighbor Recall@10 of the fused embedding, the
number the PinCLIP report leads with. When a champion exists, the eval re-scores it on
the same pins and split as the challenger, so the two numbers compare like with like
even after the data has grown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import mlflow
import numpy as np
from mlflow import MlflowClient

from mmpipe.eval.pinclip_eval import HELDOUT, EmbeddingSet, evaluate_embeddings, neighbor_metric
from mmpipe.models.pinclip import PinCLIP, PinCLIPConfig
from mmpipe.models.text_encoder import TextFeatures
from mmpipe.registry.pinclip_pyfunc import REGISTERED_NAME, load_embedder
from mmpipe.registry.promotion import GateEvidence, champion_version
from mmpipe.train.pinclip_inputs import PinCLIPInputs
from mmpipe.train.pinclip_train import embed_pins

PRIMARY_METRIC = neighbor_metric("R", HELDOUT, 10)  # "neighbor_R@10/heldout"
HIGHER_IS_BETTER = True


def version_uri(version: str, name: str = REGISTERED_NAME) -> str:
    return f"models:/{name}/{version}"


def cache_mismatches(config: PinCLIPConfig, model_max_length: int, text_tower: str | None,
                     text: TextFeatures, cache_max_length: int) -> list[str]:
    """Why a model cannot run over ``text`` (the caption cache built with ``cache_max_length``
    by the packaged MiniLM, final-layer states); empty when it can."""
    problems = []
    if config.text_trainable_layers:
        problems.append(f"it tunes the top {config.text_trainable_layers} text layers, the cache "
                        "holds final-layer states")
    if config.text_hidden_size != text.hidden.shape[-1]:
        problems.append(f"it reads {config.text_hidden_size}-wide text states, the cache holds "
                        f"{text.hidden.shape[-1]}-wide ones")
    if model_max_length != cache_max_length:
        problems.append(f"it was trained on captions cut at {model_max_length} tokens, the cache at "
                        f"{cache_max_length}")
    if text_tower != "package":
        problems.append(f"its text tower is {text_tower!r}, the cache comes from the packaged MiniLM")
    return problems


def load_version_model(version: str, text: TextFeatures, text_max_length: int,
                       name: str = REGISTERED_NAME) -> PinCLIP:
    """The PinCLIP of registered ``version``, checked to run over the caption cache ``text``."""
    uri = version_uri(version, name)
    embedder = load_embedder(uri)
    tower = mlflow.models.get_model_info(uri).metadata.get("text_model")
    problems = cache_mismatches(embedder.model.config, embedder.text_max_length, tower, text,
                                text_max_length)
    if problems:
        raise ValueError(f"{uri} cannot run over the pipeline's caption cache: {'; '.join(problems)}")
    return embedder.model.eval()


def primary_metric(embeddings: Mapping[str, np.ndarray], inputs: PinCLIPInputs,
                   neighbors: dict[str, set[str]]) -> float:
    """The gate's number for one model's ``embed_pins`` output, by the report's own protocol."""
    row = "scored"
    metrics = evaluate_embeddings([EmbeddingSet(row, inputs.dataset.pin_ids, embeddings["fused"])],
                                  inputs.split, neighbors)
    return float(metrics[row][PRIMARY_METRIC])


def gate_evidence(client: MlflowClient, challenger: str, challenger_value: float, inputs: PinCLIPInputs,
                  neighbors: dict[str, set[str]], text_max_length: int, name: str = REGISTERED_NAME
                  ) -> GateEvidence:
    """The challenger's number next to the current champion's, re-scored on ``inputs``.

    A champion that cannot run over today's cache or images (another text tower, caption
    length or image size) is not re-scored; the note says why, and the gate then uses the
    number its own eval recorded.
    """
    evidence = GateEvidence(name, PRIMARY_METRIC, HIGHER_IS_BETTER, str(challenger), float(challenger_value))
    champion = champion_version(client, name)
    if champion is None or champion == str(challenger):
        return replace(evidence, champion_version=champion)
    try:
        model = load_version_model(champion, inputs.text, text_max_length, name)
        if model.config.image_size != inputs.dataset.image_size:
            raise ValueError(f"it reads {model.config.image_size}px images, the challenger "
                             f"{inputs.dataset.image_size}px")
    except ValueError as err:
        return replace(evidence, champion_version=champion,
                       note=f"Champion version {champion} was not re-scored ({err}); "
                            "the gate uses the number its own eval recorded.")
    value = primary_metric(embed_pins(model, inputs.dataset, inputs.text), inputs, neighbors)
    return replace(evidence, champion_version=champion, champion_value=value)
