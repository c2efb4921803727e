"""PinCLIP's evaluation: related pins and text search, by date window, against baselines and
the world's true ceiling.

The protocol never sees a model, only embeddings (:class:`EmbeddingSet`), so the trained
fused tower, its image-only and text-only heads, the ablation, the untrained tower and the
baselines are all scored by the same code on the same queries and corpus:

* **Windows** (:mod:`mmpipe.eval.splits`): the model trained on pins created in the train
  window; pins created in the validation window are the queries of the promotion gate and
  of model selection, pins of the test window those of the report. *Cold* is the shared
  definition (no impression and no board save before the training cut-off); *unseen* test
  pins were never shown to any user at all.
* **Related pins**: a query pin searches the whole corpus (every validated pin but
  itself); a result is relevant when it shares a board with the query (graded by the
  number of boards shared). nDCG@10 is the headline, with P@10, hit@10 and R@10 beside
  it (:mod:`mmpipe.eval.ranking`, one definition each). Queries without a board-mate have
  no defined nDCG and are not evaluable.
* **True ceiling**: candidates ranked by the probability, under the generator's own save
  model, of being saved to one of the query's boards (:mod:`mmpipe.eval.related_ceiling`).
  Random vectors are the floor.
* **Text search**: each test pin's caption finds its own image among the test images
  (text->image R@1/5/10, the search path's direction), and attribute-composed queries
  ("a blue striped star") find the test pins whose main object has those attributes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from mmpipe.eval.ranking import metric_key, ranking_metrics_per_query, summarise, top_k, top_k_from_group_scores
from mmpipe.eval.related_ceiling import SaveProbabilities, ceiling_row_scores, load_save_probabilities
from mmpipe.eval.report import bar_plot_png, metrics_table_markdown, windows_sentence
from mmpipe.eval.retrieval import paired_bootstrap_gain, relative_gain, retrieval_metrics
from mmpipe.layout import truth_path
from mmpipe.nn.text_tower import TextFeatures, encode_texts, load_text_encoder
from mmpipe.spec import EvalOutcome
from mmpipe.systems.pinclip.data import (COLD, TEST, UNSEEN, VALIDATION, PinCLIPInputs, QuerySet,  # noqa: F401
                                         RelatedPinsProtocol, related_pins_protocol)
from mmpipe.systems.pinclip.model import PinCLIP
from mmpipe.systems.pinclip.serve import load_version_model
from mmpipe.systems.pinclip.train import PinCLIPSettings, embed_images, embed_pins, load_trained
from mmpipe.world.attributes import ATTRIBUTE_NAMES, ATTRIBUTES

SUBSETS = (VALIDATION, TEST, COLD, UNSEEN)
REPORTED = (TEST, COLD, UNSEEN)  # the report's tables; validation is what the gate reads
K = 10
RANKING_METRICS = ("ndcg", "ndcg_graded", "precision", "hit", "recall")

# The gate's and the baselines check's metric: nDCG@10 of related pins on the validation
# window, so promotion never looks at test. The report leads with the same metric on test.
PRIMARY_METRIC = metric_key("ndcg", VALIDATION, K)  # "nDCG@10/validation"
HEADLINE_METRIC = metric_key("ndcg", TEST, K)  # "nDCG@10/test"
HIGHER_IS_BETTER = True
TEXT_SEARCH_PREFIX = "attribute_query"  # attribute_query/nDCG@10, attribute_query/P@10
COMPOSED_ATTRIBUTES = ("color", "pattern", "shape")

RANDOM_NAME = "random"
MINILM_NAME = "minilm_captions"
ATTRIBUTE_MATCH_NAME = "attribute_match"
CEILING_NAME = "true_ceiling"
MODEL_NAME = "pinclip_fused"
# What the fused embedding must beat before it may be promoted: its own towers alone, the
# ablation without the neighbor loss, an untrained tower, MiniLM on captions, and chance.
BASELINES = ("pinclip_image_tower", "pinclip_text_tower", "no_neighbor_loss_fused", "no_neighbor_loss_image",
             "untrained_image_tower", MINILM_NAME, RANDOM_NAME)

DESCRIPTIONS = {
    MODEL_NAME: "PinCLIP fused pin embedding (image↔text + neighbor alignment).",
    "pinclip_image_tower": "image tower of the trained model alone.",
    "pinclip_text_tower": "text tower of the trained model alone.",
    "no_neighbor_loss_fused": "ablation: the same training without the neighbor loss (fused).",
    "no_neighbor_loss_image": "ablation: its image tower.",
    "untrained_image_tower": "randomly initialised image tower.",
    MINILM_NAME: "off-the-shelf all-MiniLM-L6-v2 sentence embedding of the caption (title + description), "
                 "untrained on this data: the foundation-model baseline.",
    RANDOM_NAME: "random unit vectors: chance level, the floor.",
    ATTRIBUTE_MATCH_NAME: "reference, reads the truth: the number of the main object's true attribute values "
                          "two pins share, weighted by how often boards theme on each attribute, ties at random. "
                          "Not a ceiling: it does not know board sizes or which boards the query is on.",
    CEILING_NAME: "the true ceiling: candidates ranked by P(saved to one of the query's boards) under the "
                  "world's own save model (board themes, popularity, the off-theme rate). It knows the query's "
                  "boards, which no content model does; no model may beat it beyond its interval.",
}


# ---------------------------------------------------------------------------------------
# embeddings


def _unit_rows(x, name: str, n_rows: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != n_rows:
        raise ValueError(f"{name} must be [{n_rows}, dim] (one row per id), got {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    # A zero row (an empty caption) stays zero: "no information", tied with everything.
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


@dataclass
class EmbeddingSet:
    """One method's embeddings for every validated pin, in the protocol's corpus order.

    ``pin`` is what related-pins search uses; ``image`` and ``text`` (both, or neither)
    enable text search. Rows are L2-normalised on construction, so inner products are cosines.
    ``text_queries`` embeds free text into the space of ``image`` (the search path).
    """

    name: str
    ids: list[str]
    pin: np.ndarray  # [N, D]
    image: np.ndarray | None = None
    text: np.ndarray | None = None
    text_queries: object = None  # Callable[[list[str]], np.ndarray], with image

    def __post_init__(self) -> None:
        self.ids = [str(pin) for pin in self.ids]
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"{self.name}: ids must be unique")
        n = len(self.ids)
        self.pin = _unit_rows(self.pin, f"{self.name}.pin", n)
        if self.image is not None:
            self.image = _unit_rows(self.image, f"{self.name}.image", n)
        if self.text is not None:
            self.text = _unit_rows(self.text, f"{self.name}.text", n)


# ---------------------------------------------------------------------------------------
# the protocol: queries and their relevance, per subset


def score_ranked(ranked: Mapping[str, np.ndarray], protocol: RelatedPinsProtocol,
                 k: int = K) -> dict[str, dict[str, np.ndarray]]:
    """Per-query ranking metrics of each subset's ``ranked`` [Q, k] corpus rows."""
    return {subset: ranking_metrics_per_query(ranked[subset], protocol.query_sets[subset].relevance, k)
            for subset in ranked}


def rank_embeddings(embeddings: EmbeddingSet, protocol: RelatedPinsProtocol, k: int = K,
                    subsets: Sequence[str] = SUBSETS) -> dict[str, np.ndarray]:
    """Each subset's queries' top ``k`` corpus rows by cosine, the query itself excluded."""
    protocol.check(embeddings)
    return protocol.ranked(embeddings.pin, k, subsets)


def ceiling_ranked(protocol: RelatedPinsProtocol, probs: SaveProbabilities, k: int = K,
                   subsets: Sequence[str] = SUBSETS) -> dict[str, np.ndarray]:
    """The true ceiling's top ``k`` per query (see :data:`DESCRIPTIONS`)."""
    columns = pd.Index(probs.pin_ids).get_indexer(protocol.ids)
    if (columns < 0).any():
        raise ValueError(f"{(columns < 0).sum()} corpus pins are not in the truth's save probabilities")
    truth_boards = pd.Index(probs.board_ids).get_indexer(protocol.board_ids)
    if (truth_boards < 0).any():
        raise ValueError("validated boards the truth does not have: the ceiling cannot score them")
    to_truth = sp.csr_matrix((np.ones(len(truth_boards)), (np.arange(len(truth_boards)), truth_boards)),
                             shape=(len(truth_boards), len(probs.board_ids)))
    ranked = {}
    for subset in subsets:
        rows = protocol.query_sets[subset].rows
        boards = protocol.membership[rows] @ to_truth
        # scored per row of the truth's table (pins alike share one), never per corpus pin
        ranked[subset] = top_k_from_group_scores(lambda start, stop: ceiling_row_scores(boards[start:stop], probs),
                                                 probs.row_of_pin[columns], len(rows), k, exclude=rows)
    return ranked


# ---------------------------------------------------------------------------------------
# baselines


def attribute_weights(board_themes: pd.DataFrame | None) -> dict[str, float]:
    """How much each attribute says about board membership: its share of board theme slots.
    Without themes every attribute weighs the same."""
    if board_themes is None or board_themes.empty:
        return dict.fromkeys(ATTRIBUTE_NAMES, 1.0 / len(ATTRIBUTE_NAMES))
    counts = board_themes["attribute"].astype(str).value_counts()
    unknown = set(counts.index) - set(ATTRIBUTE_NAMES)
    if unknown:
        raise ValueError(f"board themes use unknown attributes {sorted(unknown)}")
    total = float(counts.sum())
    return {name: float(counts.get(name, 0)) / total for name in ATTRIBUTE_NAMES}


def main_objects(truth_pin_objects: pd.DataFrame, pin_ids: Sequence[str]) -> pd.DataFrame:
    """The true main object (``object_index`` 0) of each pin, in ``pin_ids`` order."""
    main = truth_pin_objects[truth_pin_objects["object_index"] == 0].copy()
    main["pin_id"] = main["pin_id"].astype(str)
    main = main.drop_duplicates("pin_id").set_index("pin_id")
    missing = [pin for pin in pin_ids if pin not in main.index]
    if missing:
        raise ValueError(f"{len(missing)} pins have no main object in the truth, e.g. {missing[:3]}")
    return main.loc[list(pin_ids)]


def attribute_match(pin_ids: list[str], truth_pin_objects: pd.DataFrame, board_themes: pd.DataFrame | None = None,
                    seed: int = 0) -> EmbeddingSet:
    """The reference row: pins as the one-hot of their main object's true values, attribute
    a's block scaled by sqrt(weight_a), so a cosine is the summed weight of the attributes two
    pins agree on. A small random component breaks the many ties at random, too small to
    reorder pins whose agreement differs (a quarter of the smallest gap between two sums)."""
    main = main_objects(truth_pin_objects, pin_ids)
    weights = attribute_weights(board_themes)
    blocks = []
    for name in ATTRIBUTE_NAMES:
        values = pd.Categorical(main[name].astype(str), categories=ATTRIBUTES[name])
        if (values.codes < 0).any():
            raise ValueError(f"truth has {name} values outside {ATTRIBUTES[name]}")
        one_hot = np.zeros((len(pin_ids), len(ATTRIBUTES[name])))
        one_hot[np.arange(len(pin_ids)), values.codes] = math.sqrt(weights[name])
        blocks.append(one_hot)
    subset_sums = np.array([sum(w for bit, w in enumerate(weights.values()) if mask >> bit & 1)
                            for mask in range(2 ** len(weights))])
    gaps = np.diff(np.unique(subset_sums.round(9)))
    eps = math.sqrt(gaps.min() / 4) if len(gaps) else 1.0
    jitter = np.random.default_rng(seed).standard_normal((len(pin_ids), 16))
    jitter *= eps / np.linalg.norm(jitter, axis=1, keepdims=True)
    return EmbeddingSet(ATTRIBUTE_MATCH_NAME, pin_ids, np.concatenate([*blocks, jitter], axis=1))


def minilm_caption_baseline(ids: list[str], text: TextFeatures, encoder: tuple | None = None,
                            max_length: int = 48) -> EmbeddingSet:
    """Each pin is its caption's MiniLM sentence embedding; a text query is MiniLM's
    embedding of the query, searched against the captions (it has no image side).
    ``encoder`` is ``load_text_encoder()``'s (tokenizer, model), loaded once by the caller."""
    pooled = text.pooled.detach().cpu().numpy()
    tokenizer, tower = encoder if encoder is not None else load_text_encoder()

    def text_queries(queries: list[str]) -> np.ndarray:
        return encode_texts(queries, tokenizer, tower, max_length=max_length).pooled.numpy()

    return EmbeddingSet(MINILM_NAME, ids, pooled, text_queries=text_queries)


def random_baseline(ids: Sequence[str], dim: int, seed: int, name: str = RANDOM_NAME) -> EmbeddingSet:
    """Chance level: independent Gaussian directions for the pin, image, text and query vectors."""
    rng = np.random.default_rng(seed)
    pin, image, text = (rng.standard_normal((len(ids), dim), dtype=np.float32) for _ in range(3))
    query_rng = np.random.default_rng(seed + 1)
    return EmbeddingSet(name, list(ids), pin, image=image, text=text,
                        text_queries=lambda queries: query_rng.standard_normal((len(queries), dim)))


def model_sets(name: str, ids: list[str], embeddings: Mapping[str, np.ndarray], model: PinCLIP | None = None,
               encoder: tuple | None = None, max_length: int = 48) -> EmbeddingSet:
    """A trained model's fused embedding as a row, with its image/text towers for text search
    (free text through ``encoder``, ``load_text_encoder()``'s pair, then the model's adapter)."""
    text_queries = None
    if model is not None:
        tokenizer, tower = encoder if encoder is not None else load_text_encoder()

        def text_queries(queries: list[str]) -> np.ndarray:
            features = encode_texts(queries, tokenizer, tower, max_length=max_length,
                                    trainable_top_layers=model.config.text_trainable_layers)
            with torch.no_grad():
                return model.eval().encode_text(features.hidden, features.mask)[1].numpy()
    return EmbeddingSet(name, ids, embeddings["fused"], embeddings["image"], embeddings["text"], text_queries)


# ---------------------------------------------------------------------------------------
# text search


@dataclass
class AttributeQueries:
    texts: list[str]  # "a blue striped star"
    relevance: sp.csr_matrix  # [Q, n_test] 1 where the test pin's main object has the attributes


def attribute_queries(main: pd.DataFrame, attributes: Sequence[str] = COMPOSED_ATTRIBUTES,
                      min_relevant: int = 3) -> AttributeQueries:
    """One query per combination of ``attributes`` held by at least ``min_relevant`` of the
    ``main`` objects (rows: the test pins): "a {color} {pattern} {shape}"."""
    combos = main.groupby(list(attributes), sort=True).indices
    texts, rows, columns = [], [], []
    for values, members in combos.items():
        if len(members) < min_relevant:
            continue
        rows += [len(texts)] * len(members)
        columns += list(members)
        texts.append("a " + " ".join(values))
    relevance = sp.csr_matrix((np.ones(len(rows)), (rows, columns)), shape=(len(texts), len(main)))
    return AttributeQueries(texts, relevance)


def text_search_metrics(embeddings: EmbeddingSet, test_rows: np.ndarray, queries: AttributeQueries | None,
                        k: int = K) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Caption -> own image R@1/5/10 among the test pins (with image and text towers), and the
    attribute queries' ranking metrics over the test pins (with ``text_queries``: against
    the images, or for a text-only method such as MiniLM against its caption embeddings)."""
    metrics: dict[str, float] = {}
    if embeddings.image is not None and embeddings.text is not None:
        own = retrieval_metrics(embeddings.text[test_rows], embeddings.image[test_rows])
        metrics.update({f"text_to_image/{key}": value for key, value in own.items()})
    per_query: dict[str, np.ndarray] = {}
    if queries is not None and queries.texts and embeddings.text_queries is not None:
        corpus = (embeddings.image if embeddings.image is not None else embeddings.pin)[test_rows]
        query_emb = _unit_rows(embeddings.text_queries(queries.texts), "text queries", len(queries.texts))
        depth = min(k, len(test_rows))
        per_query = ranking_metrics_per_query(top_k(query_emb, corpus, depth), queries.relevance, depth)
        metrics.update({f"{TEXT_SEARCH_PREFIX}/{metric_key(name, TEST, k).split('/')[0]}": value
                        for name, value in summarise(per_query).items() if name in ("ndcg", "precision", "hit")})
    return metrics, per_query


# ---------------------------------------------------------------------------------------
# scoring and the report


@dataclass
class Scores:
    metrics: dict[str, dict[str, float]]  # method -> metric -> value
    per_query: dict[str, dict[str, dict[str, np.ndarray]]]  # method -> subset -> metric -> [Q]


def score_methods(sets: Sequence[EmbeddingSet], protocol: RelatedPinsProtocol,
                  ceiling: Mapping[str, np.ndarray] | None = None, queries: AttributeQueries | None = None,
                  k: int = K, subsets: Sequence[str] = SUBSETS) -> Scores:
    """Every method on the same queries against the same corpus; the ceiling's rankings
    (``ceiling_ranked``) as the row :data:`CEILING_NAME`."""
    metrics: dict[str, dict[str, float]] = {}
    per_query: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    rankings = {embeddings.name: rank_embeddings(embeddings, protocol, k, subsets) for embeddings in sets}
    if len(rankings) != len(sets):
        raise ValueError("two embedding sets share a name")
    if ceiling is not None:
        rankings[CEILING_NAME] = {subset: ceiling[subset] for subset in subsets}
    for name, ranked in rankings.items():
        per_query[name] = score_ranked(ranked, protocol, k)
        metrics[name] = {metric_key(metric, subset, k): float(np.mean(values))
                         for subset, by_metric in per_query[name].items() for metric, values in by_metric.items()}
        metrics[name].update({f"queries/{subset}": len(protocol.query_sets[subset].rows) for subset in subsets})
    for embeddings in sets:
        search, search_per_query = text_search_metrics(embeddings, protocol.window_pins[TEST], queries, k)
        metrics[embeddings.name].update(search)
        if search_per_query:
            per_query[embeddings.name][TEXT_SEARCH_PREFIX] = search_per_query
    return Scores(metrics, per_query)


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float, np.floating)) and math.isfinite(float(value))


def _best(metrics: Mapping[str, Mapping[str, float]], methods: Sequence[str], key: str) -> str | None:
    scored = [name for name in methods if _finite(metrics.get(name, {}).get(key))]
    return max(scored, key=lambda name: metrics[name][key]) if scored else None


def _comparison(scores: Scores, model: str, baselines: Sequence[str], subset: str, metric: str,
                k: int = K) -> dict:
    """The model against the best baseline on one metric: gain with a paired-bootstrap 90%
    interval over the queries, and the share of the baseline-to-ceiling distance closed."""
    key = metric_key(metric, subset, k)
    best = _best(scores.metrics, baselines, key)
    model_value = scores.metrics[model].get(key)
    if best is None or not _finite(model_value):
        return {"metric": key, "best_baseline": None, "gain": math.nan, "gain_ci": (math.nan, math.nan),
                "gap_closed": math.nan}
    baseline_value = scores.metrics[best][key]
    ceiling_value = scores.metrics.get(CEILING_NAME, {}).get(key)
    gap = ceiling_value - baseline_value if _finite(ceiling_value) else math.nan
    return {
        "metric": key, "best_baseline": best, "model": model_value, "baseline": baseline_value,
        "ceiling": ceiling_value, "gain": relative_gain(model_value, baseline_value),
        "gain_ci": paired_bootstrap_gain(scores.per_query[model][subset][metric], scores.per_query[best][subset][metric]),
        "gap_closed": (model_value - baseline_value) / gap if gap > 0 else math.nan,
    }


def _percent_interval(low: float, high: float) -> str:
    return f"90% CI {low:+.1%} to {high:+.1%}" if _finite(low) else "no interval"


def pinclip_report(scores: Scores, protocol: RelatedPinsProtocol, model: str = MODEL_NAME,
                   baselines: Sequence[str] = BASELINES, k: int = K,
                   descriptions: Mapping[str, str] | None = None) -> tuple[str, dict[str, bytes], dict]:
    """Markdown, PNG bar plots and the summary (for ``write_report`` and the overview).

    Gains are over the best *baseline* per metric, never the ceiling or the attribute
    reference, which read the truth; each has a paired-bootstrap 90% interval over queries.
    """
    metrics = scores.metrics
    missing = [name for name in (model, *baselines) if name not in metrics]
    if missing:
        raise ValueError(f"no metrics for {missing}; have {sorted(metrics)}")
    if model in baselines:
        raise ValueError("the model cannot be one of its own baselines")
    described = {**DESCRIPTIONS, **(descriptions or {})}
    order = list(dict.fromkeys([model, *baselines, *metrics]))
    comparisons = {f"{metric}/{subset}": _comparison(scores, model, baselines, subset, metric, k)
                   for subset in (VALIDATION, *REPORTED) for metric in ("ndcg", "hit", "precision")}
    headline = comparisons[f"ndcg/{TEST}"]
    queries = {subset: len(qs.rows) for subset, qs in protocol.query_sets.items()}
    candidates = {subset: qs.candidates for subset, qs in protocol.query_sets.items()}
    w = protocol.windows
    lines = [
        f"# PinCLIP evaluation: {model}", "",
        f"**Related pins, test window: nDCG@{k} {headline.get('model', math.nan):.3f}** against the best baseline "
        f"{headline['best_baseline']} {headline.get('baseline', math.nan):.3f} "
        f"({headline['gain']:+.1%}, {_percent_interval(*headline['gain_ci'])}); true ceiling "
        f"{headline.get('ceiling', math.nan):.3f}, {headline['gap_closed']:.0%} of the baseline-to-ceiling "
        "distance closed.", "",
        windows_sentence(w, "pin", {window: f"{len(protocol.window_pins[window])} pins"
                                    for window in ("train", VALIDATION, TEST)}, PRIMARY_METRIC)
        + " Each query pin searches all "
        f"{len(protocol.ids)} pins; a result is relevant when it shares a board with the query. Queries with a "
        f"board-mate: validation {queries[VALIDATION]} of {candidates[VALIDATION]}, test {queries[TEST]} of "
        f"{candidates[TEST]}, cold {queries[COLD]} of {candidates[COLD]} (no impression or save before the "
        f"training cut-off; pins created after it always are), unseen {queries[UNSEEN]} of {candidates[UNSEEN]} "
        "(never shown to any user).", "",
    ]
    same_as_test = np.array_equal(protocol.query_sets[COLD].rows, protocol.query_sets[TEST].rows)
    for subset in (*REPORTED, VALIDATION):
        if subset == COLD and same_as_test:
            lines += ["## Related pins: cold", "", "Every test query is cold (created after the training cut-off, "
                      "nothing dated before it): the cold numbers are the test numbers above.", ""]
            continue
        table_columns = [metric_key(metric, subset, k) for metric in RANKING_METRICS]
        lines += [f"## Related pins: {subset} ({queries[subset]} queries)", "",
                  metrics_table_markdown({name: metrics[name] for name in order}, columns=table_columns,
                                         highlight=model), ""]
        for metric in ("ndcg", "hit", "precision"):
            c = comparisons[f"{metric}/{subset}"]
            if c["best_baseline"] is None:
                continue
            lines.append(f"- {c['metric']}: {c['model']:.3f} vs best baseline {c['best_baseline']} "
                         f"{c['baseline']:.3f}: {c['gain']:+.1%} ({_percent_interval(*c['gain_ci'])}); ceiling "
                         f"{c['ceiling']:.3f}, {c['gap_closed']:.0%} of the gap closed")
        lines.append("")
    search_columns = ["text_to_image/R@1", "text_to_image/R@5", "text_to_image/R@10", "text_to_image/median_rank",
                      f"{TEXT_SEARCH_PREFIX}/nDCG@{k}", f"{TEXT_SEARCH_PREFIX}/P@{k}", f"{TEXT_SEARCH_PREFIX}/hit@{k}"]
    with_search = {name: metrics[name] for name in order
                   if any(column in metrics[name] for column in search_columns)}
    if with_search:
        n_attribute = next((len(v[TEXT_SEARCH_PREFIX]["ndcg"]) for v in scores.per_query.values()
                            if TEXT_SEARCH_PREFIX in v), 0)
        lines += ["## Text search (test pins)", "",
                  f"Each test pin's caption against all {len(protocol.window_pins[TEST])} test images (text->image "
                  f"R@k, the direction `mmpipe search --text` uses), and {n_attribute} attribute-composed queries "
                  f"(\"a {{{'} {'.join(COMPOSED_ATTRIBUTES)}}}\", e.g. \"a blue striped star\") whose relevant "
                  "results are the test pins whose main object has all three.", "",
                  metrics_table_markdown(with_search, columns=search_columns,
                                         highlight=model if model in with_search else None), ""]
    lines += ["## Rows", ""]
    for name in order:
        role = ("model" if name == model else "baseline" if name in baselines else
                "ceiling" if name == CEILING_NAME else "reference" if name == ATTRIBUTE_MATCH_NAME else "other")
        text = described.get(name, "")
        lines.append(f"- **{name}** ({role}){': ' + text if text else ''}")
    markdown = "\n".join(lines) + "\n"

    plots = {}
    for subset in (TEST, UNSEEN):
        column = metric_key("ndcg", subset, k)
        if any(_finite(row.get(column)) for row in metrics.values()):
            plots[f"related_ndcg_{subset}"] = bar_plot_png(metrics, column, f"Related pins nDCG@{k}, {subset}")
    reported = [metric_key(metric, subset, k) for subset in REPORTED for metric in ("ndcg", "hit")]
    summary = {
        "model": model, "baselines": list(baselines), "oracle": CEILING_NAME,
        "primary_metrics": [HEADLINE_METRIC, *reported[1:], PRIMARY_METRIC],
        "best_baseline": {c["metric"]: c["best_baseline"] for c in comparisons.values()},
        "gains": {c["metric"]: c["gain"] for c in comparisons.values()},
        "gain_ci": {c["metric"]: c["gain_ci"] for c in comparisons.values()},
        "gap_closed": {c["metric"]: c["gap_closed"] for c in comparisons.values()},
        "metrics": {name: metrics[name] for name in order},
        "windows": {"train_end": w.train_end, "test_start": w.test_start},
        "cutoff_date": w.train_end,
        "queries": queries,
    }
    return markdown, plots, summary


# ---------------------------------------------------------------------------------------
# the whole evaluation, and the gate's evidence


def gate_metric(embeddings: Mapping[str, np.ndarray], protocol: RelatedPinsProtocol) -> float:
    """The gate's number for one model's ``embed_pins`` output: nDCG@10 on validation."""
    scored = EmbeddingSet("scored", protocol.ids, embeddings["fused"])  # unit rows, checked against the corpus
    protocol.check(scored)
    return protocol.query_sets[VALIDATION].mean_ndcg(scored.pin, K)


def rescore_champion(champion: str, inputs: PinCLIPInputs, protocol: RelatedPinsProtocol,
                     text_max_length: int) -> tuple[float | None, str]:
    """The champion's primary metric on the challenger's data, or (None, why not).

    A champion that cannot run over today's cache or images (another text tower, caption
    length or image size) is not re-scored; the gate then uses the number its own eval recorded.
    """
    try:
        model = load_version_model(champion, inputs.text, text_max_length)
        if model.config.image_size != inputs.dataset.image_size:
            raise ValueError(f"it reads {model.config.image_size}px images, the challenger "
                             f"{inputs.dataset.image_size}px")
    except ValueError as err:
        return None, (f"Champion version {champion} was not re-scored ({err}); "
                      "the gate uses the number its own eval recorded.")
    return gate_metric(embed_pins(model, inputs.dataset, inputs.text), protocol), ""


def evaluate(inputs: PinCLIPInputs, settings: PinCLIPSettings, challenger: str, champion: str | None,
             ablation_dirs: Mapping[str, Path]) -> EvalOutcome:
    """The registered ``challenger`` against the baselines, its no-neighbor ablation (trained
    beside it, ``ablation_dirs["no_neighbor"]``), an untrained tower, the attribute reference
    and the true ceiling; the ``champion``, when there is another one, re-scored on the
    validation window."""
    model = load_version_model(challenger, inputs.text, settings.text_max_length)
    ablation_model = load_trained(ablation_dirs["no_neighbor"])
    if ablation_model.config.image_size != model.config.image_size:
        raise ValueError("the ablation checkpoint reads other image sizes than the challenger: "
                         "retrain the ablation with the same model settings")
    ids = inputs.dataset.pin_ids
    trained = embed_pins(model, inputs.dataset, inputs.text)
    ablation = embed_pins(ablation_model, inputs.dataset, inputs.text)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        untrained_image = embed_images(PinCLIP(ablation_model.config), inputs.dataset)
    protocol = inputs.protocol
    truth = pd.read_parquet(truth_path(inputs.raw_root, "pin_objects"))
    themes = pd.read_parquet(truth_path(inputs.raw_root, "board_themes"))
    length = settings.text_max_length
    encoder = load_text_encoder()  # once: every method's text queries go through the same tower
    sets = [
        model_sets(MODEL_NAME, ids, trained, model, encoder, max_length=length),
        EmbeddingSet("pinclip_image_tower", ids, trained["image"]),
        EmbeddingSet("pinclip_text_tower", ids, trained["text"]),
        model_sets("no_neighbor_loss_fused", ids, ablation, ablation_model, encoder, max_length=length),
        EmbeddingSet("no_neighbor_loss_image", ids, ablation["image"]),
        EmbeddingSet("untrained_image_tower", ids, untrained_image),
        minilm_caption_baseline(ids, inputs.text, encoder, max_length=length),
        random_baseline(ids, trained["fused"].shape[1], seed=0),
        attribute_match(ids, truth, themes),
    ]
    queries = attribute_queries(main_objects(truth, [ids[row] for row in protocol.window_pins[TEST]]))
    scores = score_methods(sets, protocol, ceiling_ranked(protocol, load_save_probabilities(inputs.raw_root)),
                           queries)
    markdown, plots, summary = pinclip_report(scores, protocol)
    champion_value, note = None, ""
    if champion is not None and champion != str(challenger):
        champion_value, note = rescore_champion(champion, inputs, protocol, settings.text_max_length)
    return EvalOutcome(scores.metrics, markdown, plots, summary, float(scores.metrics[MODEL_NAME][PRIMARY_METRIC]),
                       champion_value, note)


def evaluate_sweeps(inputs: PinCLIPInputs, settings: PinCLIPSettings, model_dir: Path,
                    sweep_dirs: Mapping[str, Path]) -> EvalOutcome:
    """The ablations job's report: each sweep's fused embedding against the model it varies
    (the last training run in ``model_dir``), related-pins metrics on every window, the
    difference in nDCG@10 with a paired-bootstrap 90% interval over the queries."""
    protocol = inputs.protocol
    ids = inputs.dataset.pin_ids
    models = {MODEL_NAME: load_trained(model_dir), **{name: load_trained(path) for name, path in sweep_dirs.items()}}
    sets = [EmbeddingSet(name, ids, embed_pins(model, inputs.dataset, inputs.text)["fused"])
            for name, model in models.items()]
    scores = score_methods(sets, protocol)
    lines = [f"# PinCLIP ablations: {', '.join(sweep_dirs)} against {MODEL_NAME}", "",
             "Each sweep is the default training with the overrides of its SPEC entry; rows are fused embeddings. "
             f"Model selection reads validation ({len(protocol.query_sets[VALIDATION].rows)} queries), the "
             f"comparison test ({len(protocol.query_sets[TEST].rows)}).", ""]
    columns = [metric_key(metric, subset, K) for subset in (VALIDATION, TEST, UNSEEN) for metric in ("ndcg", "hit")]
    lines += [metrics_table_markdown(scores.metrics, columns=columns, highlight=MODEL_NAME), ""]
    changes = {}
    for name in sweep_dirs:
        for subset in (VALIDATION, TEST):
            key = metric_key("ndcg", subset, K)
            change = relative_gain(scores.metrics[name][key], scores.metrics[MODEL_NAME][key])
            low, high = paired_bootstrap_gain(scores.per_query[name][subset]["ndcg"],
                                              scores.per_query[MODEL_NAME][subset]["ndcg"])
            changes[f"{name}/{key}"] = {"change": change, "ci": (low, high)}
            lines.append(f"- {name}, {key}: {change:+.1%} against {MODEL_NAME} ({_percent_interval(low, high)})")
    markdown = "\n".join(lines) + "\n"
    plots = {"ablations_ndcg_test": bar_plot_png(scores.metrics, HEADLINE_METRIC, f"Ablations: nDCG@{K}, test")}
    summary = {"model": MODEL_NAME, "baselines": list(sweep_dirs), "metrics": scores.metrics, "changes": changes,
               "primary_metrics": [HEADLINE_METRIC, PRIMARY_METRIC]}
    return EvalOutcome(scores.metrics, markdown, plots, summary, float(scores.metrics[MODEL_NAME][PRIMARY_METRIC]))
