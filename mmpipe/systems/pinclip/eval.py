"""PinCLIP's evaluation protocol: held out by date, board-neighbor retrieval over the corpus.

The protocol never sees a model, only embeddings (:class:`EmbeddingSet`), so the trained
fused tower, its image-only and text-only heads, the ablation, the untrained tower and
the baselines below are all scored by the same code on the same queries and corpus:

* **Split**: pins created on or after the cutoff date are held out (the model trained on
  earlier days); *cold* pins are held-out pins that no user was ever shown.
* **Neighbor retrieval**: a held-out pin's neighbors are all pins sharing a board with
  it. It queries the whole corpus (every validated pin but itself) and scores Recall@k
  of those neighbors, as a user of the index would see it.
* **Text ↔ image retrieval**, for methods with both towers: each held-out pin's caption
  finds its own image among the held-out images, and the other way round.

The attribute oracle reads the generator's truth and the floor is random vectors, so
every report spans chance to ceiling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmpipe.eval.report import bar_plot_png, metrics_table_markdown
from mmpipe.eval.retrieval import (
    bidirectional_retrieval,
    neighbor_hits_per_query,
    paired_bootstrap_gain,
    relative_gain,
    summarise_neighbor_hits,
)
from mmpipe.layout import truth_path
from mmpipe.spec import EvalOutcome
from mmpipe.systems.pinclip.data import HoldoutSplit, PinCLIPInputs
from mmpipe.systems.pinclip.model import PinCLIP
from mmpipe.systems.pinclip.serve import load_version_model
from mmpipe.systems.pinclip.train import PinCLIPSettings, embed_pins, load_trained
from mmpipe.world.attributes import ATTRIBUTE_NAMES, ATTRIBUTES

HELDOUT = "heldout"
COLD = "cold"
SUBSETS = (HELDOUT, COLD)

RANDOM_NAME = "random"
MINILM_NAME = "minilm_captions"
ORACLE_NAME = "attribute_oracle"
_TIE_BREAK_DIM = 16

DEFAULT_DESCRIPTIONS = {
    RANDOM_NAME: "random unit vectors: chance level, the floor every method must clear.",
    MINILM_NAME: (
        "off-the-shelf all-MiniLM-L6-v2 sentence embedding of the caption (title + "
        "description), untrained on this data: the foundation-model baseline."
    ),
    ORACLE_NAME: (
        "one-hot of the main object's true attribute values, weighted toward the "
        "attributes board themes use, ties broken at random: retrieval by the world's "
        "truth, the ceiling."
    ),
}


def neighbor_metric(name: str, subset: str, k: int = 10) -> str:
    """Metric key, e.g. ``neighbor_metric("R", "cold")`` -> ``"neighbor_R@10/cold"``."""
    return f"neighbor_{name}@{k}/{subset}"


# The gate's metric: held-out board-neighbor Recall@10 of the fused embedding.
PRIMARY_METRIC = neighbor_metric("R", HELDOUT, 10)  # "neighbor_R@10/heldout"
HIGHER_IS_BETTER = True


# ---------------------------------------------------------------------------------------
# split and neighbors


def board_neighbors(board_pins: pd.DataFrame) -> dict[str, set[str]]:
    """Every pin's neighbors: all other pins sharing at least one board with it.

    Unlike ``graph_neighbor_pairs``, nothing is capped, since Recall@k must count every
    neighbor. The sets are built as unions of board member lists rather than through
    :func:`~mmpipe.eval.retrieval.neighbors_from_pairs`, which would need a board's
    n(n-1)/2 pairs as a table. Symmetric, never self; pins alone on their boards are absent.
    """
    saves = board_pins[["board_id", "pin_id"]].dropna().astype(str).drop_duplicates()
    members = saves.groupby("board_id", sort=True)["pin_id"].agg(list).to_dict()
    neighbors: dict[str, set[str]] = {}
    for pin, boards in saves.groupby("pin_id", sort=True)["board_id"]:
        others = set().union(*(members[board] for board in boards))
        others.discard(pin)
        if others:
            neighbors[pin] = others
    return neighbors


# ---------------------------------------------------------------------------------------
# embeddings and scoring


def _unit_rows(x, name: str, n_rows: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != n_rows:
        raise ValueError(f"{name} must be [{n_rows}, dim] (one row per id), got {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    # A zero row (an empty caption) stays zero: "no information", tied with everything.
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


@dataclass
class EmbeddingSet:
    """One method's embeddings for every validated pin: the queries and the whole corpus.

    Rows are L2-normalised on construction, so inner products are cosines whatever
    the method produced.
    """

    name: str
    ids: list[str]
    pin: np.ndarray  # [N, D] what neighbor retrieval uses
    image: np.ndarray | None = None  # with text: enables text <-> image retrieval
    text: np.ndarray | None = None

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

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        row_of = {pin: row for row, pin in enumerate(self.ids)}
        return np.array([row_of[pin] for pin in ids], dtype=np.int64)


def evaluate_embeddings(
    sets: list[EmbeddingSet],
    split: HoldoutSplit,
    neighbors: dict[str, set[str]],
    k: int = 10,
    per_query: dict[str, dict[str, np.ndarray]] | None = None,
) -> dict[str, dict[str, float]]:
    """Score every method on the same queries against the same corpus.

    Per method: ``neighbor_R@k``, ``neighbor_hit@k``, ``neighbor_max_R@k`` (what a
    perfect ranking scores: pins with more than k neighbors cannot find them all) and
    ``neighbor_queries``, each for ``/heldout`` and ``/cold``; with image and text
    embeddings also ``text_to_image/R@1`` ... ``image_to_text/mean_rank`` over the
    held-out pins (see :func:`~mmpipe.eval.retrieval.bidirectional_retrieval`).

    Every set must cover exactly the split's pins, so no method is scored on an easier
    corpus than another. A ``per_query`` dict is filled with each method's per-query
    neighbor recall, ``per_query[name][subset]``, in the same query order for every
    method (what :func:`pinclip_report` needs for confidence intervals).
    """
    corpus = set(split.train_ids) | set(split.heldout_ids)
    queries = {HELDOUT: split.heldout_ids, COLD: split.cold_ids}
    results: dict[str, dict[str, float]] = {}
    for embeddings in sets:
        if embeddings.name in results:
            raise ValueError(f"two embedding sets are named {embeddings.name!r}")
        if set(embeddings.ids) != corpus:
            missing, extra = corpus - set(embeddings.ids), set(embeddings.ids) - corpus
            raise ValueError(
                f"{embeddings.name} must embed exactly the split's {len(corpus)} pins: "
                f"{len(missing)} missing (e.g. {sorted(missing)[:3]}), "
                f"{len(extra)} not in the split (e.g. {sorted(extra)[:3]})"
            )
        metrics: dict[str, float] = {}
        for subset, ids in queries.items():
            hits, total = neighbor_hits_per_query(
                embeddings.pin[embeddings.rows(ids)], ids,
                embeddings.pin, embeddings.ids, neighbors, k=k,
            )
            found = summarise_neighbor_hits(hits, total, k)
            metrics[neighbor_metric("R", subset, k)] = found[f"recall@{k}"]
            metrics[neighbor_metric("hit", subset, k)] = found[f"hit_rate@{k}"]
            metrics[neighbor_metric("max_R", subset, k)] = found[f"max_recall@{k}"]
            metrics[f"neighbor_queries/{subset}"] = found["n_queries"]
            if per_query is not None:
                per_query.setdefault(embeddings.name, {})[subset] = hits / total
        if embeddings.image is not None and embeddings.text is not None and split.heldout_ids:
            rows = embeddings.rows(split.heldout_ids)
            metrics.update(bidirectional_retrieval(embeddings.image[rows], embeddings.text[rows]))
        results[embeddings.name] = metrics
    return results


# ---------------------------------------------------------------------------------------
# oracle and baselines


def attribute_weights(board_themes: pd.DataFrame | None) -> dict[str, float]:
    """How much each attribute says about board membership: its share of board theme slots.

    Boards theme on one or two attributes, and two pins share a board when they agree on
    the theme's attributes; agreeing on an attribute no board themes on predicts nothing.
    Without themes every attribute weighs the same.
    """
    if board_themes is None or board_themes.empty:
        return dict.fromkeys(ATTRIBUTE_NAMES, 1.0 / len(ATTRIBUTE_NAMES))
    counts = board_themes["attribute"].astype(str).value_counts()
    unknown = set(counts.index) - set(ATTRIBUTE_NAMES)
    if unknown:
        raise ValueError(f"board themes use unknown attributes {sorted(unknown)}")
    total = float(counts.sum())
    return {name: float(counts.get(name, 0)) / total for name in ATTRIBUTE_NAMES}


def attribute_oracle(
    pin_ids: list[str],
    truth_pin_objects: pd.DataFrame,
    board_themes: pd.DataFrame | None = None,
    seed: int = 0,
) -> EmbeddingSet:
    """Retrieval by the world's true attributes: the ceiling no content model should pass.

    Each pin is the one-hot of its main object's (``object_index`` 0) value for every
    attribute, the block of attribute a scaled by sqrt(weight_a), so the inner product of
    two pins is the summed weight of the attributes they agree on (weights from
    :func:`attribute_weights`). Reads ``_truth``: evaluation code only.

    Pins agreeing on the same attributes tie, often dozens deep, and the retrieval
    metrics count ties against the model: right for a collapsed model, wrong for the truth,
    which is merely indifferent among them. So a small random component breaks ties at
    random, too small to ever reorder pins whose agreement differs.
    """
    main = truth_pin_objects[truth_pin_objects["object_index"] == 0].copy()
    main["pin_id"] = main["pin_id"].astype(str)
    main = main.drop_duplicates("pin_id").set_index("pin_id")
    pin_ids = [str(pin) for pin in pin_ids]
    missing = [pin for pin in pin_ids if pin not in main.index]
    if missing:
        raise ValueError(
            f"{len(missing)} pins have no main object in the truth, e.g. {missing[:3]}"
        )
    main = main.loc[pin_ids]

    weights = attribute_weights(board_themes)
    blocks = []
    for name in ATTRIBUTE_NAMES:
        values = pd.Categorical(main[name].astype(str), categories=ATTRIBUTES[name])
        if (values.codes < 0).any():
            raise ValueError(f"truth has {name} values outside {ATTRIBUTES[name]}")
        one_hot = np.zeros((len(pin_ids), len(ATTRIBUTES[name])), dtype=np.float64)
        one_hot[np.arange(len(pin_ids)), values.codes] = math.sqrt(weights[name])
        blocks.append(one_hot)

    # Scores are sums of a subset of the weights; the jitter's inner products stay within
    # +-eps**2, a quarter of the smallest gap between two distinct sums.
    subset_sums = np.array([
        sum(w for bit, w in enumerate(weights.values()) if mask >> bit & 1)
        for mask in range(2 ** len(weights))
    ])
    gaps = np.diff(np.unique(subset_sums.round(9)))
    eps = math.sqrt(gaps.min() / 4) if len(gaps) else 1.0
    jitter = np.random.default_rng(seed).standard_normal((len(pin_ids), _TIE_BREAK_DIM))
    jitter *= eps / np.linalg.norm(jitter, axis=1, keepdims=True)
    # Every row has norm sqrt(1 + eps**2), so normalising scales all scores alike.
    return EmbeddingSet(ORACLE_NAME, pin_ids, np.concatenate([*blocks, jitter], axis=1))


def minilm_caption_baseline(
    pins: pd.DataFrame, text_features, name: str = MINILM_NAME
) -> EmbeddingSet:
    """The foundation-model baseline: each pin is its caption's MiniLM sentence embedding.

    ``text_features`` is :class:`~mmpipe.nn.text_tower.TextFeatures` (or its
    ``pooled`` matrix) computed from ``pins``' captions, row i for row i. Without an image
    tower it takes no part in text <-> image retrieval.
    """
    pooled = getattr(text_features, "pooled", text_features)
    pooled = pooled.detach().cpu().numpy() if hasattr(pooled, "detach") else np.asarray(pooled)
    return EmbeddingSet(name, pins["pin_id"].astype(str).tolist(), pooled, text=pooled)


def random_baseline(
    ids: Sequence[str], dim: int, seed: int, name: str = RANDOM_NAME
) -> EmbeddingSet:
    """Chance level: independent Gaussian directions for the pin, image and text vectors."""
    rng = np.random.default_rng(seed)
    pin, image, text = (rng.standard_normal((len(ids), dim), dtype=np.float32) for _ in range(3))
    return EmbeddingSet(name, list(ids), pin, image=image, text=text)


# ---------------------------------------------------------------------------------------
# report

_RETRIEVAL_COLUMNS = [
    f"{direction}/{metric}"
    for direction in ("text_to_image", "image_to_text")
    for metric in ("R@1", "R@5", "R@10", "median_rank", "mean_rank")
]


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


def _format(value, percent: bool = False) -> str:
    # Significant digits, not decimals: neighbor R@10 over big boards lives around 0.005.
    if not _finite(value):
        return "n/a"
    return f"{float(value):.0%}" if percent else f"{float(value):.3g}"


def pinclip_report(
    metrics: dict[str, dict[str, float]],
    model_name: str,
    baselines: list[str],
    oracle: str,
    *,
    descriptions: Mapping[str, str] | None = None,
    split: HoldoutSplit | None = None,
    k: int = 10,
    per_query: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> tuple[str, dict[str, bytes], dict]:
    """The PinCLIP report: markdown, PNG bar plots, and a summary for ``write_report``.

    The model's gain is measured against the best *baseline* for each metric, never
    the oracle, which reads the truth. ``descriptions`` adds to (or overrides)
    :data:`DEFAULT_DESCRIPTIONS` for the paragraph saying what each row is.

    Returns ``(markdown, plots, summary)``: summary holds ``best_baseline`` and ``gains``
    (relative, per neighbor R@k subset), ``gap_closed`` (the share of the best-baseline-
    to-oracle gap the model covers) and every method's ``metrics``. With ``per_query``
    (as filled by :func:`evaluate_embeddings`) each gain also gets a paired-bootstrap
    90% interval over the queries, ``gain_ci``: a few hundred queries make a gain of a
    few percent indistinguishable from luck, and the report should say so. Pass them on as
    ``write_report(directory, "pinclip_eval", markdown, plots, summary)``.
    """
    named = [model_name, *baselines, oracle]
    unknown = [name for name in named if name not in metrics]
    if unknown:
        raise ValueError(f"no metrics for {unknown}; have {sorted(metrics)}")
    if model_name in baselines or oracle in baselines or model_name == oracle:
        raise ValueError("the model, the baselines and the oracle must be different methods")
    order = list(dict.fromkeys([*named, *metrics]))  # extra methods follow, as given
    rows = {name: metrics[name] for name in order}

    best_baseline, gains, gap_closed, gain_ci = {}, {}, {}, {}
    for subset in SUBSETS:
        key = neighbor_metric("R", subset, k)
        scored = [name for name in baselines if _finite(metrics[name].get(key))]
        model_value = metrics[model_name].get(key)
        if not scored or not _finite(model_value):
            best_baseline[key], gains[key], gap_closed[key] = None, math.nan, math.nan
            gain_ci[key] = (math.nan, math.nan)
            continue
        best = max(scored, key=lambda name: metrics[name][key])
        best_baseline[key] = best
        gains[key] = relative_gain(model_value, metrics[best][key])
        oracle_value = metrics[oracle].get(key)
        gap = float(oracle_value) - metrics[best][key] if _finite(oracle_value) else 0.0
        gap_closed[key] = (model_value - metrics[best][key]) / gap if gap > 0 else math.nan
        gain_ci[key] = (paired_bootstrap_gain(per_query[model_name][subset], per_query[best][subset])
                        if per_query is not None else (math.nan, math.nan))

    # Neighbor R@k over big boards is ~0.005, too small for the table's three decimals,
    # so the neighbor table and plots show percentages; the summary keeps fractions.
    neighbor_columns = [
        neighbor_metric(name, subset, k) for subset in SUBSETS for name in ("R", "hit")
    ]
    in_percent = {
        name: {f"{column} %": 100 * float(row[column]) for column in neighbor_columns
               if row.get(column) is not None}
        for name, row in rows.items()
    }
    lines = [f"# PinCLIP evaluation: {model_name}", ""]
    if split is not None:
        lines.append(
            f"Pins created on or after **{split.cutoff_date}** are held out "
            f"({len(split.heldout_ids)} pins, {len(split.cold_ids)} of them cold: never "
            f"shown to a user); the corpus is all "
            f"{len(split.train_ids) + len(split.heldout_ids)} pins."
        )
        lines.append("")
    model_row = metrics[model_name]
    queries = {subset: model_row.get(f"neighbor_queries/{subset}", "n/a") for subset in SUBSETS}
    ceiling = {subset: model_row.get(neighbor_metric("max_R", subset, k)) for subset in SUBSETS}
    lines += [
        f"Neighbor retrieval: each held-out pin with a board neighbor ({queries[HELDOUT]} "
        f"held-out, {queries[COLD]} cold) searches the whole corpus; R@{k} is the share of "
        f"the pins sharing a board with it found in its top {k}, hit@{k} whether any was. "
        f"A perfect ranking scores R@{k} = {_format(ceiling[HELDOUT])} held-out / "
        f"{_format(ceiling[COLD])} cold, since pins on big boards have more than {k} neighbors.",
        "",
        "## Neighbor retrieval (%)",
        "",
        metrics_table_markdown(
            in_percent, columns=[f"{column} %" for column in neighbor_columns], highlight=model_name
        ),
    ]
    for subset in SUBSETS:
        key = neighbor_metric("R", subset, k)
        if best_baseline[key] is None:
            lines.append(f"- relative gain of {model_name} over the best baseline on {key}: n/a")
            continue
        low, high = gain_ci[key]
        interval = f" (90% CI {low:+.1%} to {high:+.1%})" if _finite(low) else ""
        lines.append(
            f"- relative gain of {model_name} over the best baseline ({best_baseline[key]}) "
            f"on {key}: {gains[key]:+.1%}{interval} ({_format(metrics[model_name][key])} vs "
            f"{_format(metrics[best_baseline[key]][key])}, "
            f"oracle {_format(metrics[oracle].get(key))}; "
            f"{_format(gap_closed[key], percent=True)} of the gap to it closed)"
        )

    with_retrieval = {
        name: row for name, row in rows.items()
        if any(_finite(row.get(column)) for column in _RETRIEVAL_COLUMNS)
    }
    if with_retrieval:
        lines += [
            "",
            "## Text ↔ image retrieval (held-out pins, each caption against all held-out images)",
            "",
            metrics_table_markdown(
                with_retrieval,
                columns=_RETRIEVAL_COLUMNS,
                highlight=model_name if model_name in with_retrieval else None,
            ),
        ]

    described = {**DEFAULT_DESCRIPTIONS, **(descriptions or {})}
    lines += ["", "## Rows", ""]
    for name in order:
        role = "model" if name == model_name else "oracle" if name == oracle else (
            "baseline" if name in baselines else "other")
        text = described.get(name, "")
        lines.append(f"- **{name}** ({role}){': ' + text if text else ''}")
    markdown = "\n".join(lines) + "\n"

    plots = {}
    for subset in SUBSETS:
        column = f"{neighbor_metric('R', subset, k)} %"
        if any(_finite(row.get(column)) for row in in_percent.values()):
            plots[f"neighbor_recall_{subset}"] = bar_plot_png(
                in_percent, column, f"Board-neighbor R@{k} (%), {subset} pins"
            )
    summary = {
        "model": model_name,
        "baselines": list(baselines),
        "oracle": oracle,
        "best_baseline": best_baseline,
        "gains": gains,
        "gain_ci": gain_ci,
        "gap_closed": gap_closed,
        "metrics": rows,
    }
    if split is not None:
        summary["cutoff_date"] = split.cutoff_date
    return markdown, plots, summary


# -----------------------------------------------------------------------------
# the whole PinCLIP evaluation: trained model, ablation, baselines, oracle

MODEL_NAME = "pinclip_fused"
# What the fused embedding must beat before it may be promoted: its own towers alone, the
# ablation without the neighbor loss, an untrained tower, MiniLM on captions, and chance.
BASELINES = ("pinclip_image_tower", "pinclip_text_tower", "no_neighbor_loss_fused", "no_neighbor_loss_image",
             "untrained_image_tower", MINILM_NAME, RANDOM_NAME)


def evaluate_pinclip(
    trained: dict[str, np.ndarray],
    ablation: dict[str, np.ndarray],
    untrained: dict[str, np.ndarray],
    ids: list[str],
    pins: pd.DataFrame,
    text_features,
    split: HoldoutSplit,
    neighbors: dict[str, set[str]],
    truth_pin_objects: pd.DataFrame,
    board_themes: pd.DataFrame | None = None,
    k: int = 10,
) -> tuple[dict[str, dict[str, float]], str, dict[str, bytes], dict]:
    """Score the trained model's fused embedding against every baseline and the oracle.

    ``trained``, ``ablation`` (no neighbor loss) and ``untrained`` (random init) hold the
    ``image``/``text``/``fused`` arrays of ``embed_pins`` for the pins ``ids``.
    Returns (metrics, report markdown, plots, summary).
    """
    sets = [
        EmbeddingSet(MODEL_NAME, ids, trained["fused"], trained["image"], trained["text"]),
        EmbeddingSet("pinclip_image_tower", ids, trained["image"]),
        EmbeddingSet("pinclip_text_tower", ids, trained["text"]),
        EmbeddingSet("no_neighbor_loss_fused", ids, ablation["fused"], ablation["image"], ablation["text"]),
        EmbeddingSet("no_neighbor_loss_image", ids, ablation["image"]),
        EmbeddingSet("untrained_image_tower", ids, untrained["image"]),
        minilm_caption_baseline(pins, text_features),
        random_baseline(ids, trained["fused"].shape[1], seed=0),
        attribute_oracle(ids, truth_pin_objects, board_themes),
    ]
    per_query: dict[str, dict[str, np.ndarray]] = {}
    metrics = evaluate_embeddings(sets, split, neighbors, k=k, per_query=per_query)
    baselines = list(BASELINES)
    markdown, plots, summary = pinclip_report(
        metrics, MODEL_NAME, baselines, sets[-1].name, split=split, k=k, per_query=per_query,
        descriptions={
            MODEL_NAME: "PinCLIP fused pin embedding (image↔text + neighbor alignment)",
            "pinclip_image_tower": "image tower of the trained model alone",
            "pinclip_text_tower": "text tower of the trained model alone",
            "no_neighbor_loss_fused": "ablation: same training without the neighbor loss (fused)",
            "no_neighbor_loss_image": "ablation: its image tower",
            "untrained_image_tower": "randomly initialised image tower",
        },
    )
    return metrics, markdown, plots, summary


# ---------------------------------------------------------------------------------------
# the promotion gate's evidence: the challenger next to the champion re-scored on the same pins


def gate_metric(embeddings: Mapping[str, np.ndarray], inputs: PinCLIPInputs,
                   neighbors: dict[str, set[str]]) -> float:
    """The gate's number for one model's ``embed_pins`` output, by the report's own protocol."""
    row = "scored"
    metrics = evaluate_embeddings([EmbeddingSet(row, inputs.dataset.pin_ids, embeddings["fused"])],
                                  inputs.split, neighbors)
    return float(metrics[row][PRIMARY_METRIC])


def rescore_champion(champion: str, inputs: PinCLIPInputs, neighbors: dict[str, set[str]],
                     text_max_length: int) -> tuple[float | None, str]:
    """The champion's primary metric on the challenger's data, or (None, why not).

    A champion that cannot run over today's cache or images (another text tower, caption
    length or image size) is not re-scored; the gate then uses the number its own eval
    recorded.
    """
    try:
        model = load_version_model(champion, inputs.text, text_max_length)
        if model.config.image_size != inputs.dataset.image_size:
            raise ValueError(f"it reads {model.config.image_size}px images, the challenger "
                             f"{inputs.dataset.image_size}px")
    except ValueError as err:
        return None, (f"Champion version {champion} was not re-scored ({err}); "
                      "the gate uses the number its own eval recorded.")
    return gate_metric(embed_pins(model, inputs.dataset, inputs.text), inputs, neighbors), ""


def evaluate(inputs: PinCLIPInputs, settings: PinCLIPSettings, challenger: str, champion: str | None,
             ablation_dirs: Mapping[str, Path]) -> EvalOutcome:
    """The registered ``challenger`` on held-out pins against the baselines, its no-neighbor
    ablation (trained beside it, ``ablation_dirs["no_neighbor"]``), an untrained tower and the
    oracle; the ``champion``, when there is another one, re-scored on the same pins."""
    model = load_version_model(challenger, inputs.text, settings.text_max_length)
    ablation_model = load_trained(ablation_dirs["no_neighbor"])
    if ablation_model.config.image_size != model.config.image_size:
        raise ValueError("the ablation checkpoint reads other image sizes than the challenger: "
                         "retrain the ablation with the same model settings")
    trained = embed_pins(model, inputs.dataset, inputs.text)
    ablation = embed_pins(ablation_model, inputs.dataset, inputs.text)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        untrained = embed_pins(PinCLIP(ablation_model.config), inputs.dataset, inputs.text)
    neighbors = board_neighbors(inputs.board_pins)
    metrics, markdown, plots, summary = evaluate_pinclip(
        trained, ablation, untrained, inputs.dataset.pin_ids, inputs.pins, inputs.text, inputs.split,
        neighbors, pd.read_parquet(truth_path(inputs.raw_root, "pin_objects")),
        pd.read_parquet(truth_path(inputs.raw_root, "board_themes")),
    )
    champion_value, note = None, ""
    if champion is not None and champion != str(challenger):
        champion_value, note = rescore_champion(champion, inputs, neighbors, settings.text_max_length)
    return EvalOutcome(metrics, markdown, plots, summary, float(metrics[MODEL_NAME][PRIMARY_METRIC]),
                       champion_value, note)
