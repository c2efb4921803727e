"""MAC's evaluation: text<->video retrieval by date window, MSR-VTT style, against baselines.

The protocol never sees a model, only embeddings (:class:`MethodEmbeddings`), so the
registered challenger, the untrained encoder, the PinCLIP frame baseline, random vectors
and the sweeps are all scored by the same code on the same queries and corpus:

* **Windows** (:mod:`mmpipe.eval.splits`, by video creation date): training saw only the
  train window's videos. The validation window's numbers are the promotion gate's and
  model selection's (``text_to_video/R@5/validation``), the test window's the report's;
  nothing is selected on test.
* **Queries** (the MSR-VTT protocol, several captions per video): within a window, each
  caption is a text query over the window's videos, its own video the one relevant
  result; each captioned video is a query over the window's captions, any of its captions
  relevant. Recall@1/5/10, median and mean rank of the best-ranked relevant result, ties
  counted against the model (:func:`mmpipe.eval.retrieval.first_relevant_ranks`).
* **Rows**: ``mac`` (the challenger, embedded unmasked: the mean of each video's
  inference clips, every caption token), ``pinclip_frames`` (the mean of each video's frame embeddings by
  the image encoder's champion against the same version's text embeddings of the
  captions: what the project has without training on video), ``untrained_encoder`` (the
  challenger's architecture, randomly initialised) and ``random`` (the floor).
* **No ceiling.** What a perfect text->video model scores is not known: a caption names
  some of the events of its video, and another video of the window may show them too, so
  the true relevance of a caption to the other videos is not in the annotations. The
  report gives no ceiling row rather than a made-up one; it counts the captions whose
  exact text also captions another video of the window (no model can separate those).
* **Gains** over the best baseline on R@k, as a ratio and a difference in points, each
  with a paired-bootstrap 90% interval over the queries.

``evaluate_sweeps`` (the ablations job): each sweep's model against the model it varies
(unmasked for as many steps, unmasked for the same wall-clock, the mask-ratio sweep), with
the baselines, in one table, the differences with their intervals, and R@1 against
training wall-clock.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mmpipe.eval.report import comparison_line, metrics_table_markdown, signed_points, times, windows_sentence
from mmpipe.eval.retrieval import (DEFAULT_KS, first_relevant_ranks, paired_bootstrap_difference,
                                   paired_comparison, summarise_ranks)
from mmpipe.media.features import VideoFeaturesConfig, registry_text_embeddings
from mmpipe.spec import EvalOutcome
from mmpipe.systems.mac.data import TEST, TRAIN, VALIDATION, MACInputs
from mmpipe.systems.mac.model import MAC
from mmpipe.systems.mac.serve import load_version_model, version_uri
from mmpipe.systems.mac.train import MACSettings, MACTrainConfig, embed_captions, embed_videos, load_trained
from mmpipe.train.checkpoint import read_trainer_state
from mmpipe.train.loop import CHECKPOINT_DIR

TEXT_TO_VIDEO, VIDEO_TO_TEXT = "text_to_video", "video_to_text"
DIRECTIONS = (TEXT_TO_VIDEO, VIDEO_TO_TEXT)
WINDOWS = (VALIDATION, TEST)
KS = DEFAULT_KS  # R@1, R@5, R@10


def metric_key(direction: str, metric: str, window: str) -> str:
    """How every number is named: ``metric_key("text_to_video", "R@5", "test")`` is
    ``"text_to_video/R@5/test"``."""
    return f"{direction}/{metric}/{window}"


def recall_key(direction: str, k: int, window: str) -> str:
    return metric_key(direction, f"R@{k}", window)


# The gate's and the baselines check's metric: text->video R@5 on the validation window, so
# promotion never looks at test. The report leads with the same metric on test.
PRIMARY_METRIC = recall_key(TEXT_TO_VIDEO, 5, VALIDATION)
HEADLINE_METRIC = recall_key(TEXT_TO_VIDEO, 5, TEST)
HIGHER_IS_BETTER = True
GAIN_K = 5  # gains over the best baseline are measured on R@5, the primary metric's k

MODEL_NAME = "mac"
PINCLIP_FRAMES = "pinclip_frames"
UNTRAINED = "untrained_encoder"
RANDOM_NAME = "random"
# What the challenger must beat before it may be promoted. Random is the floor row of the
# report, not a baseline: the untrained encoder is already at chance.
BASELINES = (PINCLIP_FRAMES, UNTRAINED)
UNTRAINED_SEED = 0
RANDOM_SEED = 0

# Training wall-clock of MAC unmasked over masked (mask 0.75), the default training's 300
# steps each: `mac_unmasked_model` 456 s against `mac_model`'s 124 s (900-video world, 2 CPU
# cores, 2026-12-05; train_seconds in the ablations report). The caption step alone
# (`benchmarks/bench_mac_step.py`: 0.85 s vs 0.20 s) is 4.3x; the real steps also hold the
# moment-query loss, the batch's clips and validation, which masking does not shrink.
# Measure again when the model's or the training's defaults change.
UNMASKED_STEP_TIME_RATIO = 3.7
_DEFAULT_TRAIN = MACTrainConfig()
UNMASKED = {"mask_ratio": 0.0, "text_mask_ratio": 0.0}
# The ablations job's runs (name -> settings overrides), each against the model (mask 0.75):
# * unmasked: no video or text masking, as many steps; masking must cost little accuracy;
# * unmasked_same_time: no masking for the masked run's wall-clock, i.e. its steps divided
#   by the step-time ratio; masking must win at equal time. The overrides are fixed
#   numbers, so the division uses MACSettings' default steps: a params.yaml `mac.train.steps`
#   needs this entry changed with it;
# * mask_0 / mask_50 / mask_90: the video mask-ratio sweep (0.75 is the model itself), text
#   masking as in the model, plotted as R@1 against training wall-clock;
# * from_scratch: the same training from a random initialisation instead of the image
#   encoder's weights (train.warm_start_state), which of the two measures better.
SWEEPS = {
    "unmasked": {"train": dict(UNMASKED)},
    "unmasked_same_time": {"train": {**UNMASKED,
                                     "steps": max(1, round(_DEFAULT_TRAIN.steps / UNMASKED_STEP_TIME_RATIO))}},
    "mask_0": {"train": {"mask_ratio": 0.0}},
    "mask_50": {"train": {"mask_ratio": 0.5}},
    "mask_90": {"train": {"mask_ratio": 0.9}},
    "from_scratch": {"train": {"warm_start": False}},
}
MASK_SWEEP = ("mask_0", "mask_50", "mask_90")  # with the model itself, the points of the sweep plot

DESCRIPTIONS = {
    MODEL_NAME: "MAC trained with masked video and text, embedded unmasked: the mean of each video's inference "
                "clips, every caption token.",
    PINCLIP_FRAMES: "the image encoder's champion frame embeddings (PinCLIP by default), mean-pooled over each "
                    "video's non-blank stored frames, against the same version's text embeddings of the "
                    "captions (its registered pyfunc): what the project has without training on video.",
    UNTRAINED: f"MAC with the challenger's configuration, randomly initialised (seed {UNTRAINED_SEED}), "
               "embedded the same way: what the architecture gives before training.",
    RANDOM_NAME: "random unit vectors: chance level, the floor.",
}


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float, np.floating)) and math.isfinite(float(value))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    # A zero row stays zero: "no information", tied with everything (ranked last).
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


# ---------------------------------------------------------------------------------------
# the protocol: each window's corpus and queries


@dataclass(frozen=True)
class WindowQueries:
    """One window's videos (the text queries' corpus) and captions (the video queries' corpus)."""

    window: str
    video_rows: np.ndarray  # rows of inputs.videos
    video_ids: list[str]
    caption_rows: np.ndarray  # rows of inputs.captions: the text queries
    caption_video: np.ndarray  # per caption, the position of its video in video_rows
    captioned: np.ndarray  # positions in video_rows of the videos with a caption: the video queries
    video_captions: list[np.ndarray]  # per video query, the positions of its captions in caption_rows

    @property
    def empty(self) -> bool:
        return len(self.caption_rows) == 0


def window_queries(inputs: MACInputs, window: str) -> WindowQueries:
    video_rows = inputs.video_rows(window)
    caption_rows = inputs.caption_rows(window)
    position = np.full(len(inputs.videos), -1)
    position[video_rows] = np.arange(len(video_rows))
    caption_video = position[inputs.captions["video_row"].to_numpy()[caption_rows]]
    if (caption_video < 0).any():  # a caption's window is its video's: data.py guarantees it
        raise ValueError(f"captions of the {window} window whose video is in another window")
    groups = pd.Series(np.arange(len(caption_rows))).groupby(caption_video).indices
    captioned = np.asarray(sorted(groups), dtype=np.int64)
    return WindowQueries(window, video_rows, inputs.videos["video_id"].astype(str).to_numpy()[video_rows].tolist(),
                         caption_rows, caption_video, captioned, [np.asarray(groups[v]) for v in captioned])


def window_ranks(videos: np.ndarray, captions: np.ndarray, queries: WindowQueries) -> dict[str, np.ndarray]:
    """Ranks of each text query's video and of each video query's best caption."""
    return {
        TEXT_TO_VIDEO: first_relevant_ranks(captions, videos, [[video] for video in queries.caption_video]),
        VIDEO_TO_TEXT: first_relevant_ranks(videos[queries.captioned], captions, queries.video_captions),
    }


# ---------------------------------------------------------------------------------------
# embeddings of every method


@dataclass
class MethodEmbeddings:
    """One method's unit embeddings of each window's videos and captions, in the order of
    its :class:`WindowQueries`."""

    name: str
    videos: dict[str, np.ndarray]  # window -> [len(video_rows), D]
    captions: dict[str, np.ndarray]  # window -> [len(caption_rows), D]

    def __post_init__(self) -> None:
        self.videos = {window: _unit_rows(x) for window, x in self.videos.items()}
        self.captions = {window: _unit_rows(x) for window, x in self.captions.items()}


def model_embeddings(name: str, model: MAC, inputs: MACInputs, queries: Mapping[str, WindowQueries],
                     n_frames: int, n_clips: int = 1) -> MethodEmbeddings:
    """A MAC's unmasked embeddings (``embed_videos``: the mean of each video's ``n_clips`` clips)."""
    return MethodEmbeddings(name, {w: embed_videos(model, inputs, q.video_rows, n_frames, n_clips)
                                   for w, q in queries.items()},
                            {w: embed_captions(model, inputs, q.caption_rows) for w, q in queries.items()})


def untrained_like(model: MAC) -> MAC:
    """A randomly initialised MAC of ``model``'s shape, the same whenever it is built."""
    with torch.random.fork_rng():
        torch.manual_seed(UNTRAINED_SEED)
        return MAC(model.config).eval()


def random_embeddings(queries: Mapping[str, WindowQueries], dim: int, seed: int = RANDOM_SEED) -> MethodEmbeddings:
    rng = np.random.default_rng(seed)
    videos, captions = {}, {}
    for window, q in queries.items():
        videos[window] = rng.standard_normal((len(q.video_rows), dim), dtype=np.float32)
        captions[window] = rng.standard_normal((len(q.caption_rows), dim), dtype=np.float32)
    return MethodEmbeddings(RANDOM_NAME, videos, captions)


def mean_frame_embeddings(frame_features, video_ids: Sequence[str]) -> np.ndarray:
    """[len(video_ids), D]: the mean of each video's non-blank frame embeddings (all its
    frames when every one is blank, as shot features pool), L2-normalised. A video without
    frame features is an error: a zero row would quietly rank it last."""
    rows_of = frame_features.video_rows()
    missing = [video for video in video_ids if video not in rows_of]
    if missing:
        raise ValueError(f"{len(missing)} videos have no frame features by {frame_features.encoder} "
                         f"v{frame_features.version}, e.g. {missing[:3]}: materialize frame_features for their days")
    index = frame_features.index
    blank = (index["is_blank"].to_numpy(dtype=bool) if "is_blank" in index.columns
             else np.zeros(len(index), dtype=bool))
    pooled = np.empty((len(video_ids), frame_features.dim), np.float32)
    for i, video in enumerate(video_ids):
        rows = rows_of[video]
        content = rows[~blank[rows]]
        pooled[i] = frame_features.embedding[content if len(content) else rows].mean(0)
    return _unit_rows(pooled)


def pinclip_frames_embeddings(inputs: MACInputs, queries: Mapping[str, WindowQueries]) -> MethodEmbeddings:
    """The baseline without video training: mean-pooled frame embeddings of the image
    encoder's champion against the text embeddings of the *same* registered version, so
    the two sides share its image-text space."""
    features = inputs.frame_features
    if features is None:
        raise ValueError(f"the {PINCLIP_FRAMES} baseline needs the frame features (MACInputs.frame_features): "
                         "materialize frame_features and load them with MAC's inputs")
    captions = inputs.captions["caption"].astype(str).to_numpy()
    windows = list(queries)
    all_rows = np.concatenate([queries[w].caption_rows for w in windows])
    text = registry_text_embeddings(features.encoder, str(features.version), captions[all_rows].tolist())
    if len(all_rows) and text.shape != (len(all_rows), features.dim):
        raise ValueError(f"{features.encoder} v{features.version} embeds texts as {text.shape[1:]} but its frame "
                         f"features are {features.dim}-d: they are not one space")
    bounds = np.cumsum([0, *(len(queries[w].caption_rows) for w in windows)])
    return MethodEmbeddings(PINCLIP_FRAMES,
                            {w: mean_frame_embeddings(features, queries[w].video_ids) for w in windows},
                            {w: text[bounds[i]:bounds[i + 1]] for i, w in enumerate(windows)})


# ---------------------------------------------------------------------------------------
# scores


@dataclass
class Scores:
    metrics: dict[str, dict[str, float]]  # method -> metric key -> value
    ranks: dict[str, dict[str, dict[str, np.ndarray]]]  # method -> window -> direction -> per-query ranks


def score_methods(methods: Sequence[MethodEmbeddings], queries: Mapping[str, WindowQueries],
                  ks: Sequence[int] = KS) -> Scores:
    """Every method's retrieval metrics, both directions, every window; a window without
    captions has no queries and scores NaN."""
    metrics: dict[str, dict[str, float]] = {}
    ranks: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    names = [*(f"R@{k}" for k in ks), "median_rank", "mean_rank"]
    for method in methods:
        if method.name in metrics:
            raise ValueError(f"two methods are named {method.name!r}")
        metrics[method.name], ranks[method.name] = {}, {}
        for window, q in queries.items():
            if q.empty:
                metrics[method.name].update({metric_key(d, name, window): math.nan
                                             for d in DIRECTIONS for name in names})
                continue
            ranks[method.name][window] = window_ranks(method.videos[window], method.captions[window], q)
            for direction, direction_ranks in ranks[method.name][window].items():
                metrics[method.name].update({metric_key(direction, name, window): value
                                             for name, value in summarise_ranks(direction_ranks, ks).items()})
    return Scores(metrics, ranks)


def _best(metrics: Mapping[str, Mapping[str, float]], methods: Sequence[str], key: str) -> str | None:
    scored = [name for name in methods if _finite(metrics.get(name, {}).get(key))]
    return max(scored, key=lambda name: metrics[name][key]) if scored else None


def compare(scores: Scores, model: str, others: Sequence[str], window: str, direction: str = TEXT_TO_VIDEO,
            k: int = GAIN_K) -> dict:
    """``model`` against the best of ``others`` on R@k: the ratio and the difference, each
    with a paired-bootstrap 90% interval over the window's queries."""
    key = recall_key(direction, k, window)
    best = _best(scores.metrics, others, key)
    if best is None or not _finite(scores.metrics[model].get(key)):
        return {"metric": key, "best_baseline": None, "model": math.nan, "baseline": math.nan, "gain": math.nan,
                "gain_ci": (math.nan, math.nan), "ratio": math.nan, "ratio_ci": (math.nan, math.nan),
                "difference": math.nan, "difference_ci": (math.nan, math.nan)}
    hits = scores.ranks[model][window][direction] <= k
    baseline_hits = scores.ranks[best][window][direction] <= k
    return {"metric": key, "best_baseline": best, **paired_comparison(hits, baseline_hits)}


def duplicate_captions(inputs: MACInputs, queries: WindowQueries) -> int:
    """Captions of the window whose text (case and spacing folded) also captions another of
    its videos: text queries no model can answer better than a tie."""
    if queries.empty:
        return 0
    texts = inputs.captions["caption"].astype(str).to_numpy()[queries.caption_rows]
    frame = pd.DataFrame({"text": [" ".join(text.lower().split()) for text in texts],
                          "video": queries.caption_video})
    videos_per_text = frame.groupby("text")["video"].nunique()
    return int((frame["text"].map(videos_per_text) > 1).sum())


# ---------------------------------------------------------------------------------------
# the report


def table_columns(window: str) -> list[str]:
    return [metric_key(direction, name, window) for direction in DIRECTIONS
            for name in (*(f"R@{k}" for k in KS), "median_rank", "mean_rank")]


def recall_curves_png(scores: Scores, queries: WindowQueries, order: Sequence[str], highlight: str,
                      max_k: int = 50) -> bytes:
    """R@k against k (1 up to max_k or the corpus size, log axis) for every method, one
    panel per direction."""
    window = queries.window
    corpus = {TEXT_TO_VIDEO: len(queries.video_rows), VIDEO_TO_TEXT: len(queries.caption_rows)}
    fig = Figure(figsize=(9.0, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # Figure + Agg canvas, not pyplot: no global state, safe in threads
    for panel, direction in enumerate(DIRECTIONS, start=1):
        ax = fig.add_subplot(1, 2, panel)
        ks = np.arange(1, min(max_k, corpus[direction]) + 1)
        for name in order:
            ranks = scores.ranks.get(name, {}).get(window, {}).get(direction)
            if ranks is None:
                continue
            recall = (ranks[None, :] <= ks[:, None]).mean(1)
            ax.plot(ks, recall, label=name, linewidth=2.5 if name == highlight else 1.2,
                    linestyle=":" if name == RANDOM_NAME else "-")
        ax.set_xscale("log")
        ax.set_xlabel("k")
        ax.set_ylabel("R@k")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{direction.replace('_', ' ')}, {window}")
        ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})  # same numbers, same bytes (DVC)
    return buffer.getvalue()


def _queries_summary(queries: Mapping[str, WindowQueries]) -> dict:
    return {w: {"videos": len(q.video_rows), "captions": len(q.caption_rows), "video_queries": len(q.captioned)}
            for w, q in queries.items()}


def mac_report(scores: Scores, queries: Mapping[str, WindowQueries], inputs: MACInputs, n_frames: int,
               model: str = MODEL_NAME, baselines: Sequence[str] = BASELINES,
               descriptions: Mapping[str, str] | None = None, n_clips: int = 1) -> tuple[str, dict[str, bytes], dict]:
    """Markdown, the PNG recall curves and the summary (for ``write_report`` and the overview)."""
    metrics = scores.metrics
    missing = [name for name in (model, *baselines) if name not in metrics]
    if missing:
        raise ValueError(f"no metrics for {missing}; have {sorted(metrics)}")
    described = {**DESCRIPTIONS, **(descriptions or {})}
    order = list(dict.fromkeys([model, *baselines, *metrics]))
    comparisons = {recall_key(direction, k, window): compare(scores, model, baselines, window, direction, k)
                   for window in (TEST, VALIDATION) for direction, k in
                   ((TEXT_TO_VIDEO, 1), (TEXT_TO_VIDEO, 5), (TEXT_TO_VIDEO, 10), (VIDEO_TO_TEXT, 5))}
    headline = comparisons[HEADLINE_METRIC]
    duplicates = {w: duplicate_captions(inputs, q) for w, q in queries.items()}
    counts = _queries_summary(queries)
    w = inputs.windows
    train_videos = len(inputs.video_rows(TRAIN))
    lines = [f"# MAC evaluation: {model}", ""]
    if headline["best_baseline"] is not None:
        lines += [f"**Text→video, test window: R@{GAIN_K} {headline['model']:.3f}** against the best baseline "
                  f"{headline['best_baseline']} {headline['baseline']:.3f}: {times(headline['ratio'])} (90% CI "
                  f"{times(headline['ratio_ci'][0])} to {times(headline['ratio_ci'][1])}), "
                  f"{signed_points(headline['difference'])} points (90% CI {signed_points(headline['difference_ci'][0])} to "
                  f"{signed_points(headline['difference_ci'][1])}).", ""]
    lines += [
        windows_sentence(w, "video", {TRAIN: f"{train_videos} videos",
                                      **{window: f"{counts[window]['videos']} videos, {counts[window]['captions']} "
                                                 "captions" for window in (VALIDATION, TEST)}}, PRIMARY_METRIC)
        + " MSR-VTT protocol within each window: every caption is a text query over the window's videos, its own video "
        "the one relevant result; every captioned video is a query over the window's captions, any of its "
        "captions relevant. Ranks are those of the best-ranked relevant result, ties counted against the model. "
        + (f"Videos are embedded from their middle clip of {n_frames} frames, unmasked." if n_clips == 1 else
         f"Videos are embedded from the mean of {n_clips} clips of {n_frames} frames each (clip c takes the frame "
         f"at (c + 0.5)/{n_clips} of each of the {n_frames} segments), unmasked."), "",
        "No true ceiling: which other videos a caption also describes is not annotated, so the best achievable "
        f"recall is unknown. Captions whose exact text also captions another video of the window (no model can "
        f"rank those above a tie): validation {duplicates[VALIDATION]}, test {duplicates[TEST]}.", "",
    ]
    for window in (TEST, VALIDATION):
        lines += [f"## {window.capitalize()} window ({counts[window]['videos']} videos, "
                  f"{counts[window]['captions']} captions)", "",
                  metrics_table_markdown({name: metrics[name] for name in order}, columns=table_columns(window),
                                         highlight=model), ""]
        lines += [f"- {comparison_line(c)}" for key, c in comparisons.items()
                  if key.endswith(f"/{window}") and c["best_baseline"] is not None]
        lines.append("")
    lines += ["## Rows", ""]
    for name in order:
        role = "model" if name == model else "baseline" if name in baselines else (
            "floor" if name == RANDOM_NAME else "other")
        text = described.get(name, "")
        lines.append(f"- **{name}** ({role}){': ' + text if text else ''}")
    markdown = "\n".join(lines) + "\n"

    plots = {f"recall_at_k_{window}": recall_curves_png(scores, queries[window], order, model)
             for window in (TEST, VALIDATION) if not queries[window].empty}
    summary = {
        "model": model, "baselines": list(baselines), "oracle": None, "floor": RANDOM_NAME,
        "primary_metrics": [HEADLINE_METRIC, recall_key(TEXT_TO_VIDEO, 1, TEST), recall_key(VIDEO_TO_TEXT, 5, TEST),
                            PRIMARY_METRIC],
        # the keys end in the window, so the overview cannot guess the direction from "rank"
        "lower_is_better": [key for key in metrics[model] if "_rank/" in key],
        "best_baseline": {key: c["best_baseline"] for key, c in comparisons.items()},
        "gains": {key: c["gain"] for key, c in comparisons.items()},
        "gain_ci": {key: c["gain_ci"] for key, c in comparisons.items()},
        "ratio": {key: c["ratio"] for key, c in comparisons.items()},
        "ratio_ci": {key: c["ratio_ci"] for key, c in comparisons.items()},
        "difference": {key: c["difference"] for key, c in comparisons.items()},
        "difference_ci": {key: c["difference_ci"] for key, c in comparisons.items()},
        "metrics": {name: metrics[name] for name in order},
        "windows": {"train_end": w.train_end, "test_start": w.test_start},
        "cutoff_date": w.train_end,
        "queries": counts,
        "ceiling": {"computed": False, "duplicate_captions": duplicates},
        "n_frames": n_frames, "n_clips": n_clips,
    }
    return markdown, plots, summary


# ---------------------------------------------------------------------------------------
# the whole evaluation, and the gate's evidence


def load_version(version: str) -> tuple[MAC, int, int]:
    """A registered version's MAC, the clip length it was trained with and the clips a video
    is embedded from (it is scored on clips like those). ``load_version_model`` refuses a
    version that cannot read the pipeline's video-text cache (another text tower, captions
    cut at another length); the clip settings are what ``serve.log_mac`` records in the
    version's MLflow metadata (versions before multi-clip embeddings: one clip)."""
    import mlflow

    model = load_version_model(version, text_max_length=VideoFeaturesConfig.from_params().text_max_length)
    metadata = mlflow.models.get_model_info(version_uri(version)).metadata
    return model, int(metadata["n_frames"]), int(metadata.get("n_clips", 1))


def gate_metric(model: MAC, inputs: MACInputs, queries: WindowQueries, n_frames: int, n_clips: int = 1) -> float:
    """The gate's number for one model: text->video R@5 on the validation window."""
    scores = score_methods([model_embeddings("scored", model, inputs, {VALIDATION: queries}, n_frames, n_clips)],
                           {VALIDATION: queries})
    return float(scores.metrics["scored"][PRIMARY_METRIC])


def rescore_champion(champion: str, inputs: MACInputs, queries: WindowQueries) -> tuple[float | None, str]:
    """The champion's primary metric on the challenger's validation window, on clips of its
    own length, or (None, why not).

    A champion that cannot run over today's inputs (another text tower or caption length,
    longer captions than its text encoder takes) is not re-scored; the gate then uses the
    number its own eval recorded."""
    try:
        model, n_frames, n_clips = load_version(champion)
        return gate_metric(model, inputs, queries, n_frames, n_clips), ""
    except ValueError as err:
        return None, (f"Champion version {champion} was not re-scored ({err}); "
                      "the gate uses the number its own eval recorded.")


def evaluate(inputs: MACInputs, settings: MACSettings, challenger_version: str, champion_version: str | None,
             ablation_dirs: Mapping[str, Path]) -> EvalOutcome:
    """The registered challenger against the baselines and the floor on the validation and
    test windows (plus any ablation trained beside it, as ``mac_<name>`` rows); the
    champion, when there is another one, re-scored on the validation window. Each model
    sees clips of the length it was trained with: a version's from its registry metadata,
    an ablation's from its checkpoint (``settings`` holds the same for the challenger)."""
    model, n_frames, n_clips = load_version(challenger_version)
    queries = {window: window_queries(inputs, window) for window in WINDOWS}
    methods = [model_embeddings(MODEL_NAME, model, inputs, queries, n_frames, n_clips)]
    descriptions = {}
    for name, directory in ablation_dirs.items():
        row = f"{MODEL_NAME}_{name}"
        record = training_record(directory)
        methods.append(model_embeddings(row, load_trained(directory), inputs, queries, record["n_frames"],
                                        record["inference_clips"]))
        descriptions[row] = f"ablation `{name}`, trained beside the model."
    methods += [pinclip_frames_embeddings(inputs, queries),
                model_embeddings(UNTRAINED, untrained_like(model), inputs, queries, n_frames, n_clips),
                random_embeddings(queries, model.config.embed_dim)]
    scores = score_methods(methods, queries)
    markdown, plots, summary = mac_report(scores, queries, inputs, n_frames, descriptions=descriptions,
                                          n_clips=n_clips)
    champion_value, note = None, ""
    if champion_version is not None and str(champion_version) != str(challenger_version):
        champion_value, note = rescore_champion(str(champion_version), inputs, queries[VALIDATION])
    return EvalOutcome(scores.metrics, markdown, plots, summary, float(scores.metrics[MODEL_NAME][PRIMARY_METRIC]),
                       champion_value, note)


# ---------------------------------------------------------------------------------------
# the ablations job


TRAIN_SECONDS = "train_seconds"


def training_record(model_dir: Path) -> dict:
    """What a training run's checkpoint says about it: its mask ratios, clip length, steps
    and, when the checkpoint records it (``extra["train_seconds"]``), its wall-clock."""
    state = read_trainer_state(Path(model_dir) / CHECKPOINT_DIR)
    train = state["config"]["train"]
    seconds = (state.get("extra") or {}).get(TRAIN_SECONDS)
    return {"mask_ratio": float(train["mask_ratio"]), "text_mask_ratio": float(train["text_mask_ratio"]),
            "n_frames": int(train["n_frames"]), "inference_clips": int(train.get("inference_clips", 1)),
            "steps": int(train["steps"]), "checkpoint_step": int(state["step"]),
            TRAIN_SECONDS: float(seconds) if seconds is not None else None}


def sweep_plot_png(metrics: Mapping[str, Mapping[str, float]], records: Mapping[str, dict], key: str,
                   series: Sequence[str]) -> bytes:
    """``key`` (R@1) against training wall-clock: the runs of ``series`` (the mask sweep and
    the model) joined in mask-ratio order, every other timed run (the unmasked ones) as a
    lone point. Without a recorded wall-clock for every run, the sweep alone against its
    mask ratio (the title says so)."""
    scored = [name for name in records if _finite(metrics.get(name, {}).get(key))]
    timed = all(records[name][TRAIN_SECONDS] is not None for name in scored)
    fig = Figure(figsize=(5.5, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()

    def x_of(name: str) -> float:
        return records[name][TRAIN_SECONDS] if timed else records[name]["mask_ratio"]

    sweep = sorted((name for name in scored if name in series), key=lambda name: records[name]["mask_ratio"])
    others = [name for name in scored if name not in series] if timed else []
    ax.plot([x_of(name) for name in sweep], [metrics[name][key] for name in sweep], marker="o", label="mask sweep")
    if others:
        ax.plot([x_of(name) for name in others], [metrics[name][key] for name in others], "s", color="tab:red",
                linestyle="none", label="other runs")
        ax.legend(fontsize=7, loc="lower right")
    for name in (*sweep, *others):
        ax.annotate(f"{name} (mask {records[name]['mask_ratio']:g})", (x_of(name), metrics[name][key]),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("training wall-clock (s)" if timed else "video mask ratio")
    ax.set_ylabel(key)
    ax.set_title(f"Mask-ratio sweep: {key}" + ("" if timed else "\n(wall-clock not recorded in the checkpoints)"),
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.2)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def evaluate_sweeps(inputs: MACInputs, settings: MACSettings, model_dir: Path,
                    sweep_dirs: Mapping[str, Path]) -> EvalOutcome:
    """The ablations job's report: each sweep's model (the last run in its directory)
    against the model it varies (``model_dir``), with the baselines, in one table; the
    text->video R@1 and R@5 differences (model - sweep) on validation and test with
    paired-bootstrap 90% intervals over the captions; R@1 against training wall-clock for
    the mask sweep."""
    queries = {window: window_queries(inputs, window) for window in WINDOWS}
    runs = {MODEL_NAME: Path(model_dir), **{name: Path(path) for name, path in sweep_dirs.items()}}
    records = {name: training_record(path) for name, path in runs.items()}
    models = {name: load_trained(path) for name, path in runs.items()}
    # Each run embedded with its own clip length (a sweep could vary it).
    methods = [model_embeddings(name, model, inputs, queries, records[name]["n_frames"],
                                records[name]["inference_clips"]) for name, model in models.items()]
    note = ""
    if inputs.frame_features is not None:
        methods.append(pinclip_frames_embeddings(inputs, queries))
    else:
        note = f"{PINCLIP_FRAMES} is left out: these inputs carry no frame features."
    methods += [model_embeddings(UNTRAINED, untrained_like(models[MODEL_NAME]), inputs, queries,
                                 records[MODEL_NAME]["n_frames"], records[MODEL_NAME]["inference_clips"]),
                random_embeddings(queries, models[MODEL_NAME].config.embed_dim)]
    scores = score_methods(methods, queries)

    differences = {}
    for name in sweep_dirs:
        for window in WINDOWS:
            for k in (1, 5):
                key = recall_key(TEXT_TO_VIDEO, k, window)
                if queries[window].empty:
                    continue
                hits = scores.ranks[MODEL_NAME][window][TEXT_TO_VIDEO] <= k
                sweep_hits = scores.ranks[name][window][TEXT_TO_VIDEO] <= k
                differences[f"{name}/{key}"] = {
                    "sweep": name, "metric": key,
                    "difference": scores.metrics[MODEL_NAME][key] - scores.metrics[name][key],
                    "ci": paired_bootstrap_difference(hits, sweep_hits)}

    counts = _queries_summary(queries)
    lines = [f"# MAC ablations: {', '.join(sweep_dirs)} against {MODEL_NAME}", "",
             "Each sweep is the default training with the overrides of its SPEC entry: `unmasked` trains without "
             "video or text masking for as many steps, `unmasked_same_time` for the masked run's wall-clock "
             f"(its steps over the unmasked/masked step-time ratio, {UNMASKED_STEP_TIME_RATIO:g}), `mask_*` the "
             "video mask-ratio sweep, `from_scratch` starts from random weights instead of the image encoder's. "
             f"Validation: {counts[VALIDATION]['captions']} captions over "
             f"{counts[VALIDATION]['videos']} videos; test: {counts[TEST]['captions']} over {counts[TEST]['videos']}. "
             "Same MSR-VTT protocol as the eval report.", "",
             "## Retrieval", "",
             metrics_table_markdown(scores.metrics, highlight=MODEL_NAME, columns=[
                 *(recall_key(TEXT_TO_VIDEO, k, window) for window in WINDOWS for k in KS),
                 metric_key(TEXT_TO_VIDEO, "median_rank", TEST), recall_key(VIDEO_TO_TEXT, 5, TEST)]), ""]
    if note:
        lines += [note, ""]
    lines += ["## Training", "",
              metrics_table_markdown(records, highlight=MODEL_NAME, columns=[
                  "mask_ratio", "text_mask_ratio", "n_frames", "steps", "checkpoint_step", TRAIN_SECONDS]), ""]
    if any(record[TRAIN_SECONDS] is None for record in records.values()):
        lines += ["Training wall-clock is not recorded in these checkpoints (`extra.train_seconds` of "
                  "`trainer_state.json`), so the sweep is plotted against the mask ratio.", ""]
    lines += [f"## Differences ({MODEL_NAME} − sweep, in points of recall)", ""]
    for d in differences.values():
        model_value, sweep_value = scores.metrics[MODEL_NAME][d["metric"]], scores.metrics[d["sweep"]][d["metric"]]
        lines.append(f"- {d['sweep']}, {d['metric']}: {signed_points(d['difference'])} ({MODEL_NAME} {model_value:.3f}, "
                     f"{d['sweep']} {sweep_value:.3f}; 90% CI {signed_points(d['ci'][0])} to {signed_points(d['ci'][1])})")
    markdown = "\n".join(lines) + "\n"

    sweep_key = recall_key(TEXT_TO_VIDEO, 1, TEST)
    plots = {}
    if not queries[TEST].empty:
        plots["mask_sweep_r1_wallclock"] = sweep_plot_png(scores.metrics, records, sweep_key,
                                                          series=(MODEL_NAME, *MASK_SWEEP))
        plots["recall_at_k_test"] = recall_curves_png(scores, queries[TEST], list(scores.metrics), MODEL_NAME)
    # No "oracle" key, as PinCLIP's ablations summary: the overview reads eval summaries only,
    # and sweeps are not baselines a promotion should be judged against.
    summary = {"model": MODEL_NAME, "baselines": list(sweep_dirs), "metrics": scores.metrics,
               "differences": differences, "training": records,
               "primary_metrics": [HEADLINE_METRIC, sweep_key, PRIMARY_METRIC],
               "lower_is_better": [key for key in scores.metrics[MODEL_NAME] if "_rank/" in key]}
    return EvalOutcome(scores.metrics, markdown, plots, summary, float(scores.metrics[MODEL_NAME][PRIMARY_METRIC]),
                       note=note)
