"""Pins, boards, users and clicks of the generated world, and the truth behind them.

Each stage takes its own random generator and returns the raw table (good rows with the
deliberately bad rows already interleaved), its ground truth, and a log of the bad rows.
Only good rows ever reach the truth tables, and later stages only refer to good rows.

Truth conventions:
- pin_objects: object_index 0 is the pin's main object (the one captions describe, boards
  group by and users click on); x, y are its centre as fractions of the image side; scale
  is its diameter as a fraction of the side; rotation is in degrees.
- user_affinities: only the non-zero affinities; a user's bias and a pin's quality are not
  written anywhere but folded into impressions.p_click, the exact click probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from mmpipe.world.attributes import ATTRIBUTE_NAMES, ATTRIBUTES, SIZE_SCALE, ObjectSpec
from mmpipe.world.captions import (
    MENTION_PROBABILITY,
    board_text,
    choose_mentions,
    garbled_text,
    pin_caption,
)
from mmpipe.world.config import WorldConfig
from mmpipe.world.parallel import map_in_order
from mmpipe.world.render import add_noise, background, draw_object

# The kinds of bad row injected into each table; at least one of each whenever the bad
# rate is non-zero, so validation is tested on every kind even at tiny scale.
DEFECTS: dict[str, tuple[str, ...]] = {
    "pins": (
        "corrupt_jpeg", "not_an_image", "missing_image", "path_traversal", "absolute_path",
        "duplicate_id", "null_id", "empty_text", "overlong_description", "garbled_caption",
        "invalid_date", "date_out_of_range",
    ),
    "boards": ("duplicate_id", "null_id", "empty_name"),
    "board_pins": ("unknown_board", "unknown_pin"),
    "users": ("duplicate_id", "null_id"),
    "interactions": ("unknown_user", "unknown_pin", "negative_position", "invalid_clicked", "invalid_date"),
}
BAD_RECORD_COLUMNS = ["table", "row_index", "record_id", "defect"]

JPEG_QUALITY = 85
N_POSITIONS = 20
COUNTRIES = ("US", "GB", "DE", "FR", "BR", "JP", "IN", "CA", "MX", "AU")
COUNTRY_WEIGHTS = (0.35, 0.1, 0.08, 0.08, 0.1, 0.07, 0.1, 0.05, 0.04, 0.03)

# Click model. Calibrated by simulation so that the oracle AUC lands near 0.8 and the
# user-attribute affinities carry most of what is predictable (without them the AUC of
# the true probabilities drops to about 0.65).
USER_BIAS_MEAN, USER_BIAS_STD = -1.9, 0.35
AFFINITY_MAGNITUDE = (1.0, 1.6)
AFFINITY_LIKE_PROBABILITY = 0.6
# Taste is shared: each user belongs to one of WorldConfig.taste_communities communities whose
# profile holds 3-6 affinities, plus 0-2 quirks of her own (a quirk on a value her community
# already weighs adds to it). Real audiences cluster this way (interest groups), and it is what
# lets a model learn a cold item's appeal from the users who clicked items like it; with
# independent tastes per user (~130 training impressions each at small) even the true
# attributes close only about half of the ID-only -> content-ceiling gap on cold items.
AFFINITIES_PER_COMMUNITY = (3, 6)
AFFINITIES_PER_USER = (0, 2)
ITEM_QUALITY_STD = 0.3
CLICK_NOISE_STD = 0.4
POSITION_BIAS = [-0.5 * math.log1p(p) for p in range(N_POSITIONS)]

# Boards: a pin is saved with this probability, to 1 + Poisson(extra) boards of its theme.
SAVED_PIN_FRACTION = 0.9
EXTRA_BOARDS_PER_PIN = 0.7
MIN_ON_THEME_PINS = 3


# --------------------------------------------------------------------------------------
# shared helpers


def day_to_date(start_date: str, day: int) -> str:
    return (date.fromisoformat(start_date) + timedelta(days=int(day))).isoformat()


def format_id(prefix: str, number: int, width: int) -> str:
    return f"{prefix}{number:0{width}d}"


def id_width(n: int, minimum: int) -> int:
    return max(minimum, len(str(n)))


def split_rng(rng: np.random.Generator) -> np.random.Generator:
    """An independent generator seeded from ``rng`` with a single draw."""
    return np.random.default_rng(int(rng.integers(2**63)))


def bad_row_count(n_good: int, bad_rate: float, n_kinds: int) -> int:
    """How many bad rows a table gets: its share of the rate, but every kind at least once."""
    if bad_rate <= 0:
        return 0
    return max(n_kinds, int(round(bad_rate * n_good)))


def assign_defects(table: str, n_good: int, bad_rate: float, rng: np.random.Generator) -> list[str]:
    kinds = DEFECTS[table]
    n_bad = bad_row_count(n_good, bad_rate, len(kinds))
    return [kinds[i] for i in rng.permutation(np.arange(n_bad) % len(kinds))]


def interleave(
    good: pd.DataFrame, bad: pd.DataFrame, rng: np.random.Generator, after: list[int] | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    """Insert the bad rows among the good ones at random places.

    ``after[j]`` is the good row that bad row j must come after (-1: anywhere), so that a
    duplicate id is always the later of the two rows. Returns the table and the positions
    of the bad rows in it, in the order of ``bad``.
    """
    n_good, n_bad = len(good), len(bad)
    if n_bad == 0:
        return good.reset_index(drop=True), np.zeros(0, dtype=np.int64)
    after_arr = np.full(n_bad, -1) if after is None else np.asarray(after, dtype=np.int64)
    # Bad row j goes right after good row slot[j] (-1: before every good row).
    slot = np.array([rng.integers(lo, n_good) for lo in after_arr], dtype=np.int64)
    major = np.concatenate([np.arange(n_good), slot])
    is_bad = np.concatenate([np.zeros(n_good, dtype=np.int64), np.ones(n_bad, dtype=np.int64)])
    order = np.lexsort((np.arange(n_good + n_bad), is_bad, major))
    combined = pd.concat([good, bad], ignore_index=True).iloc[order].reset_index(drop=True)
    position = np.empty(n_good + n_bad, dtype=np.int64)
    position[order] = np.arange(n_good + n_bad)
    return combined, position[n_good:]


def bad_records_frame(table: str, positions, record_ids, defects) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "table": [table] * len(defects),
            "row_index": np.asarray(positions, dtype=np.int64),
            "record_id": pd.array(list(record_ids), dtype=object),
            "defect": list(defects),
        },
        columns=BAD_RECORD_COLUMNS,
    )


# --------------------------------------------------------------------------------------
# pins: scenes, images, captions


@dataclass(frozen=True)
class PlacedObject:
    spec: ObjectSpec
    x: float  # centre, fraction of the image side
    y: float
    scale_jitter: float  # multiplies the diameter implied by spec.size
    rotation: float  # degrees

    @property
    def diameter(self) -> float:
        return SIZE_SCALE[self.spec.size] * self.scale_jitter


def sample_scene(rng: np.random.Generator, max_objects: int) -> list[PlacedObject]:
    """One main object near the centre plus 0..max_objects-1 smaller distractors."""
    main = PlacedObject(
        spec=ObjectSpec.sample(rng),
        x=0.5 + rng.uniform(-0.12, 0.12),
        y=0.5 + rng.uniform(-0.12, 0.12),
        scale_jitter=rng.uniform(0.9, 1.1),
        rotation=rng.uniform(-30, 30),
    )
    weights = 0.6 ** np.arange(max(max_objects, 1))
    n_distractors = int(rng.choice(len(weights), p=weights / weights.sum()))
    sizes = ATTRIBUTES["size"]
    # Distractors are never of a larger size class than the main object, and a bit shrunk.
    allowed_sizes = sizes[: sizes.index(main.spec.size) + 1]
    scene = [main]
    for _ in range(n_distractors):
        spec = ObjectSpec.sample(rng, fixed={"size": str(rng.choice(allowed_sizes))})
        for _attempt in range(10):  # keep distractors off the main object where possible
            x, y = rng.uniform(0.12, 0.88, size=2)
            if math.hypot(x - main.x, y - main.y) > 0.3:
                break
        scene.append(PlacedObject(spec, float(x), float(y), rng.uniform(0.7, 0.9), rng.uniform(-45, 45)))
    return scene


def render_scene(scene: list[PlacedObject], side: int, rng: np.random.Generator) -> Image.Image:
    canvas = background(rng, side)
    for obj in scene[1:] + scene[:1]:  # main object last, so nothing covers it
        draw_object(canvas, obj.spec, (obj.x * side, obj.y * side), obj.rotation, obj.scale_jitter)
    return add_noise(canvas, rng, sigma=float(rng.uniform(3.0, 8.0)))


def render_image(job: tuple[str, list[PlacedObject], int, int]) -> None:
    path, scene, seed, side = job
    render_scene(scene, side, np.random.default_rng(seed)).save(path, "JPEG", quality=JPEG_QUALITY)


def render_images(jobs: list[tuple[str, list[PlacedObject], int]], side: int, progress: bool,
                  workers: int | None = None) -> None:
    """Render and save pin images on ``workers`` processes. Each image has its own seed, so
    its bytes depend only on the world's seed and the pin, never on the order, the batching
    or the number of workers."""
    map_in_order(render_image, [(path, scene, seed, side) for path, scene, seed in jobs], workers,
                 desc="pin images", unit="img", progress=progress)


@dataclass
class PinWorld:
    pins: pd.DataFrame  # raw table, good and bad rows
    pin_objects: pd.DataFrame  # truth, good pins only
    caption_attributes: pd.DataFrame  # truth, good pins only
    bad_records: pd.DataFrame
    # The good pins, row-aligned, for the later stages:
    pin_ids: list[str]
    days: np.ndarray  # creation day index
    main_values: np.ndarray  # [n_pins, n_attributes] value index of the main object
    n_bad_ids: int  # ids p(n+1)..p(n+n_bad_ids) are taken by bad pins


PIN_COLUMNS = ["pin_id", "image_path", "title", "description", "created_at"]
PIN_OBJECT_COLUMNS = ["pin_id", "object_index", *ATTRIBUTE_NAMES, "x", "y", "scale", "rotation"]


def _overlong(description: str, rng: np.random.Generator) -> str:
    target = 2000 + int(rng.integers(100, 1500))
    return " ".join([description] * (target // (len(description) + 1) + 1))[:target]


def describe_pins(
    pin_ids: list[str], scenes: list[list[PlacedObject]], created_at: list[str], images_dir: Path,
    render_seed: int, rng: np.random.Generator, typo_rate: float,
) -> tuple[list[tuple], list[tuple], list[tuple], list[tuple]]:
    """Captions, raw rows, truth rows and render jobs of good pins whose scenes are drawn.

    Returns (rows, objects, mentions, jobs); pin i's image is rendered with seed
    ``render_seed + i``. Shared by the generator and by ``world advance``, so a day's new
    pins are described exactly as the first days' were.
    """
    rows, objects, mentions, jobs = [], [], [], []
    for i, (pin_id, scene) in enumerate(zip(pin_ids, scenes)):
        mentioned = choose_mentions(rng)
        title, description = pin_caption(scene[0].spec, mentioned, rng, typo_rate)
        rows.append((pin_id, f"images/{pin_id}.jpg", title, description, created_at[i]))
        jobs.append((str(images_dir / f"{pin_id}.jpg"), scene, render_seed + i))
        main_attributes = scene[0].spec.as_dict()
        mentions.extend((pin_id, name, main_attributes[name]) for name in mentioned)
        for k, obj in enumerate(scene):
            objects.append(
                (pin_id, k, *obj.spec.as_dict().values(), obj.x, obj.y, obj.diameter, obj.rotation)
            )
    return rows, objects, mentions, jobs


@dataclass
class BadPins:
    rows: list[tuple]  # raw rows, one defect each
    record_ids: list[str | None]
    after: list[int]  # good row each must follow (-1: anywhere), see ``interleave``
    jobs: list[tuple]  # images to render
    file_defects: list[tuple[Path, str]]  # images to damage once rendered


def bad_pins(
    defects: list[str], first_number: int, width: int, good_ids: list[str], dates: list[str],
    window: tuple[str, str], images_dir: Path, render_seed: int, bad_rng: np.random.Generator,
    cfg: WorldConfig,
) -> BadPins:
    """Pin rows with exactly one defect each, ids p<first_number>, p<first_number + 1>, ...

    Their dates are drawn from ``dates``; an out-of-range date falls outside ``window``
    (the delivery's first and last date); a duplicate repeats one of ``good_ids``. Bad
    pin j's image (where it has one) is rendered with seed ``render_seed + j``.
    """
    bad = BadPins([], [], [], [], [])
    for j, defect in enumerate(defects):
        pin_id = format_id("p", first_number + j, width)
        scene = sample_scene(bad_rng, cfg.max_objects_per_pin)
        title, description = pin_caption(scene[0].spec, choose_mentions(bad_rng), bad_rng, cfg.typo_rate)
        image_path, created_at = f"images/{pin_id}.jpg", dates[int(bad_rng.integers(len(dates)))]
        record_id, original = pin_id, -1
        needs_image = defect not in ("missing_image", "path_traversal", "absolute_path", "duplicate_id")
        if defect == "path_traversal":
            image_path = ("../../etc/passwd", "../outside.jpg")[j % 2]
        elif defect == "absolute_path":
            image_path = ("/etc/passwd", f"/data/raw/images/{pin_id}.jpg")[j % 2]
        elif defect == "duplicate_id":
            original = int(bad_rng.integers(len(good_ids)))
            record_id = good_ids[original]
            image_path = f"images/{record_id}.jpg"
        elif defect == "null_id":
            record_id = None
        elif defect == "empty_text":
            title, description = ("", "") if j % 2 == 0 else ("  ", " ")
        elif defect == "overlong_description":
            description = _overlong(description, bad_rng)
        elif defect == "garbled_caption":
            title, description = garbled_text(bad_rng, 12), garbled_text(bad_rng, 80)
        elif defect == "invalid_date":
            created_at = ("2026-02-30", "not-a-date", "2026-13-01", "yesterday")[j % 4]
        elif defect == "date_out_of_range":
            shift = int(bad_rng.integers(30, 400))
            created_at = day_to_date(window[0], -shift) if j % 2 == 0 else day_to_date(window[1], shift)
        if needs_image:
            bad.jobs.append((str(images_dir / f"{pin_id}.jpg"), scene, render_seed + j))
        if defect in ("corrupt_jpeg", "not_an_image"):
            bad.file_defects.append((images_dir / f"{pin_id}.jpg", defect))
        bad.rows.append((record_id, image_path, title, description, created_at))
        bad.record_ids.append(record_id)
        bad.after.append(original)
    return bad


def damage_images(file_defects: list[tuple[Path, str]], bad_rng: np.random.Generator) -> None:
    """Turn rendered images into the files their defect promises."""
    for path, defect in file_defects:
        data = path.read_bytes()
        if defect == "corrupt_jpeg":  # cut off mid-scan: the header parses, the pixels do not
            path.write_bytes(data[: int(len(data) * bad_rng.uniform(0.2, 0.6))])
        else:
            noise = bad_rng.integers(0, 256, size=int(bad_rng.integers(200, 2000)), dtype=np.uint8).tobytes()
            path.write_bytes(b"<html><body>404 Not Found</body></html>\n" + noise)


def main_value_index(scenes: list[list[PlacedObject]]) -> np.ndarray:
    """[n_pins, n_attributes] value index of each scene's main object."""
    return np.array(
        [[ATTRIBUTES[name].index(getattr(scene[0].spec, name)) for name in ATTRIBUTE_NAMES] for scene in scenes],
        dtype=np.int64,
    ).reshape(len(scenes), len(ATTRIBUTE_NAMES))


def assemble_pins(
    rows: list[tuple], objects: list[tuple], mentions: list[tuple], bad: BadPins, defects: list[str],
    bad_rng: np.random.Generator,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The raw pins (bad rows interleaved), pin_objects, caption_attributes and bad records."""
    good = pd.DataFrame(rows, columns=PIN_COLUMNS, dtype=object)
    pins, positions = interleave(good, pd.DataFrame(bad.rows, columns=PIN_COLUMNS, dtype=object), bad_rng, bad.after)
    return (
        pins,
        pd.DataFrame(objects, columns=PIN_OBJECT_COLUMNS),
        pd.DataFrame(mentions, columns=["pin_id", "attribute", "value"]),
        bad_records_frame("pins", positions, bad.record_ids, defects),
    )


def generate_pins(out_root: Path, cfg: WorldConfig, rng: np.random.Generator, progress: bool = True,
                  workers: int | None = None) -> PinWorld:
    images_dir = Path(out_root) / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    n = cfg.n_pins
    bad_rng = split_rng(rng)  # bad rows draw apart, so the good ones do not depend on them
    defects = assign_defects("pins", n, cfg.bad_rate, bad_rng)
    width = id_width(n + len(defects), 6)
    render_seed = int(rng.integers(2**62))
    dates = [day_to_date(cfg.start_date, d) for d in range(cfg.n_days)]

    # Good pins: ids in order of creation, like a real id sequence.
    days = np.sort(rng.integers(0, cfg.n_days, size=n))
    pin_ids = [format_id("p", i + 1, width) for i in range(n)]
    scenes = [sample_scene(rng, cfg.max_objects_per_pin) for _ in range(n)]
    rows, objects, mentions, jobs = describe_pins(
        pin_ids, scenes, [dates[d] for d in days], images_dir, render_seed, rng, cfg.typo_rate
    )
    # Bad pins: extra rows with ids after the good ones, each with exactly one defect.
    bad = bad_pins(defects, n + 1, width, pin_ids, dates, (dates[0], dates[-1]), images_dir,
                   render_seed + n, bad_rng, cfg)
    render_images(jobs + bad.jobs, cfg.image_size, progress, workers)
    damage_images(bad.file_defects, bad_rng)
    pins, pin_objects, caption_attributes, bad_records = assemble_pins(rows, objects, mentions, bad, defects, bad_rng)
    return PinWorld(
        pins=pins,
        pin_objects=pin_objects,
        caption_attributes=caption_attributes,
        bad_records=bad_records,
        pin_ids=pin_ids,
        days=days,
        main_values=main_value_index(scenes),
        n_bad_ids=len(defects),
    )


# --------------------------------------------------------------------------------------
# boards


@dataclass
class BoardWorld:
    boards: pd.DataFrame
    board_pins: pd.DataFrame
    board_themes: pd.DataFrame  # truth
    board_saves: pd.DataFrame  # truth, good board_pins rows in table order
    bad_records: pd.DataFrame


def sample_themes(n_boards: int, pins: PinWorld, rng: np.random.Generator) -> np.ndarray:
    """Themes over 1-2 attributes, favouring the ones captions tend to leave out.

    Returns [n_boards, n_attributes] value indices, -1 where the theme does not care. The
    values are those of a random pin's main object, so every theme matches some pins; the
    pin is drawn among those no earlier theme fits, so that few boards still cover most pins.
    """
    weights = np.array([1.0 - MENTION_PROBABILITY[name] for name in ATTRIBUTE_NAMES])
    themes = np.full((n_boards, len(ATTRIBUTE_NAMES)), -1, dtype=np.int64)
    covered = np.zeros(len(pins.pin_ids), dtype=bool)
    for b in range(n_boards):
        n_attributes = 1 if rng.random() < 0.6 else 2
        chosen = rng.choice(len(ATTRIBUTE_NAMES), size=n_attributes, replace=False, p=weights / weights.sum())
        uncovered = np.flatnonzero(~covered)
        example = pins.main_values[rng.choice(uncovered) if len(uncovered) else rng.integers(len(covered))]
        themes[b, chosen] = example[chosen]
        covered |= theme_matches(themes[b], pins.main_values)
    return themes


def theme_matches(theme: np.ndarray, main_values: np.ndarray) -> np.ndarray:
    """Which rows of main_values (one object per row) fit the theme (-1: any value)."""
    return np.all((theme == -1) | (main_values == theme), axis=-1)


def _theme_names(theme: np.ndarray) -> dict[str, str]:
    return {name: ATTRIBUTES[name][v] for name, v in zip(ATTRIBUTE_NAMES, theme) if v >= 0}


def zipf_popularity(rank: np.ndarray) -> np.ndarray:
    """How strongly a board draws saves, from its popularity rank (0: the most popular)."""
    return 1.0 / (1.0 + rank) ** 1.1


def pick_boards(
    main_values: np.ndarray, themes: np.ndarray, popularity: np.ndarray, rng: np.random.Generator,
    progress: bool = False,
) -> list[set[int]]:
    """On-theme saves: each pin (a row of main_values) is saved, with probability
    SAVED_PIN_FRACTION, to 1 + Poisson(EXTRA_BOARDS_PER_PIN) boards among those whose
    theme its main object fits, chosen by popularity. Returns each board's set of rows."""
    matching_boards: dict[tuple, np.ndarray] = {}  # pins with equal main objects share the list
    members: list[set[int]] = [set() for _ in range(len(themes))]
    for p in tqdm(range(len(main_values)), desc="board saves", unit="pin", disable=not progress):
        key = tuple(main_values[p])
        if key not in matching_boards:
            matching_boards[key] = np.flatnonzero(theme_matches(themes, main_values[p]))
        candidates = matching_boards[key]
        if len(candidates) == 0 or rng.random() >= SAVED_PIN_FRACTION:
            continue
        k = min(len(candidates), 1 + int(rng.poisson(EXTRA_BOARDS_PER_PIN)))
        w = popularity[candidates]
        for b in rng.choice(candidates, size=k, replace=False, p=w / w.sum()):
            members[int(b)].add(p)
    return members


def draw_off_theme(n_on_theme: int, non_matching: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Off-theme saves for a board with ``n_on_theme`` on-theme ones, drawn among the
    ``non_matching`` pins, so that they make up ``rate`` of the board's saves on average."""
    n_off = int(rng.binomial(n_on_theme, rate / (1.0 - rate))) if rate > 0 else 0
    return rng.choice(non_matching, size=min(n_off, len(non_matching)), replace=False)


def bad_save_rows(
    good_saves: pd.DataFrame, defects: list[str], bad_rng: np.random.Generator,
    unknown_board_start: int, board_width: int, unknown_pin_start: int, pin_width: int,
) -> tuple[list[tuple], list[str]]:
    """Copies of random good saves that point at a board or pin that exists nowhere: ids
    numbered from ``unknown_*_start``, which the caller keeps clear of every id in use."""
    bad_saves, bad_save_ids = [], []
    for j, defect in enumerate(defects):
        template = good_saves.iloc[int(bad_rng.integers(len(good_saves)))]
        board_id, pin_id = template["board_id"], template["pin_id"]
        if defect == "unknown_board":
            board_id = format_id("b", unknown_board_start + j, board_width)
        else:
            pin_id = format_id("p", unknown_pin_start + j, pin_width)
        bad_saves.append((board_id, pin_id, template["saved_at"]))
        bad_save_ids.append(f"{board_id}:{pin_id}")
    return bad_saves, bad_save_ids


def generate_boards(cfg: WorldConfig, rng: np.random.Generator, pins: PinWorld, progress: bool = True) -> BoardWorld:
    n_boards, n_pins = cfg.n_boards, len(pins.pin_ids)
    bad_rng = split_rng(rng)  # bad rows draw apart, so the good ones do not depend on them
    board_defects = assign_defects("boards", n_boards, cfg.bad_rate, bad_rng)
    width = id_width(n_boards + len(board_defects), 4)
    board_ids = [format_id("b", i + 1, width) for i in range(n_boards)]
    themes = sample_themes(n_boards, pins, rng)
    # Zipf popularity: a few boards collect most saves. Broad themes ("all things blue")
    # tend to be the popular ones, so the huge boards have enough pins to be huge.
    breadth = np.array([theme_matches(theme, pins.main_values).sum() for theme in themes])
    rank = np.empty(n_boards, dtype=np.int64)
    rank[np.argsort(-breadth * rng.lognormal(0.0, 1.0, size=n_boards), kind="stable")] = np.arange(n_boards)
    popularity = zipf_popularity(rank)
    # Boards are mostly created early; every save comes after both the pin and the board.
    board_days = np.floor(rng.random(n_boards) ** 2 * cfg.n_days).astype(np.int64)

    # Each pin picks boards among those whose theme its main object fits, by popularity.
    members = pick_boards(pins.main_values, themes, popularity, rng, progress)

    saves = []  # (board, pin, on_theme)
    for b in range(n_boards):
        is_match = theme_matches(themes[b], pins.main_values)
        matching = np.flatnonzero(is_match)
        missing = min(MIN_ON_THEME_PINS, len(matching)) - len(members[b])
        if missing > 0:  # no board is left empty by the popularity draw
            free = np.setdiff1d(matching, np.fromiter(members[b], dtype=np.int64, count=len(members[b])))
            members[b].update(int(p) for p in rng.choice(free, size=missing, replace=False))
        on_theme = sorted(members[b])
        # Off-theme saves at the configured share of the board's saves.
        off_theme = draw_off_theme(len(on_theme), np.flatnonzero(~is_match), cfg.off_theme_rate, rng)
        saves += [(b, p, True) for p in on_theme] + [(b, int(p), False) for p in sorted(off_theme)]

    save_board = np.array([s[0] for s in saves], dtype=np.int64)
    save_pin = np.array([s[1] for s in saves], dtype=np.int64)
    earliest = np.maximum(board_days[save_board], pins.days[save_pin])
    save_days = np.minimum(earliest + rng.geometric(0.4, size=len(saves)) - 1, cfg.n_days - 1)
    order = np.lexsort((save_pin, save_board, save_days))  # a chronological save log
    dates = [day_to_date(cfg.start_date, d) for d in range(cfg.n_days)]
    good_saves = pd.DataFrame(
        {
            "board_id": [board_ids[save_board[i]] for i in order],
            "pin_id": [pins.pin_ids[save_pin[i]] for i in order],
            "saved_at": [dates[save_days[i]] for i in order],
        },
        dtype=object,
    )
    on_theme_flags = np.array([saves[i][2] for i in order], dtype=bool)

    # Board rows, and the bad ones.
    texts = [board_text(_theme_names(theme), rng) for theme in themes]
    good_boards = pd.DataFrame(
        [(board_ids[b], *texts[b], dates[board_days[b]]) for b in range(n_boards)],
        columns=["board_id", "name", "description", "created_at"],
        dtype=object,
    )
    bad_rows, bad_ids, after = [], [], []
    for j, defect in enumerate(board_defects):
        board_id = format_id("b", n_boards + j + 1, width)
        theme = themes[int(bad_rng.integers(n_boards))]
        name, description = board_text(_theme_names(theme), bad_rng)
        original = -1
        if defect == "duplicate_id":
            original = int(bad_rng.integers(n_boards))
            board_id = board_ids[original]
        elif defect == "null_id":
            board_id = None
        elif defect == "empty_name":
            name = ("", "   ")[j % 2]
        bad_rows.append((board_id, name, description, dates[int(bad_rng.integers(cfg.n_days))]))
        bad_ids.append(board_id)
        after.append(original)
    bad_boards = pd.DataFrame(bad_rows, columns=good_boards.columns, dtype=object)
    boards, board_positions = interleave(good_boards, bad_boards, bad_rng, after)

    # Saves that point at boards or pins that do not exist anywhere.
    save_defects = assign_defects("board_pins", len(good_saves), cfg.bad_rate, bad_rng)
    unknown_board_start = n_boards + len(board_defects) + 1
    unknown_pin_start = n_pins + pins.n_bad_ids + 1
    pin_width = len(pins.pin_ids[0]) - 1
    bad_saves, bad_save_ids = bad_save_rows(
        good_saves, save_defects, bad_rng, unknown_board_start, width, unknown_pin_start, pin_width
    )
    board_pins, save_positions = interleave(
        good_saves, pd.DataFrame(bad_saves, columns=good_saves.columns, dtype=object), bad_rng
    )

    board_themes = pd.DataFrame(
        [(board_ids[b], name, value) for b in range(n_boards) for name, value in _theme_names(themes[b]).items()],
        columns=["board_id", "attribute", "value"],
    )
    board_saves = good_saves[["board_id", "pin_id"]].assign(on_theme=on_theme_flags)
    return BoardWorld(
        boards=boards,
        board_pins=board_pins,
        board_themes=board_themes,
        board_saves=board_saves,
        bad_records=pd.concat(
            [
                bad_records_frame("boards", board_positions, bad_ids, board_defects),
                bad_records_frame("board_pins", save_positions, bad_save_ids, save_defects),
            ],
            ignore_index=True,
        ),
    )


# --------------------------------------------------------------------------------------
# users


# Each (attribute, value) pair gets one column in the users' affinity matrix.
VALUE_OFFSETS = np.cumsum([0] + [len(ATTRIBUTES[name]) for name in ATTRIBUTE_NAMES])[:-1]
N_VALUES = sum(len(ATTRIBUTES[name]) for name in ATTRIBUTE_NAMES)


@dataclass
class UserWorld:
    users: pd.DataFrame
    user_affinities: pd.DataFrame  # truth, non-zero entries
    bad_records: pd.DataFrame
    user_ids: list[str]
    signup_days: np.ndarray  # day index; negative: before the world starts
    bias: np.ndarray  # [n_users]
    affinity: np.ndarray  # [n_users, N_VALUES]: her community's profile plus her quirks
    community: np.ndarray  # [n_users] taste community of each user
    n_bad_ids: int


def draw_affinities(rng: np.random.Generator, count_range: tuple[int, int]) -> np.ndarray:
    """[N_VALUES] affinities: a count in ``count_range`` (inclusive) of random attribute
    values, each liked (+) with AFFINITY_LIKE_PROBABILITY or disliked (-), magnitude uniform
    in AFFINITY_MAGNITUDE; a value drawn twice keeps the last draw."""
    affinity = np.zeros(N_VALUES)
    for _ in range(int(rng.integers(count_range[0], count_range[1] + 1))):
        a = int(rng.integers(len(ATTRIBUTE_NAMES)))
        v = int(rng.integers(len(ATTRIBUTES[ATTRIBUTE_NAMES[a]])))
        sign = 1.0 if rng.random() < AFFINITY_LIKE_PROBABILITY else -1.0
        affinity[VALUE_OFFSETS[a] + v] = sign * rng.uniform(*AFFINITY_MAGNITUDE)
    return affinity


def generate_users(cfg: WorldConfig, rng: np.random.Generator) -> UserWorld:
    n = cfg.n_users
    bad_rng = split_rng(rng)  # bad rows draw apart, so the good ones do not depend on them
    defects = assign_defects("users", n, cfg.bad_rate, bad_rng)
    width = id_width(n + len(defects), 4)
    user_ids = [format_id("u", i + 1, width) for i in range(n)]
    # Most users signed up before the world starts, some during it.
    joined_before = rng.random(n) < 0.8
    signup_days = np.where(joined_before, -rng.integers(1, 731, size=n), rng.integers(0, cfg.n_days, size=n))
    countries = rng.choice(len(COUNTRIES), size=n, p=np.array(COUNTRY_WEIGHTS) / sum(COUNTRY_WEIGHTS))

    bias = rng.normal(USER_BIAS_MEAN, USER_BIAS_STD, size=n)
    profiles = np.stack([draw_affinities(rng, AFFINITIES_PER_COMMUNITY) for _ in range(cfg.taste_communities)])
    community = rng.integers(cfg.taste_communities, size=n)
    affinity = profiles[community] + np.stack([draw_affinities(rng, AFFINITIES_PER_USER) for _ in range(n)])
    affinity_rows = []
    for u in range(n):
        for a, name in enumerate(ATTRIBUTE_NAMES):
            for v, value in enumerate(ATTRIBUTES[name]):
                if affinity[u, VALUE_OFFSETS[a] + v] != 0.0:
                    affinity_rows.append((user_ids[u], name, value, float(affinity[u, VALUE_OFFSETS[a] + v])))

    good = pd.DataFrame(
        {
            "user_id": user_ids,
            "country": [COUNTRIES[c] for c in countries],
            "signup_date": [day_to_date(cfg.start_date, d) for d in signup_days],
        },
        dtype=object,
    )
    bad_rows, bad_ids, after = [], [], []
    for j, defect in enumerate(defects):
        original = -1
        if defect == "duplicate_id":
            original = int(bad_rng.integers(n))
            user_id = user_ids[original]
        else:
            user_id = None
        country = COUNTRIES[int(bad_rng.integers(len(COUNTRIES)))]
        bad_rows.append((user_id, country, day_to_date(cfg.start_date, -int(bad_rng.integers(1, 365)))))
        bad_ids.append(user_id)
        after.append(original)
    users, positions = interleave(good, pd.DataFrame(bad_rows, columns=good.columns, dtype=object), bad_rng, after)
    return UserWorld(
        users=users,
        user_affinities=pd.DataFrame(affinity_rows, columns=["user_id", "attribute", "value", "affinity"]),
        bad_records=bad_records_frame("users", positions, bad_ids, defects),
        user_ids=user_ids,
        signup_days=signup_days,
        bias=bias,
        affinity=affinity,
        community=community,
        n_bad_ids=len(defects),
    )


# --------------------------------------------------------------------------------------
# impressions and clicks


# A cold pin is shown 0, 1 or 2 times in all by the feed, with these probabilities.
COLD_IMPRESSION_PROBABILITIES = (0.5, 0.3, 0.2)
# Spread of the lognormal popularity of warm pins and activity of users.
EXPOSURE_SIGMA = 0.8
ACTIVITY_SIGMA = 0.8
INTERACTION_COLUMNS = ["impression_id", "user_id", "pin_id", "date", "position", "clicked"]


@dataclass
class InteractionWorld:
    interactions: pd.DataFrame
    impressions: pd.DataFrame  # truth, good rows in table order
    bad_records: pd.DataFrame
    mean_p_click: float
    n_exploration: int  # good impressions from exploration (the last block of the log)
    # Latent state that no file records, kept for ``world advance`` (which replays this stage):
    quality: np.ndarray  # [n_pins] item quality of each good pin
    activity: np.ndarray  # [n_users] how often each user is shown things, relative to others


def cold_impression_counts(n_cold: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of ``n_cold`` cold pins is shown by the feed: most never, some once or twice."""
    return rng.choice(len(COLD_IMPRESSION_PROBABILITIES), size=n_cold, p=COLD_IMPRESSION_PROBABILITIES)


# Exploration. A feed that shows pins by their popularity learns nothing about new ones, so
# real platforms set aside part of each day's traffic to show fresh items; without it a pin
# created after the training cut-off has 0-2 impressions, too few for any cold-start CTR
# model to be scored on. The rule, the same for the generated days and for `world advance`:
# - a share of each day's impressions, ``WorldConfig.exploration_share``, is exploration:
#   round(feed * share / (1 - share)) impressions on top of the day's ``feed`` impressions;
# - they go to the day's new pins, those in their first ``cold_days`` days (created on the
#   day or the cold_days - 1 days before it), never before a pin exists; among them only the
#   pins the feed serves, those it shows at least once (a pin the feed never shows stays
#   unseen: pins that never reach serving exist, and evaluations count them);
# - each one shows a new pin chosen uniformly to a user drawn by activity among the users
#   who have signed up, at a uniform position; the click comes from ``draw_clicks``.
# Exploration draws from its own split stream after every draw of the feed, and its rows
# follow the feed's in the log, so the feed's impressions are the same as without it.


def exploration_count(n_feed: int | np.ndarray, share: float) -> np.ndarray:
    """Exploration impressions of days with ``n_feed`` feed impressions each: ``share`` of
    each day's impressions, feed and exploration together."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"exploration_share must be in [0, 1), got {share}")
    return np.round(np.asarray(n_feed, dtype=np.float64) * share / (1.0 - share)).astype(np.int64)


def exploration_pool(pin_days: np.ndarray, day: int, cold_days: int, served: np.ndarray) -> np.ndarray:
    """Indices of the pins explored on ``day``: created within its last ``cold_days`` days
    and served by the feed (``served``, row-aligned with ``pin_days``)."""
    return np.flatnonzero((pin_days <= day) & (pin_days > day - cold_days) & served)


def draw_exploration(
    rng: np.random.Generator, n: int, pool: np.ndarray, eligible_users: np.ndarray, activity: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(pin, user) of ``n`` exploration impressions of one day: pins uniform over ``pool``,
    users by ``activity`` among ``eligible_users``. Empty when the pool or the users are."""
    if n == 0 or len(pool) == 0 or len(eligible_users) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    weights = activity[eligible_users]
    pin = pool[rng.integers(len(pool), size=n)]
    user = rng.choice(eligible_users, size=n, p=weights / weights.sum())
    return pin, user


def draw_clicks(
    rng: np.random.Generator, users: UserWorld, user: np.ndarray, position: np.ndarray,
    quality: np.ndarray, main_values: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The click model: p = σ(user bias + position bias + item quality + Σ user–attribute
    affinities + noise), for impressions of items with ``quality`` and ``main_values``
    (row-aligned with ``user``). Returns (p_click, clicked)."""
    logit = users.bias[user] + np.asarray(POSITION_BIAS)[position] + quality
    logit += users.affinity[user[:, None], VALUE_OFFSETS[None, :] + main_values].sum(axis=1)
    logit += rng.normal(0.0, CLICK_NOISE_STD, size=len(user))
    p_click = 1.0 / (1.0 + np.exp(-logit))
    clicked = (rng.random(len(user)) < p_click).astype(np.int64)
    return p_click, clicked


def bad_interaction_rows(
    good: pd.DataFrame, defects: list[str], bad_rng: np.random.Generator, first_number: int, width: int,
    unknown_user_start: int, user_width: int, unknown_pin_start: int, pin_width: int,
) -> tuple[pd.DataFrame, list[str]]:
    """Copies of random good impressions, each with one defect and a new id numbered from
    ``first_number``; unknown users and pins are numbered from ``unknown_*_start``."""
    bad_rows, bad_ids = [], []
    for j, defect in enumerate(defects):
        row = good.iloc[int(bad_rng.integers(len(good)))].to_dict()
        row["impression_id"] = format_id("i", first_number + j, width)
        if defect == "unknown_user":
            row["user_id"] = format_id("u", unknown_user_start + j, user_width)
        elif defect == "unknown_pin":
            row["pin_id"] = format_id("p", unknown_pin_start + j, pin_width)
        elif defect == "negative_position":
            row["position"] = -int(bad_rng.integers(1, 5))
        elif defect == "invalid_clicked":
            row["clicked"] = (2, -1, 7)[j % 3]
        elif defect == "invalid_date":
            row["date"] = ("2026-02-30", "not-a-date", "2026-13-01", "")[j % 4]
        bad_rows.append(row)
        bad_ids.append(row["impression_id"])
    bad = pd.DataFrame(bad_rows, columns=good.columns).astype({"position": np.int64, "clicked": np.int64})
    return bad, bad_ids


@dataclass
class ImpressionLog:
    """One block of the impressions log: raw rows (good and bad), truth, bad records."""

    interactions: pd.DataFrame
    impressions: pd.DataFrame
    bad_records: pd.DataFrame  # row_index within this block
    width: int  # digits of its ids
    n_defects: int


def log_block(
    cfg: WorldConfig, pins: PinWorld, users: UserWorld, shown: dict[str, np.ndarray], is_exploration: bool,
    first_number: int, width: int | None, n_earlier_defects: int, bad_rng: np.random.Generator,
) -> ImpressionLog:
    """Impressions ``shown`` (arrays user, pin, day, position, clicked, p_click, is_cold,
    row-aligned) as a daily log with ids from ``first_number``, and their share of bad rows
    (unknown users and pins numbered past the ``n_earlier_defects`` of earlier blocks).
    ``width``: the ids' digits, None to size them for this block."""
    n, n_users, n_pins = len(shown["pin"]), len(users.user_ids), len(pins.pin_ids)
    order = np.argsort(shown["day"], kind="stable")  # a daily log
    defects = assign_defects("interactions", n, cfg.bad_rate, bad_rng)
    width = id_width(first_number - 1 + n + len(defects), 7) if width is None else width
    impression_ids = [format_id("i", first_number + k, width) for k in range(n)]
    dates = [day_to_date(cfg.start_date, d) for d in range(cfg.n_days)]
    good = pd.DataFrame(
        {
            "impression_id": impression_ids,
            "user_id": [users.user_ids[u] for u in shown["user"][order]],
            "pin_id": [pins.pin_ids[p] for p in shown["pin"][order]],
            "date": [dates[d] for d in shown["day"][order]],
            "position": shown["position"][order].astype(np.int64),
            "clicked": shown["clicked"][order],
        }
    )
    impressions = pd.DataFrame(
        {"impression_id": impression_ids, "p_click": shown["p_click"][order],
         "is_cold_item": shown["is_cold"][order], "is_exploration": np.full(n, is_exploration)}
    )
    user_width, pin_width = len(users.user_ids[0]) - 1, len(pins.pin_ids[0]) - 1
    bad, bad_ids = bad_interaction_rows(
        good, defects, bad_rng, first_number + n, width,
        n_users + users.n_bad_ids + 1 + n_earlier_defects, user_width,
        n_pins + pins.n_bad_ids + 1 + n_earlier_defects, pin_width,
    )
    interactions, positions = interleave(good, bad, bad_rng)
    return ImpressionLog(interactions, impressions, bad_records_frame("interactions", positions, bad_ids, defects),
                         width, len(defects))


def generate_interactions(
    cfg: WorldConfig, rng: np.random.Generator, pins: PinWorld, users: UserWorld
) -> InteractionWorld:
    n_pins, n_users = len(pins.pin_ids), len(users.user_ids)
    bad_rng = split_rng(rng)  # bad rows draw apart, so the good ones do not depend on them
    first_cold_day = cfg.n_days - cfg.cold_days
    is_cold = pins.days >= first_cold_day

    # The feed. Cold pins are barely shown: most never, some once or twice.
    cold_pins = np.flatnonzero(is_cold)
    cold_counts = cold_impression_counts(len(cold_pins), rng)
    cold_shown = np.repeat(cold_pins, cold_counts)[: cfg.n_impressions]
    # Warm pins are shown by popularity, and in proportion to the days they have existed.
    warm_pins = np.flatnonzero(~is_cold)
    exposure = rng.lognormal(0.0, EXPOSURE_SIGMA, size=len(warm_pins)) * (cfg.n_days - pins.days[warm_pins])
    warm_shown = rng.choice(warm_pins, size=cfg.n_impressions - len(cold_shown), p=exposure / exposure.sum())
    pin = np.concatenate([warm_shown, cold_shown])
    n = len(pin)

    activity = rng.lognormal(0.0, ACTIVITY_SIGMA, size=n_users)
    user = rng.choice(n_users, size=n, p=activity / activity.sum())
    earliest = np.maximum(pins.days[pin], np.maximum(users.signup_days[user], 0))
    day = rng.integers(earliest, cfg.n_days)
    position = rng.integers(0, N_POSITIONS, size=n)

    quality = rng.normal(0.0, ITEM_QUALITY_STD, size=n_pins)
    p_click, clicked = draw_clicks(rng, users, user, position, quality[pin], pins.main_values[pin])
    feed = {"user": user, "pin": pin, "day": day, "position": position, "clicked": clicked, "p_click": p_click,
            "is_cold": is_cold[pin]}
    blocks = [log_block(cfg, pins, users, feed, False, 1, None, 0, bad_rng)]

    # Exploration (the rule is above ``exploration_count``): its own stream, split off after
    # the feed's last draw; its block follows the feed's in the log. Its ids start past every
    # id the feed's rows could take at any bad rate up to 1 (n good, as many bad), so that
    # they, like every good row, do not depend on how many bad rows there are.
    explore_rng = split_rng(rng)
    explore_bad_rng = split_rng(explore_rng)
    counts = exploration_count(np.bincount(day, minlength=cfg.n_days), cfg.exploration_share)
    served = np.bincount(pin, minlength=n_pins) > 0
    explored = [
        draw_exploration(explore_rng, int(counts[d]), exploration_pool(pins.days, d, cfg.cold_days, served),
                         np.flatnonzero(users.signup_days <= d), activity)
        for d in range(cfg.n_days)
    ]
    e_pin = np.concatenate([p for p, _ in explored])
    e_user = np.concatenate([u for _, u in explored])
    all_p_click = [p_click]
    if len(e_pin):  # no exploration, no block: not even the bad rows every block gets
        e_day = np.concatenate([np.full(len(p), d) for d, (p, _) in enumerate(explored)])
        e_position = explore_rng.integers(0, N_POSITIONS, size=len(e_pin))
        e_p_click, e_clicked = draw_clicks(explore_rng, users, e_user, e_position, quality[e_pin],
                                           pins.main_values[e_pin])
        shown = {"user": e_user, "pin": e_pin, "day": e_day, "position": e_position, "clicked": e_clicked,
                 "p_click": e_p_click, "is_cold": is_cold[e_pin]}
        reserved = n + bad_row_count(n, max(cfg.bad_rate, 1.0), len(DEFECTS["interactions"]))
        blocks.append(log_block(cfg, pins, users, shown, True, reserved + 1, blocks[0].width,
                                blocks[0].n_defects, explore_bad_rng))
        all_p_click.append(e_p_click)

    offset, bad_records = 0, []
    for block in blocks:
        bad_records.append(block.bad_records.assign(row_index=block.bad_records["row_index"] + offset))
        offset += len(block.interactions)
    return InteractionWorld(
        interactions=pd.concat([block.interactions for block in blocks], ignore_index=True),
        impressions=pd.concat([block.impressions for block in blocks], ignore_index=True),
        bad_records=pd.concat(bad_records, ignore_index=True),
        mean_p_click=float(np.concatenate(all_p_click).mean()),
        n_exploration=len(e_pin),
        quality=quality,
        activity=activity,
    )
