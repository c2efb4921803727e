"""Advance a generated world by whole days, as a real upstream delivers raw data day by day.

``advance(raw_root, days=1)`` appends the day after the landing zone's ``end_date`` (then
the next, ...): new pins with their images, their saves to the existing boards, the day's
impressions and clicks by the existing users, new videos with their annotations, each table
with its share of deliberately bad rows, and the truth behind all of it. Nothing already
delivered changes: old rows, files and truth stay as they were.

Same world, same rules. The day's rows come from the generator's own functions (scenes,
captions, rendering, board choice by theme and popularity, the click model, the defects),
and the latent state no file records (user biases and activity, item quality) is rebuilt
by replaying the generator's user and interaction stages from the seed, checked against
the truth it wrote. Only what is new to a daily delivery is decided here:

- Counts. Each day brings Poisson(total / n_days) pins, impressions and videos (at least
  one of each), the generated world's daily rate.
- Cold items. Pins of the last ``cold_days`` days are cold, as in the generated world:
  ``cutoff_date`` (the first cold day) moves with ``end_date``, so "the last cold_days
  days" keeps its meaning. A new pin gets its whole cold exposure (0, 1 or 2 impressions)
  on the day it appears, and none until it leaves the cold window; then it is shown by a
  persistent popularity, like every warm pin. ``impressions.is_cold_item`` says whether
  the pin was cold on the impression's day.
- Exploration follows the generator's rule (see ``mmpipe.world.pins.exploration_count``):
  ``exploration_share`` of the day's impressions go to the pins in their first
  ``cold_days`` days that the feed has shown (so far, the day's feed included), after the
  feed's rows in the day's log; ``impressions.is_exploration`` marks them.
- Bad rows. Each appended table gets ``bad_rate`` of its new good rows as bad rows, at
  least one; the kinds rotate at random, so every kind turns up over a few days.
- Ids continue each sequence past every id any row mentions, including the unknown ids
  that bad rows point at, so those stay unknown.
- Boards and users are not appended to; boards' popularity follows their saves so far.

Randomness: day ``d`` (days since ``start_date``) draws from its own streams, seeded by
(seed, part, d), so a day's delivery is a pure function of the seed, the day and the
committed world before it: advancing two days at once equals advancing one day twice.

Commit protocol. ``manifest.json`` is the commit record: its ``rows`` (raw tables) and
``truth_rows`` (truth tables) say how much of each file belongs to the committed world,
and ``deliveries`` lists every delivery (the generated world, then each day) with its date
and the cumulative row counts after it, so every raw row has a delivery day
(``mmpipe.partitions`` files rows with an unusable date under it).
A day writes its media files first (new names), then every truth and raw table whole via
a temporary file and ``os.replace``, then ``_truth/world.json``, and the manifest last.
A crash before the manifest leaves the older world committed; the next run reads only the
committed prefix of each file and rewrites the same day byte for byte. (Until then a
reader that does not go by the manifest's counts sees the extra rows; validation refuses
the pins and impressions among them, dated after the declared ``end_date``, and the saves
of those pins, but not the videos.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from mmpipe import layout
from mmpipe.io import write_bytes_atomic
from mmpipe.world.attributes import ATTRIBUTE_NAMES, ATTRIBUTES
from mmpipe.world.config import WorldConfig
from mmpipe.world.generate import STREAMS, stream_rng, write_parquet
from mmpipe.world.pins import (
    BAD_RECORD_COLUMNS,
    DEFECTS,
    EXPOSURE_SIGMA,
    ITEM_QUALITY_STD,
    N_POSITIONS,
    PinWorld,
    UserWorld,
    assemble_pins,
    bad_interaction_rows,
    bad_pins,
    bad_records_frame,
    bad_row_count,
    bad_save_rows,
    cold_impression_counts,
    damage_images,
    day_to_date,
    describe_pins,
    draw_clicks,
    draw_exploration,
    draw_off_theme,
    exploration_count,
    exploration_pool,
    format_id,
    generate_interactions,
    generate_users,
    interleave,
    main_value_index,
    pick_boards,
    render_images,
    sample_scene,
    split_rng,
    theme_matches,
    zipf_popularity,
)
from mmpipe.world.videos import (
    ANNOTATION_TABLES,
    QUERY_DEFECTS,
    VIDEO_DEFECTS,
    VideoRows,
    add_bad_annotations,
    add_bad_queries,
    add_bad_videos,
    make_good_videos,
    video_id_for,
    video_world,
)

PRODUCER = "mmpipe world advance"
GENERATED_BY = ("mmpipe world generate", PRODUCER)
# Day streams are seeded [seed, stream, ADVANCE_TAG, day]; the generator's are [seed, stream].
ADVANCE_TAG = 1000
DAY_STREAMS = {**STREAMS, "pin_latents": 6}
# Tables a day appends to, in the order the bad-record truth lists them.
APPENDED_TABLES = ("pins", "board_pins", "interactions", "videos", "moment_queries", "video_captions",
                   "video_shots", "summary_queries")
# Truth files a day appends to; the others (board_themes, user_affinities) never change.
APPENDED_TRUTH = ("pin_objects", "caption_attributes", "board_saves", "impressions",
                  "video_objects", "shots", "moments", "bad_records")
TRUTH_TABLES = tuple(name for name in layout.TRUTH_FILES if name != "world")
# Which columns hold ids of each sequence: a new id must be past every one of them.
ID_SEQUENCES = {
    "p": (("pins", "pin_id"), ("board_pins", "pin_id"), ("interactions", "pin_id")),
    "b": (("boards", "board_id"), ("board_pins", "board_id")),
    "u": (("users", "user_id"), ("interactions", "user_id")),
    "i": (("interactions", "impression_id"),),
    "v": (("videos", "video_id"), ("moment_queries", "video_id")),
    "q": (("moment_queries", "query_id"),),
}


def day_rng(seed: int, part: str, day: int) -> np.random.Generator:
    """The random stream of one part of one advanced day."""
    return np.random.default_rng([seed, DAY_STREAMS[part], ADVANCE_TAG, day])


def day_defects(kinds: tuple[str, ...], n_good: int, bad_rate: float, rng: np.random.Generator) -> list[str]:
    """Defects for one day's rows of a table: ``bad_rate`` of the good rows and at least one,
    so every delivery gives validation something to catch; kinds in a random rotation."""
    if bad_rate <= 0 or n_good == 0:
        return []
    n_bad = max(1, int(round(bad_rate * n_good)))
    order = rng.permutation(len(kinds))
    return [kinds[order[i % len(kinds)]] for i in range(n_bad)]


def daily_count(total: int, n_days: int, rng: np.random.Generator) -> int:
    """How many rows of a kind one day brings: Poisson at the generated world's daily rate,
    at least one, so every daily partition has something in it."""
    return max(1, int(rng.poisson(total / n_days)))


# --------------------------------------------------------------------------------------
# the committed world


@dataclass
class IdSequence:
    """The next free number of each id sequence (p, b, u, i, v, q)."""

    next_number: dict[str, int]
    width: dict[str, int]

    @classmethod
    def scan(cls, raw: dict[str, pd.DataFrame]) -> "IdSequence":
        next_number, width = {}, {}
        for prefix, columns in ID_SEQUENCES.items():
            values = pd.concat([raw[table][column].astype(object) for table, column in columns], ignore_index=True)
            digits = values[values.map(lambda v: isinstance(v, str))].str.extract(rf"^{prefix}(\d+)$")[0].dropna()
            next_number[prefix] = int(digits.astype(np.int64).max()) + 1 if len(digits) else 1
            width[prefix] = int(digits.str.len().min()) if len(digits) else 1
        return cls(next_number, width)

    def take(self, prefix: str, count: int) -> int:
        """Reserve ``count`` numbers; returns the first."""
        first = self.next_number[prefix]
        self.next_number[prefix] += count
        return first

    def ids(self, prefix: str, count: int) -> list[str]:
        first = self.take(prefix, count)
        return [format_id(prefix, first + k, self.width[prefix]) for k in range(count)]


@dataclass
class World:
    """The committed landing zone, and the latent state behind it, as of its end_date."""

    root: Path
    manifest: dict
    world: dict  # _truth/world.json
    cfg: WorldConfig  # the configuration the world was generated with
    raw: dict[str, pd.DataFrame]  # committed rows only
    truth: dict[str, pd.DataFrame]  # committed rows only
    end_day: int  # days since start_date
    # Good pins, row-aligned, in table order:
    pin_ids: list[str]
    pin_days: np.ndarray
    main_values: np.ndarray
    quality: np.ndarray
    popularity: np.ndarray
    users: UserWorld
    activity: np.ndarray
    ids: IdSequence


def read_manifest(raw_root: Path) -> dict:
    path = Path(raw_root) / layout.MANIFEST_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: generate a world first (mmpipe world generate)")
    return json.loads(path.read_text())


def world_config_of(world: dict) -> WorldConfig:
    config = dict(world["config"])
    # A world written before exploration existed had none; advancing it with the default
    # share would break the replay of its interactions (``replay_latent_state``).
    config.setdefault("exploration_share", 0.0)
    config["video_seconds"] = tuple(config["video_seconds"])
    return WorldConfig(**config)


def committed(df: pd.DataFrame, n_rows: int | None, what: str) -> pd.DataFrame:
    """The first ``n_rows`` rows: what the manifest committed (rows past it are a crashed
    advance's, to be rewritten)."""
    if n_rows is None:
        return df
    if len(df) < n_rows:
        raise ValueError(f"{what} has {len(df)} rows but the manifest commits {n_rows}")
    return df.iloc[:n_rows].reset_index(drop=True)


def good_rows(raw: pd.DataFrame, bad_records: pd.DataFrame, table: str) -> pd.DataFrame:
    bad = set(bad_records.loc[bad_records["table"] == table, "row_index"])
    return raw[~raw.index.isin(bad)]


def value_index(objects: pd.DataFrame) -> np.ndarray:
    """[n, n_attributes] value indices of the attribute columns of ``objects``."""
    return np.stack(
        [pd.Categorical(objects[name], categories=ATTRIBUTES[name]).codes.astype(np.int64) for name in ATTRIBUTE_NAMES],
        axis=1,
    )


def pin_latents(seed: int, day: int, n_pins: int) -> tuple[np.ndarray, np.ndarray]:
    """(quality, popularity) of the good pins created on ``day``, in id order.

    Popularity decides how often a warm pin is shown; it is drawn per creation day, so it
    stays the same for a pin whatever day is being advanced. Quality is the click model's
    item term; for the generated days the replay of the generator gives it instead.
    """
    rng = day_rng(seed, "pin_latents", day)
    return rng.normal(0.0, ITEM_QUALITY_STD, size=n_pins), rng.lognormal(0.0, EXPOSURE_SIGMA, size=n_pins)


def replay_latent_state(cfg: WorldConfig, pin_ids: list[str], pin_days: np.ndarray, main_values: np.ndarray,
                        truth_impressions: pd.DataFrame, truth_affinities: pd.DataFrame):
    """Users (bias, affinities) and the generated pins' quality and users' activity, which no
    file records: replay the generator's user and interaction stages from the seed, and
    check that they give back the truth the generator wrote."""
    users = generate_users(cfg, stream_rng(cfg.seed, "users"))
    pins = PinWorld(
        pins=pd.DataFrame(), pin_objects=pd.DataFrame(), caption_attributes=pd.DataFrame(),
        bad_records=pd.DataFrame(), pin_ids=pin_ids, days=pin_days, main_values=main_values,
        n_bad_ids=bad_row_count(cfg.n_pins, cfg.bad_rate, len(DEFECTS["pins"])),
    )
    interactions = generate_interactions(cfg, stream_rng(cfg.seed, "interactions"), pins, users)
    expected = truth_impressions.iloc[: len(interactions.impressions)]
    if not (
        users.user_affinities.equals(truth_affinities)
        and list(interactions.impressions["impression_id"]) == list(expected["impression_id"])
        and np.array_equal(interactions.impressions["p_click"].to_numpy(), expected["p_click"].to_numpy())
    ):
        raise ValueError(
            "replaying the generator does not reproduce this world's truth (was it generated by another "
            "version of mmpipe?); its click model cannot be continued"
        )
    return users, interactions.quality, interactions.activity


def load_world(raw_root: Path) -> World:
    """Read the committed world and rebuild the state a new day depends on."""
    root = Path(raw_root)
    manifest = read_manifest(root)
    if manifest.get("producer") not in GENERATED_BY or not (root / "_truth").is_dir():
        raise ValueError(f"{root} is not a generated world (producer {manifest.get('producer')!r}); "
                         "only generated worlds can be advanced")
    world = json.loads(layout.truth_path(root, "world").read_text())
    cfg = world_config_of(world)
    raw = {table: committed(pd.read_parquet(layout.raw_table_path(root, table)), manifest["rows"][table], table)
           for table in layout.RAW_TABLES}
    truth_rows = manifest.get("truth_rows", {})
    truth = {name: committed(pd.read_parquet(layout.truth_path(root, name)), truth_rows.get(name), f"_truth/{name}")
             for name in TRUTH_TABLES}

    pins = good_rows(raw["pins"], truth["bad_records"], "pins")
    pin_ids = list(pins["pin_id"])
    start = date.fromisoformat(manifest["start_date"])
    pin_days = np.array([(date.fromisoformat(d) - start).days for d in pins["created_at"]], dtype=np.int64)
    objects = truth["pin_objects"]
    main_values = value_index(objects[objects["object_index"] == 0].set_index("pin_id").loc[pin_ids])

    n_generated = cfg.n_pins  # the generator's good pins come first, in id order
    users, generated_quality, activity = replay_latent_state(
        cfg, pin_ids[:n_generated], pin_days[:n_generated], main_values[:n_generated],
        truth["impressions"], truth["user_affinities"],
    )
    quality, popularity = np.empty(len(pin_ids)), np.empty(len(pin_ids))
    for day in np.unique(pin_days):
        rows = np.flatnonzero(pin_days == day)
        quality[rows], popularity[rows] = pin_latents(cfg.seed, int(day), len(rows))
    quality[:n_generated] = generated_quality  # the generated days' quality is the replayed one

    return World(
        root=root, manifest=manifest, world=world, cfg=cfg, raw=raw, truth=truth,
        end_day=(date.fromisoformat(manifest["end_date"]) - start).days,
        pin_ids=pin_ids, pin_days=pin_days, main_values=main_values, quality=quality,
        popularity=popularity, users=users, activity=activity, ids=IdSequence.scan(raw),
    )


# --------------------------------------------------------------------------------------
# one day's delivery


@dataclass
class DayBlock:
    """What one day appends: raw rows, truth rows, and bad records indexed in the full tables."""

    raw: dict[str, pd.DataFrame] = field(default_factory=dict)
    truth: dict[str, pd.DataFrame] = field(default_factory=dict)
    bad_records: list[pd.DataFrame] = field(default_factory=list)

    def add_bad(self, records: pd.DataFrame, offset: int) -> None:
        self.bad_records.append(records.assign(row_index=records["row_index"].astype(np.int64) + offset))


@dataclass
class NewPins:
    pin_ids: list[str]
    main_values: np.ndarray
    quality: np.ndarray
    popularity: np.ndarray


def new_pins(w: World, day: int, block: DayBlock, progress: bool) -> NewPins:
    """The day's pins: scenes, captions and images as the generator makes them, ids
    continuing the sequence, created on ``day``, with the day's share of bad pins."""
    cfg, iso = w.cfg, day_to_date(w.manifest["start_date"], day)
    rng = day_rng(cfg.seed, "pins", day)
    bad_rng = split_rng(rng)  # bad rows draw apart, so the good ones do not depend on them
    images_dir = w.root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    n = daily_count(cfg.n_pins, cfg.n_days, rng)
    defects = day_defects(DEFECTS["pins"], n, cfg.bad_rate, bad_rng)
    render_seed = int(rng.integers(2**62))

    pin_ids = w.ids.ids("p", n)
    scenes = [sample_scene(rng, cfg.max_objects_per_pin) for _ in range(n)]
    rows, objects, mentions, jobs = describe_pins(
        pin_ids, scenes, [iso] * n, images_dir, render_seed, rng, cfg.typo_rate
    )
    bad = bad_pins(defects, w.ids.take("p", len(defects)), w.ids.width["p"], pin_ids, [iso],
                   (w.manifest["start_date"], iso), images_dir, render_seed + n, bad_rng, cfg)
    for defect, row in zip(defects, bad.rows):  # missing must mean missing, whatever lies there
        if defect == "missing_image":
            (w.root / row[1]).unlink(missing_ok=True)
    render_images(jobs + bad.jobs, cfg.image_size, progress)
    damage_images(bad.file_defects, bad_rng)
    pins, pin_objects, caption_attributes, bad_records = assemble_pins(rows, objects, mentions, bad, defects, bad_rng)

    block.raw["pins"] = pins
    block.truth["pin_objects"] = pin_objects
    block.truth["caption_attributes"] = caption_attributes
    block.add_bad(bad_records, len(w.raw["pins"]))
    quality, popularity = pin_latents(cfg.seed, day, n)
    return NewPins(pin_ids, main_value_index(scenes), quality, popularity)


def board_themes_matrix(board_themes: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Board ids (in board order) and their themes as value indices (-1: any value)."""
    board_ids = list(dict.fromkeys(board_themes["board_id"]))
    row = {board_id: b for b, board_id in enumerate(board_ids)}
    themes = np.full((len(board_ids), len(ATTRIBUTE_NAMES)), -1, dtype=np.int64)
    for board_id, attribute, value in board_themes[["board_id", "attribute", "value"]].itertuples(index=False):
        themes[row[board_id], ATTRIBUTE_NAMES.index(attribute)] = ATTRIBUTES[attribute].index(value)
    return board_ids, themes


def new_board_saves(w: World, day: int, pins: NewPins, block: DayBlock) -> None:
    """Saves of the day's pins to the existing boards, by theme and popularity, with the
    world's off-theme rate; a board's popularity is its rank by saves so far (Zipf)."""
    cfg, iso = w.cfg, day_to_date(w.manifest["start_date"], day)
    rng = day_rng(cfg.seed, "boards", day)
    bad_rng = split_rng(rng)
    board_ids, themes = board_themes_matrix(w.truth["board_themes"])
    saves_so_far = w.truth["board_saves"]["board_id"].value_counts().reindex(board_ids, fill_value=0).to_numpy()
    rank = np.empty(len(board_ids), dtype=np.int64)
    rank[np.argsort(-saves_so_far, kind="stable")] = np.arange(len(board_ids))
    members = pick_boards(pins.main_values, themes, zipf_popularity(rank), rng)

    saves = []  # (board, pin, on_theme)
    for b in range(len(board_ids)):
        on_theme = sorted(members[b])
        non_matching = np.flatnonzero(~theme_matches(themes[b], pins.main_values))
        off_theme = draw_off_theme(len(on_theme), non_matching, cfg.off_theme_rate, rng)
        saves += [(b, p, True) for p in on_theme] + [(b, int(p), False) for p in sorted(off_theme)]
    good = pd.DataFrame(
        {"board_id": [board_ids[b] for b, _, _ in saves], "pin_id": [pins.pin_ids[p] for _, p, _ in saves],
         "saved_at": [iso] * len(saves)},
        columns=layout.RAW_COLUMNS["board_pins"], dtype=object,
    )
    on_theme_flags = np.array([flag for _, _, flag in saves], dtype=bool)

    defects = day_defects(DEFECTS["board_pins"], len(good), cfg.bad_rate, bad_rng)
    bad_rows, bad_ids = bad_save_rows(
        good, defects, bad_rng, w.ids.take("b", len(defects)), w.ids.width["b"],
        w.ids.take("p", len(defects)), w.ids.width["p"],
    )
    board_pins, positions = interleave(good, pd.DataFrame(bad_rows, columns=good.columns, dtype=object), bad_rng)
    block.raw["board_pins"] = board_pins
    block.truth["board_saves"] = good[["board_id", "pin_id"]].assign(on_theme=on_theme_flags)
    block.add_bad(bad_records_frame("board_pins", positions, bad_ids, defects), len(w.raw["board_pins"]))


def new_interactions(w: World, day: int, pins: NewPins, block: DayBlock) -> None:
    """The day's impressions and clicks: existing users (by activity) see warm pins (by
    popularity) and the new pins (their cold exposure), then the day's exploration of new
    pins, clicking by the world's model."""
    cfg, iso = w.cfg, day_to_date(w.manifest["start_date"], day)
    rng = day_rng(cfg.seed, "interactions", day)
    bad_rng = split_rng(rng)
    pin_ids = w.pin_ids + pins.pin_ids
    pin_days = np.concatenate([w.pin_days, np.full(len(pins.pin_ids), day)])
    main_values = np.concatenate([w.main_values, pins.main_values])
    quality = np.concatenate([w.quality, pins.quality])
    popularity = np.concatenate([w.popularity, pins.popularity])
    is_cold = pin_days > day - cfg.cold_days  # created within the last cold_days days

    n_impressions = daily_count(cfg.n_impressions, cfg.n_days, rng)
    new_cold = np.flatnonzero(is_cold & (pin_days == day))
    cold_shown = np.repeat(new_cold, cold_impression_counts(len(new_cold), rng))[:n_impressions]
    warm = np.flatnonzero(~is_cold)
    weights = popularity[warm]
    warm_shown = rng.choice(warm, size=n_impressions - len(cold_shown), p=weights / weights.sum())
    pin = rng.permutation(np.concatenate([warm_shown, cold_shown]))
    user = rng.choice(len(w.activity), size=len(pin), p=w.activity / w.activity.sum())
    position = rng.integers(0, N_POSITIONS, size=len(pin))
    p_click, clicked = draw_clicks(rng, w.users, user, position, quality[pin], main_values[pin])

    # Exploration: its own stream, split off after the feed's last draw, so the feed's rows
    # are what they would be without it. The served pins are those the feed has shown, in
    # the committed world or today (every committed impression is of a served pin); a pin
    # in its first cold_days days can only have been shown since the first of those days.
    explore_rng = split_rng(rng)
    recent = np.flatnonzero(pin_days > day - cfg.cold_days)
    since = day_to_date(w.manifest["start_date"], day - cfg.cold_days + 1)
    committed_rows = w.raw["interactions"]
    recent_rows = good_rows(committed_rows[committed_rows["date"] >= since], w.truth["bad_records"], "interactions")
    shown_before = set(recent_rows["pin_id"])
    served = np.zeros(len(pin_ids), dtype=bool)
    served[recent] = [pin_ids[p] in shown_before for p in recent]
    served |= np.bincount(pin, minlength=len(pin_ids)) > 0
    e_pin, e_user = draw_exploration(
        explore_rng, int(exploration_count(len(pin), cfg.exploration_share)),
        exploration_pool(pin_days, day, cfg.cold_days, served), np.flatnonzero(w.users.signup_days <= day), w.activity,
    )
    e_position = explore_rng.integers(0, N_POSITIONS, size=len(e_pin))
    e_p_click, e_clicked = draw_clicks(explore_rng, w.users, e_user, e_position, quality[e_pin], main_values[e_pin])
    is_exploration = np.repeat([False, True], [len(pin), len(e_pin)])
    pin, user = np.concatenate([pin, e_pin]), np.concatenate([user, e_user])
    position, p_click = np.concatenate([position, e_position]), np.concatenate([p_click, e_p_click])
    clicked = np.concatenate([clicked, e_clicked])

    impression_ids = w.ids.ids("i", len(pin))
    good = pd.DataFrame({
        "impression_id": impression_ids,
        "user_id": [w.users.user_ids[u] for u in user],
        "pin_id": [pin_ids[p] for p in pin],
        "date": [iso] * len(pin),
        "position": position.astype(np.int64),
        "clicked": clicked,
    })
    defects = day_defects(DEFECTS["interactions"], len(good), cfg.bad_rate, bad_rng)
    bad, bad_ids = bad_interaction_rows(
        good, defects, bad_rng, w.ids.take("i", len(defects)), w.ids.width["i"],
        w.ids.take("u", len(defects)), w.ids.width["u"], w.ids.take("p", len(defects)), w.ids.width["p"],
    )
    interactions, positions = interleave(good, bad, bad_rng)
    block.raw["interactions"] = interactions
    block.truth["impressions"] = pd.DataFrame(
        {"impression_id": impression_ids, "p_click": p_click, "is_cold_item": is_cold[pin],
         "is_exploration": is_exploration}
    )
    block.add_bad(bad_records_frame("interactions", positions, bad_ids, defects), len(w.raw["interactions"]))


def new_videos(w: World, day: int, block: DayBlock, progress: bool) -> None:
    """The day's videos, made as the generator makes them, dated ``day``, with moment
    queries and the day's share of bad videos and queries."""
    cfg, iso = w.cfg, day_to_date(w.manifest["start_date"], day)
    rng = day_rng(cfg.seed, "videos", day)
    video_dir = w.root / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    n = daily_count(cfg.n_videos, cfg.n_days, rng)
    defects = day_defects(VIDEO_DEFECTS, n, cfg.bad_rate, rng)
    n_bad_files = sum(d != "duplicate_id" for d in defects)  # duplicates re-use a good id
    first = w.ids.take("v", n + n_bad_files)
    video_ids = [video_id_for(first + k) for k in range(n + n_bad_files)]

    first_queries = [w.ids.take("q", cfg.queries_per_video) for _ in range(n)]
    rows = make_good_videos(video_ids[:n], rng, cfg, video_dir, [iso], first_queries, progress=progress)
    durations = {row["video_id"]: row["duration_s"] for row in rows.videos}
    add_bad_videos(rows.videos, list(rows.videos), defects, iter(video_ids[n:]), rng, cfg, video_dir, [iso])
    good_queries = list(rows.queries)
    query_defects = day_defects(QUERY_DEFECTS, len(good_queries), cfg.bad_rate, rng)
    n_unknown = max(1, query_defects.count("unknown_video"))
    add_bad_queries(rows.queries, good_queries, query_defects, rng, w.ids.take("q", len(query_defects)),
                    w.ids.take("v", n_unknown), durations, unknown_video_range=n_unknown)
    add_bad_annotations(rows, rng, cfg, scale_rows=n)

    videos = video_world(rows, {table: len(w.raw[table]) for table in ANNOTATION_TABLES | {"videos": None}})
    block.raw.update(videos.raw_tables())
    block.truth["video_objects"] = videos.video_objects
    block.truth["shots"] = videos.shots
    block.truth["moments"] = videos.moments
    block.bad_records.append(videos.bad_records)


def make_day(w: World, day: int, progress: bool) -> DayBlock:
    block = DayBlock()
    pins = new_pins(w, day, block, progress)
    new_board_saves(w, day, pins, block)
    new_interactions(w, day, pins, block)
    new_videos(w, day, block, progress)
    return block


# --------------------------------------------------------------------------------------
# committing a day


def appended(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([old, new[old.columns]], ignore_index=True)


def world_summary(w: World, raw: dict[str, pd.DataFrame], truth: dict[str, pd.DataFrame], end_day: int) -> dict:
    """world.json after the day: the generator's keys, with the window, the cold cut-off,
    counts and click statistics brought up to date."""
    cfg, start = w.cfg, w.manifest["start_date"]
    dates = [day_to_date(start, d) for d in range(end_day + 1)]
    bad = truth["bad_records"]
    clicked = good_rows(raw["interactions"], bad, "interactions")["clicked"].to_numpy()
    p_click = truth["impressions"]["p_click"].to_numpy()
    return {
        **w.world,
        "start_date": dates[0],
        "end_date": dates[-1],
        "dates": dates,
        "cutoff_date": dates[len(dates) - cfg.cold_days],  # first day whose new pins are cold
        "mean_p_click": float(p_click.mean()),
        # A world generated before exploration existed has no such column: none of its
        # impressions, nor of the days advanced from it, are exploration.
        "exploration_impressions": int(truth["impressions"].get("is_exploration", pd.Series(dtype=bool)).sum()),
        "counts": {table: len(df) for table, df in raw.items()},
        "bad_records": {table: int((bad["table"] == table).sum()) for table in raw},
        "advanced_days": len(dates) - cfg.n_days,
    }


def commit_day(w: World, day: int, block: DayBlock) -> dict[str, dict[str, int]]:
    """Write the day: truth and raw tables whole and atomically, world.json, then the
    manifest. Returns the rows appended per table (rows, of which bad)."""
    new_bad = pd.concat(block.bad_records, ignore_index=True)[BAD_RECORD_COLUMNS]
    new_bad["record_id"] = new_bad["record_id"].astype(object)
    raw = {table: appended(df, block.raw[table]) if table in block.raw else df for table, df in w.raw.items()}
    truth = dict(w.truth)
    for name in APPENDED_TRUTH:
        truth[name] = appended(w.truth[name], new_bad if name == "bad_records" else block.truth[name])

    for name in APPENDED_TRUTH:
        write_parquet(truth[name], layout.truth_path(w.root, name))
    for table in APPENDED_TABLES:
        write_parquet(raw[table][layout.RAW_COLUMNS[table]], layout.raw_table_path(w.root, table))
    summary = world_summary(w, raw, truth, day)
    write_bytes_atomic((json.dumps(summary, indent=2) + "\n").encode(), layout.truth_path(w.root, "world"))
    layout.write_manifest(w.root, {
        **w.manifest,
        "producer": PRODUCER,
        "end_date": summary["end_date"],
        "n_days": len(summary["dates"]),
        "rows": summary["counts"],
        "truth_rows": {name: len(df) for name, df in truth.items()},
        "deliveries": [*w.manifest.get("deliveries", []),
                       {"date": summary["end_date"], "rows": summary["counts"]}],
    })
    return {
        table: {"rows": len(block.raw[table]), "bad": int((new_bad["table"] == table).sum())}
        for table in APPENDED_TABLES
    }


def stamp_truth_rows(raw_root: Path) -> None:
    """Record the truth tables' lengths in a manifest that lacks them (a freshly generated
    world), so that a crashed first advance can tell its own rows from the world's; and
    the first delivery (the generated world, dated its end_date) in ``deliveries``."""
    manifest = read_manifest(raw_root)
    if "truth_rows" in manifest and "deliveries" in manifest:
        return
    truth_rows = manifest.get("truth_rows") or {
        name: pq.ParquetFile(layout.truth_path(raw_root, name)).metadata.num_rows for name in TRUTH_TABLES
    }
    deliveries = manifest.get("deliveries") or [{"date": manifest["end_date"], "rows": manifest["rows"]}]
    layout.write_manifest(raw_root, {**manifest, "truth_rows": truth_rows, "deliveries": deliveries})


def advance(raw_root: Path, days: int = 1, progress: bool = True) -> dict:
    """Append ``days`` days to the generated world at ``raw_root``, one committed day at a time.

    Returns the new dates, the new window and the rows appended per table (rows, bad).
    """
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    raw_root = Path(raw_root)
    read_manifest(raw_root)  # fail early, before touching anything, if there is no world
    stamp_truth_rows(raw_root)
    totals = {table: {"rows": 0, "bad": 0} for table in APPENDED_TABLES}
    new_dates = []
    for _ in range(days):  # reload between days: day d+1 sees exactly what day d committed
        w = load_world(raw_root)
        day = w.end_day + 1
        for table, count in commit_day(w, day, make_day(w, day, progress)).items():
            totals[table]["rows"] += count["rows"]
            totals[table]["bad"] += count["bad"]
        new_dates.append(day_to_date(w.manifest["start_date"], day))
    manifest = read_manifest(raw_root)
    return {
        "root": str(raw_root),
        "dates": new_dates,
        "start_date": manifest["start_date"],
        "end_date": manifest["end_date"],
        "appended": totals,
    }
