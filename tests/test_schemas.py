"""Validation: every kind of bad record is quarantined under its rule, clean rows pass,
rows in = valid + quarantined, writes are atomic, and on the tiny generated world every
injected defect is caught with no false positive."""

from __future__ import annotations

import io
from datetime import date, timedelta
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile

from mmpipe.layout import QUARANTINE_COLUMNS, RAW_TABLES, truth_path
from mmpipe.schemas.expectations import run_expectations
from mmpipe.schemas.quarantine import ValidationResult
from mmpipe.schemas.text_checks import garbled_reason, looks_garbled
from mmpipe.schemas.validate import (
    validate_board_pins,
    validate_boards,
    validate_interactions,
    validate_moment_queries,
    validate_pins,
    validate_users,
    validate_videos,
    validate_world,
    write_result,
)
from mmpipe.world.captions import garbled_text, pin_caption
from mmpipe.world.config import world_config
from mmpipe.world.attributes import ObjectSpec

MIN_DATE, MAX_DATE = "2026-01-01", "2026-01-31"
FPS = 8


# -----------------------------------------------------------------------------
# files and frames built here


def jpeg_bytes(side: int = 32, seed: int = 0, image_format: str = "JPEG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, image_format)
    return buffer.getvalue()


def write_video(path: Path, n_frames: int = 16, rate: int = FPS, side: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        rng = np.random.default_rng(n_frames)
        for index in range(n_frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def good_pin(pin_id: str) -> dict:
    return {"pin_id": pin_id, "image_path": f"images/{pin_id}.jpg", "title": "blue star",
            "description": "A cute blue striped star, perfect wall art.", "created_at": "2026-01-05"}


@pytest.fixture
def raw_root(tmp_path) -> Path:
    """A raw root holding four good pin images (p0..p3) and two good videos (v0, v1)."""
    (tmp_path / "images").mkdir()
    for k in range(4):
        (tmp_path / "images" / f"p{k}.jpg").write_bytes(jpeg_bytes(seed=k))
    for k in range(2):
        write_video(tmp_path / "videos" / f"v{k}.mp4")
    return tmp_path


GOOD_PINS = [good_pin(f"p{k}") for k in range(4)]


def new_pin() -> dict:
    """A fifth pin, clean until a test breaks it (it shows the image of p0)."""
    return {**good_pin("p9"), "image_path": "images/p0.jpg"}


def rules_by_row(result: ValidationResult) -> dict[int, str]:
    return dict(zip(result.quarantine["row_index"], result.quarantine["rule"]))


def assert_only_bad_row_quarantined(result: ValidationResult, n_good: int, rule: str) -> None:
    """The frame was n_good clean rows then one bad row: only the bad one is quarantined."""
    result.check_invariant()
    assert rules_by_row(result) == {n_good: rule}, result.quarantine.to_dict("records")
    assert result.valid["row_index"].tolist() == list(range(n_good))


# -----------------------------------------------------------------------------
# pins


def _truncated(root: Path, row: dict) -> dict:
    data = jpeg_bytes(seed=9)
    (root / "images" / "bad.jpg").write_bytes(data[: len(data) // 2])
    return {**row, "image_path": "images/bad.jpg"}


def _write_image(data: bytes):
    def change(root: Path, row: dict) -> dict:
        (root / "images" / "bad.jpg").write_bytes(data)
        return {**row, "image_path": "images/bad.jpg"}
    return change


def _symlink_out(root: Path, row: dict) -> dict:
    """A good JPEG outside the root, reached through a link inside it."""
    outside = root.parent / f"{root.name}_outside.jpg"
    outside.write_bytes(jpeg_bytes(seed=7))
    (root / "images" / "link.jpg").symlink_to(outside)
    return {**row, "image_path": "images/link.jpg"}


def _symlinked_folder_out(root: Path, row: dict) -> dict:
    outside = root.parent / f"{root.name}_outside"
    outside.mkdir()
    (outside / "p.jpg").write_bytes(jpeg_bytes(seed=7))
    (root / "more_images").symlink_to(outside, target_is_directory=True)
    return {**row, "image_path": "more_images/p.jpg"}


def _set(**changes):
    return lambda root, row: {**row, **changes}


PIN_DEFECTS = {
    "truncated_jpeg": (_truncated, "image_path.decodes"),
    "not_an_image": (_write_image(b"<html>404 Not Found</html>" + bytes(range(256))), "image_path.decodes"),
    "png_named_jpg": (_write_image(jpeg_bytes(image_format="PNG")), "image_path.format"),
    "image_too_small": (_write_image(jpeg_bytes(side=8)), "image_path.size"),
    "missing_image": (_set(image_path="images/nowhere.jpg"), "image_path.file_exists"),
    "path_traversal": (_set(image_path="../../etc/passwd"), "image_path.inside_root"),
    "absolute_path": (_set(image_path="/etc/passwd"), "image_path.inside_root"),
    "dotdot_coming_back_inside": (_set(image_path="images/../images/p0.jpg"), "image_path.inside_root"),
    "windows_separators": (_set(image_path="..\\..\\etc\\passwd"), "image_path.inside_root"),
    "symlink_out_of_root": (_symlink_out, "image_path.inside_root"),
    "symlinked_folder_out_of_root": (_symlinked_folder_out, "image_path.inside_root"),
    "duplicate_id": (_set(pin_id="p1", image_path="images/p1.jpg"), "pin_id.unique_id"),
    "null_id": (_set(pin_id=None), "pin_id.not_nullable"),
    "empty_text": (_set(title="  ", description=""), "has_text"),
    "missing_text": (_set(title=None, description=None), "has_text"),
    "overlong_description": (_set(description="so pretty " * 250), "description.max_chars"),
    "garbled_caption": (_set(title="\x07\ue001\u0301\x1b", description="ok"), "title.not_garbled"),
    "impossible_date": (_set(created_at="2026-13-45"), "created_at.iso_date"),
    "not_a_date": (_set(created_at="not-a-date"), "created_at.iso_date"),
    "february_30": (_set(created_at="2026-02-30"), "created_at.iso_date"),
    "date_before_range": (_set(created_at="2025-06-01"), "created_at.in_date_range"),
    "date_after_range": (_set(created_at="2026-03-01"), "created_at.in_date_range"),
}


@pytest.mark.parametrize("defect", sorted(PIN_DEFECTS))
def test_each_pin_defect_is_quarantined_under_its_rule(raw_root, defect):
    change, rule = PIN_DEFECTS[defect]
    bad_row = change(raw_root, new_pin())
    raw = pd.DataFrame(GOOD_PINS + [bad_row])
    result = validate_pins(raw, raw_root, MIN_DATE, MAX_DATE)
    assert_only_bad_row_quarantined(result, len(GOOD_PINS), rule)


def _pixels(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 64, 3), dtype=np.uint8))


def _phone_exif() -> bytes:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Phone maker", "Phone 12", 6  # make, model, orientation
    return exif.tobytes()


def _without_jfif(data: bytes) -> bytes:
    """The JPEG with its APP0 (JFIF) segment cut out, as camera firmware writes them."""
    assert data[2:4] == b"\xff\xe0"
    length = int.from_bytes(data[4:6], "big")
    return data[:2] + data[4 + length:]


def _saved(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **{"format": "JPEG", **options})
    return buffer.getvalue()


# JPEGs as cameras, phones and print tools write them: all of them must pass.
JPEG_VARIANTS = {
    "exif_app1_no_jfif": lambda: _without_jfif(_saved(_pixels(), exif=_phone_exif())),
    "progressive": lambda: _saved(_pixels(), progressive=True),
    "restart_markers": lambda: _saved(_pixels(), restart_marker_blocks=2),
    "cmyk": lambda: _saved(_pixels().convert("CMYK")),
    "greyscale": lambda: _saved(_pixels().convert("L")),
    "phone_mpo_with_depth_map": lambda: _saved(_pixels(), format="MPO", save_all=True,
                                               append_images=[_pixels(1).convert("L")], exif=_phone_exif()),
}


@pytest.mark.parametrize("variant", sorted(JPEG_VARIANTS))
def test_every_kind_of_jpeg_passes(raw_root, variant):
    data = JPEG_VARIANTS[variant]()
    assert data[:3] == b"\xff\xd8\xff"
    row = _write_image(data)(raw_root, new_pin())
    result = validate_pins(pd.DataFrame(GOOD_PINS + [row]), raw_root, MIN_DATE, MAX_DATE)
    assert result.quarantine.empty, result.quarantine["message"].tolist()
    assert result.valid["row_index"].tolist() == [0, 1, 2, 3, 4]


def _bomb_jpeg(side: int = 60000) -> bytes:
    """A small JPEG whose frame header claims ``side`` x ``side`` pixels."""
    data = bytearray(jpeg_bytes())
    start = data.index(b"\xff\xc0")  # SOF0: marker, length (2), precision (1), height (2), width (2)
    data[start + 5: start + 9] = side.to_bytes(2, "big") * 2
    return bytes(data)


def test_a_decompression_bomb_is_named_as_one(raw_root):
    row = _write_image(_bomb_jpeg())(raw_root, new_pin())
    result = validate_pins(pd.DataFrame(GOOD_PINS + [row]), raw_root, MIN_DATE, MAX_DATE)
    assert rules_by_row(result) == {4: "image_path.decompression_bomb"}
    message = result.quarantine["message"].iloc[0]
    assert "'images/bad.jpg' is a decompression bomb" in message and "corrupt" not in message


def test_clean_pins_pass_typed_with_their_row_index(raw_root):
    result = validate_pins(pd.DataFrame(GOOD_PINS), raw_root, MIN_DATE, MAX_DATE)
    assert result.quarantine.empty and list(result.quarantine.columns) == QUARANTINE_COLUMNS
    assert result.valid["row_index"].tolist() == [0, 1, 2, 3]
    assert result.valid["pin_id"].tolist() == ["p0", "p1", "p2", "p3"]


def test_truncated_jpeg_is_caught_even_when_pillow_is_told_to_tolerate_it(raw_root, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    bad_row = _truncated(raw_root, new_pin())
    result = validate_pins(pd.DataFrame(GOOD_PINS + [bad_row]), raw_root, MIN_DATE, MAX_DATE)
    assert rules_by_row(result) == {4: "image_path.decodes"}
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the process setting is restored


def test_messages_say_what_is_wrong(raw_root):
    raw = pd.DataFrame(GOOD_PINS + [{**new_pin(), "image_path": "../../etc/passwd"}])
    message = validate_pins(raw, raw_root, MIN_DATE, MAX_DATE).quarantine["message"].iloc[0]
    assert "'../../etc/passwd' escapes the data root" in message


@pytest.mark.parametrize("path, words", [
    ("/etc/passwd", "is absolute"),
    ("images/../images/p0.jpg", "contains '..'"),
    ("..\\p0.jpg", "holds a backslash"),
    ("images/link.jpg", "through a symbolic link"),
])
def test_path_messages_name_the_path_and_why(raw_root, path, words):
    _symlink_out(raw_root, new_pin())
    raw = pd.DataFrame(GOOD_PINS + [{**new_pin(), "image_path": path}])
    message = validate_pins(raw, raw_root, MIN_DATE, MAX_DATE).quarantine["message"].iloc[0]
    assert f"image_path: path {path!r}" in message and words in message, message


def test_a_link_inside_the_root_to_a_file_inside_it_is_fine(raw_root):
    (raw_root / "images" / "alias.jpg").symlink_to(raw_root / "images" / "p0.jpg")
    raw = pd.DataFrame(GOOD_PINS + [{**new_pin(), "image_path": "images/alias.jpg"}])
    assert validate_pins(raw, raw_root, MIN_DATE, MAX_DATE).quarantine.empty


def test_a_row_breaking_several_rules_is_one_record_listing_all(raw_root):
    bad_row = {"pin_id": None, "image_path": "../secret.jpg", "title": "", "description": "",
               "created_at": "not-a-date"}
    result = validate_pins(pd.DataFrame(GOOD_PINS + [bad_row]), raw_root, MIN_DATE, MAX_DATE)
    record = result.quarantine.iloc[0]
    assert len(result.quarantine) == 1
    assert record["rule"] == "pin_id.not_nullable"  # first in column order
    for words in ("pin_id is missing", "escapes the data root", "both empty", "not a valid YYYY-MM-DD"):
        assert words in record["message"]


def test_duplicate_id_keeps_the_first_occurrence(raw_root):
    raw = pd.DataFrame([good_pin("p1"), good_pin("p0"), good_pin("p1")])
    result = validate_pins(raw, raw_root, MIN_DATE, MAX_DATE)
    assert rules_by_row(result) == {2: "pin_id.unique_id"}
    assert result.valid["row_index"].tolist() == [0, 1]


def test_dates_default_to_not_in_the_future(raw_root):
    tomorrow = (date.today() + timedelta(days=2)).isoformat()
    raw = pd.DataFrame(GOOD_PINS + [{**new_pin(), "created_at": tomorrow}])
    assert rules_by_row(validate_pins(raw, raw_root)) == {4: "created_at.in_date_range"}


def test_a_table_without_its_columns_is_refused(raw_root):
    with pytest.raises(ValueError, match="pins lacks the column 'created_at'"):
        validate_pins(pd.DataFrame(GOOD_PINS).drop(columns=["created_at"]), raw_root)


# -----------------------------------------------------------------------------
# garbled captions


def test_captions_with_typos_are_not_garbled():
    rng = np.random.default_rng(0)
    for _ in range(300):
        spec = ObjectSpec.sample(rng)
        for text in pin_caption(spec, ["color", "shape", "pattern", "outline"], rng, typo_rate=0.5):
            assert garbled_reason(text) is None, text


@pytest.mark.parametrize("text", [
    "Café crème brûlée, so dreamy 🍰", "e\u0301te\u0301", "line one\nline two\ttab",
    "Vi\u1ec7t Nam", "👩\u200d🎨 art inspo", "Wall art #aesthetic #decoridea",
    # emoji: variation selector U+FE0F (a combining mark), ZWJ sequences with it, keycaps,
    # skin tones, a subdivision flag spelt in tag characters
    "I \u2764\ufe0f this", "\u2764\ufe0f\u200d\U0001f525 hot", "1\ufe0f\u20e3 first pick", "\U0001f44d\U0001f3fd ok",
    "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f football",
    # scripts whose vowel signs are combining marks: Hindi (nukta + vowel sign + anusvara on
    # one consonant in "padhen"), Thai tone marks, Hebrew points, Arabic, CJK
    "\u092a\u0922\u093c\u0947\u0902", "\u0939\u093f\u0902\u0926\u0940 \u092e\u0947\u0902 \u0938\u091c\u093e\u0935\u091f",
    "\u0e19\u0e49\u0e33\u0e15\u0e32\u0e25", "\u05e9\u05c1\u05b8\u05dc\u05d5\u05b9\u05dd", "\u0645\u0631\u062d\u0628\u0627", "日本語のテキスト",
    # Latin-1 text that is not mojibake
    "S\u00c3O PAULO", "na\u00efve caf\u00e9 \u00a92026",
])
def test_ordinary_text_in_many_forms_is_not_garbled(text):
    assert not looks_garbled(text)


def test_generated_garbage_is_always_garbled():
    rng = np.random.default_rng(1)
    for length in (1, 2, 5, 12, 80):
        for _ in range(200):
            assert looks_garbled(garbled_text(rng, length))


@pytest.mark.parametrize("text, reason", [
    ("a\x00b", "control character U+0000 at position 1"),
    ("bad\ufffddecode", "replacement character"),
    ("\u202eevil", "invisible format character U+202E"),
    ("\u0301start", "combining mark with no letter to attach to U+0301 at position 0"),
    ("ok \u0301", "combining mark with no letter to attach to U+0301 at position 3"),
    ("ok\ue000", "private-use character"),
    ("z\u0300\u0301\u0302", "pile of combining marks U+0302 at position 3"),
    ("\u0915\u093c\u0947\u0902\u0901\u0902", "pile of combining marks U+0902 at position 5"),
    ("\ufe0f alone", "variation selector with nothing to select"),
    ("tag\U000e0067 in text", "tag character outside an emoji flag"),
    ("Caf\u00c3\u00a9 cr\u00c3\u00a8me", "mojibake '\u00c3\u00a9' at position 3 (UTF-8 read as cp1252: 'Caf\u00e9 cr\u00e8me')"),
])
def test_odd_characters_are_garbled(text, reason):
    assert reason in garbled_reason(text)


# -----------------------------------------------------------------------------
# boards, saves, users, interactions


GOOD_BOARDS = [{"board_id": f"b{k}", "name": f"blue things {k}", "description": "A board.", "created_at": "2026-01-02"}
               for k in range(3)]


@pytest.mark.parametrize("changes, rule", [
    ({"board_id": "b1"}, "board_id.unique_id"),
    ({"board_id": None}, "board_id.not_nullable"),
    ({"name": "   "}, "name.not_blank"),
    ({"name": None}, "name.not_nullable"),
])
def test_board_defects(changes, rule):
    raw = pd.DataFrame(GOOD_BOARDS + [{**GOOD_BOARDS[0], "board_id": "b9", **changes}])
    assert_only_bad_row_quarantined(validate_boards(raw), len(GOOD_BOARDS), rule)


GOOD_SAVES = [{"board_id": "b0", "pin_id": "p0", "saved_at": "2026-01-03"},
              {"board_id": "b0", "pin_id": "p1", "saved_at": "2026-01-03"},
              {"board_id": "b1", "pin_id": "p0", "saved_at": "2026-01-04"}]


@pytest.mark.parametrize("changes, rule", [
    ({"board_id": "b404"}, "board_id.known"),
    ({"pin_id": "p404"}, "pin_id.known"),
    ({"pin_id": "p1"}, "unique_pair"),
    ({"saved_at": "2026-00-10"}, "saved_at.iso_date"),
])
def test_board_pin_defects(changes, rule):
    raw = pd.DataFrame(GOOD_SAVES + [{"board_id": "b0", "pin_id": "p2", "saved_at": "2026-01-05", **changes}])
    result = validate_board_pins(raw, valid_pin_ids={"p0", "p1", "p2"}, valid_board_ids={"b0", "b1"})
    assert_only_bad_row_quarantined(result, len(GOOD_SAVES), rule)
    if rule == "unique_pair":
        assert result.quarantine["record_id"].iloc[0] == "b0:p1"


GOOD_USERS = [{"user_id": f"u{k}", "country": "US", "signup_date": "2024-05-01"} for k in range(3)]


@pytest.mark.parametrize("changes, rule", [
    ({"user_id": "u2"}, "user_id.unique_id"),
    ({"user_id": None}, "user_id.not_nullable"),
])
def test_user_defects(changes, rule):
    raw = pd.DataFrame(GOOD_USERS + [{**GOOD_USERS[0], **changes}])
    assert_only_bad_row_quarantined(validate_users(raw), len(GOOD_USERS), rule)


GOOD_IMPRESSIONS = [
    {"impression_id": f"i{k}", "user_id": f"u{k % 2}", "pin_id": f"p{k % 3}", "date": "2026-01-06",
     "position": k, "clicked": k % 2}
    for k in range(4)
]


@pytest.mark.parametrize("changes, rule", [
    ({"user_id": "u404"}, "user_id.known"),
    ({"pin_id": "p404"}, "pin_id.known"),
    ({"position": -1}, "position.greater_than_or_equal_to"),
    ({"clicked": 2}, "clicked.isin"),
    ({"date": ""}, "date.iso_date"),
    ({"date": "2026-02-30"}, "date.iso_date"),
    ({"date": "2027-01-06"}, "date.in_date_range"),
    ({"impression_id": "i0"}, "impression_id.unique_id"),
    ({"position": 1.5}, "position.dtype"),
    ({"position": "third"}, "position.dtype"),
])
def test_interaction_defects(changes, rule):
    raw = pd.DataFrame(GOOD_IMPRESSIONS + [{**GOOD_IMPRESSIONS[0], "impression_id": "i9", **changes}])
    result = validate_interactions(raw, {"u0", "u1"}, {"p0", "p1", "p2"}, MIN_DATE, MAX_DATE)
    assert_only_bad_row_quarantined(result, len(GOOD_IMPRESSIONS), rule)
    assert result.valid["position"].dtype == np.int64 and result.valid["clicked"].dtype == np.int64


# -----------------------------------------------------------------------------
# dates given as timestamps, and dates in the future


@pytest.mark.parametrize("values, days", [
    (["2026-01-03 13:45:00", "2026-01-05T08:00:00Z", "2026-01-05T08:00:00.250+01:00"],
     ["2026-01-03", "2026-01-05", "2026-01-05"]),
    (["2026-01-06T23:30:00-05:00", "2026-01-06 23:30"], ["2026-01-07", "2026-01-06"]),  # the UTC day
    (pd.to_datetime(["2026-01-03 13:45", "2026-01-05 08:00"]), ["2026-01-03", "2026-01-05"]),
    (pd.to_datetime(["2026-01-03 13:45", "2026-01-05 20:00"]).tz_localize("US/Pacific"), ["2026-01-03", "2026-01-06"]),
    (["2026-02-30 10:00", "junk", "2026-01-02"], ["2026-02-30 10:00", "junk", "2026-01-02"]),  # left for iso_date
])
def test_timestamps_in_date_columns_count_for_their_utc_day(values, days):
    from mmpipe.schemas.tables import iso_date_strings

    assert iso_date_strings(pd.Series(values)).tolist() == days


def test_timestamped_interactions_validate_and_partition_by_their_own_day():
    """A date column written as timestamps spreads over its days (it once fell back to the
    delivery day, all of it, and was quarantined wholesale)."""
    from mmpipe.partitions import row_days

    stamps = ["2026-01-03T09:15:00Z", "2026-01-04T18:00:00Z", "2026-01-05T00:00:01Z", "2026-01-06T23:59:59Z"]
    raw = pd.DataFrame([{**row, "date": stamp} for row, stamp in zip(GOOD_IMPRESSIONS, stamps)])
    manifest = {"start_date": MIN_DATE, "end_date": MAX_DATE}
    assert row_days("interactions", raw, manifest).tolist() == ["2026-01-03", "2026-01-04", "2026-01-05", "2026-01-06"]
    result = validate_interactions(raw, {"u0", "u1"}, {"p0", "p1", "p2"}, MIN_DATE, MAX_DATE)
    assert result.quarantine.empty, result.quarantine["message"].tolist()
    assert result.valid["date"].tolist() == ["2026-01-03", "2026-01-04", "2026-01-05", "2026-01-06"]
    typed = raw.assign(date=pd.to_datetime(stamps))  # a Parquet timestamp column reads back typed
    assert row_days("interactions", typed, manifest).tolist() == result.valid["date"].tolist()


def test_an_impression_before_its_pin_was_created_has_its_own_rule():
    raw = pd.DataFrame(GOOD_IMPRESSIONS + [{**GOOD_IMPRESSIONS[0], "impression_id": "i9", "pin_id": "p2",
                                             "date": "2026-01-04"}])
    created = {"p0": "2026-01-01", "p1": "2026-01-06", "p2": "2026-01-05"}  # p1 on the very day of i1
    result = validate_interactions(raw, {"u0", "u1"}, set(created), MIN_DATE, MAX_DATE, pin_created=created)
    assert_only_bad_row_quarantined(result, len(GOOD_IMPRESSIONS), "pin_existed")
    assert result.quarantine["message"].iloc[0] == (
        "is dated before its pin was created: date='2026-01-04' but pin 'p2' was created on 2026-01-05")


def test_a_day_partition_names_an_impression_of_a_later_pin_as_too_early_not_unknown(tmp_path):
    """Day by day, the pins of later days are not validated yet; the raw pins table still
    says the pin exists, created after the impression."""
    from mmpipe.partitions import row_days
    from mmpipe.schemas.validate import validate_day

    pins = pd.DataFrame([{**good_pin("p0"), "created_at": "2026-01-02"}, {**good_pin("p1"), "created_at": "2026-01-05"}])
    pins.to_parquet(tmp_path / "pins.parquet")
    raw = pd.DataFrame([
        {**GOOD_IMPRESSIONS[0], "impression_id": "i0", "pin_id": "p0", "date": "2026-01-03"},
        {**GOOD_IMPRESSIONS[0], "impression_id": "i1", "pin_id": "p1", "date": "2026-01-03"},
        {**GOOD_IMPRESSIONS[0], "impression_id": "i2", "pin_id": "p404", "date": "2026-01-03"},
    ])
    days = row_days("interactions", raw, {"start_date": MIN_DATE, "end_date": MAX_DATE})
    parents = {"users": pd.DataFrame({"user_id": ["u0"]}), "pins": pins.iloc[:1]}  # validated up to the day
    result = validate_day("interactions", raw, days, "2026-01-03", tmp_path, parents, MIN_DATE, MAX_DATE)
    assert rules_by_row(result) == {1: "pin_existed", 2: "pin_id.known"}
    assert "pin 'p1' was created on 2026-01-05" in result.quarantine["message"].iloc[0]


TOMORROW = (date.today() + timedelta(days=2)).isoformat()


@pytest.mark.parametrize("table, validate, good, column", [
    ("users", lambda raw: validate_users(raw), GOOD_USERS, "signup_date"),
    ("boards", lambda raw: validate_boards(raw), GOOD_BOARDS, "created_at"),
    ("board_pins", lambda raw: validate_board_pins(raw, {"p0", "p1", "p2"}, {"b0", "b1"}), GOOD_SAVES, "saved_at"),
])
def test_future_dates_are_quarantined(table, validate, good, column):
    bad = {**good[-1], column: TOMORROW}
    if table != "board_pins":
        bad[f"{table[:-1]}_id"] = "new"
    else:
        bad["pin_id"] = "p2"
    result = validate(pd.DataFrame(good + [bad]))
    assert_only_bad_row_quarantined(result, len(good), f"{column}.not_in_future")
    assert f"{column}='{TOMORROW}' is in the future (after " in result.quarantine["message"].iloc[0]


def test_dates_after_the_delivery_window_are_in_the_future():
    raw = pd.DataFrame(GOOD_USERS + [{**GOOD_USERS[0], "user_id": "late", "signup_date": "2026-02-01"}])
    result = validate_users(raw, max_date=MAX_DATE)
    assert_only_bad_row_quarantined(result, len(GOOD_USERS), "signup_date.not_in_future")
    assert "after 2026-01-31, the latest accepted date" in result.quarantine["message"].iloc[0]


# -----------------------------------------------------------------------------
# videos and moment queries


def good_video(video_id: str) -> dict:
    return {"video_id": video_id, "video_path": f"videos/{video_id}.mp4", "title": "a red star moves left",
            "duration_s": 16 / FPS, "fps": FPS, "created_at": "2026-01-07"}


GOOD_VIDEOS = [good_video("v0"), good_video("v1")]


def _truncated_video(root: Path, row: dict) -> dict:
    write_video(root / "videos" / "bad.mp4")
    data = (root / "videos" / "bad.mp4").read_bytes()
    (root / "videos" / "bad.mp4").write_bytes(data[: int(len(data) * 0.3)])
    return {**row, "video_path": "videos/bad.mp4"}


def _noise_video(root: Path, row: dict) -> dict:
    (root / "videos" / "bad.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return {**row, "video_path": "videos/bad.mp4"}


VIDEO_DEFECTS = {
    "truncated_mp4": (_truncated_video, "video_path.decodes"),
    "not_a_video": (_noise_video, "video_path.decodes"),
    "missing_file": (_set(video_path="videos/nowhere.mp4"), "video_path.file_exists"),
    "path_traversal": (_set(video_path="../../etc/passwd"), "video_path.inside_root"),
    "duplicate_id": (_set(video_id="v0", video_path="videos/v0.mp4"), "video_id.unique_id"),
    "wrong_duration": (_set(video_path="videos/v1.mp4", duration_s=30.0), "video_path.duration"),
    "zero_fps": (_set(video_path="videos/v1.mp4", fps=0), "fps.greater_than"),
    "created_in_the_future": (_set(video_path="videos/v1.mp4", created_at=(date.today() + timedelta(days=2)).isoformat()),
                              "created_at.in_date_range"),
}


@pytest.mark.parametrize("defect", sorted(VIDEO_DEFECTS))
def test_each_video_defect_is_quarantined_under_its_rule(raw_root, defect):
    change, rule = VIDEO_DEFECTS[defect]
    raw = pd.DataFrame(GOOD_VIDEOS + [change(raw_root, good_video("v9"))])
    assert_only_bad_row_quarantined(validate_videos(raw, raw_root), len(GOOD_VIDEOS), rule)


GOOD_QUERIES = [{"query_id": "q0", "video_id": "v0", "query": "the red star moves left", "windows": [[0.5, 1.5]]},
                {"query_id": "q1", "video_id": "v1", "query": "a blue disc", "windows": [[0.0, 0.5], [1.0, 2.0]]}]


@pytest.mark.parametrize("changes, rule", [
    ({"windows": [[1.5, 0.5]]}, "windows.end_after_start"),
    ({"windows": [[0.5, 1.0], [1.5, 2.5]]}, "within_video"),
    ({"windows": [[-0.5, 1.0]]}, "windows.start_not_negative"),
    ({"windows": []}, "windows.well_formed"),
    ({"windows": None}, "windows.not_nullable"),
    ({"video_id": "v404"}, "video_id.known"),
    ({"query": "  "}, "query.not_blank"),
    ({"query_id": "q1"}, "query_id.unique_id"),
])
def test_moment_query_defects(changes, rule):
    raw = pd.DataFrame(GOOD_QUERIES + [{**GOOD_QUERIES[0], "query_id": "q9", **changes}])
    result = validate_moment_queries(raw, pd.DataFrame(GOOD_VIDEOS))
    assert_only_bad_row_quarantined(result, len(GOOD_QUERIES), rule)


# -----------------------------------------------------------------------------
# the invariant and the writes


def test_invariant_catches_a_lost_or_doubled_row(raw_root):
    result = validate_pins(pd.DataFrame(GOOD_PINS + [{**new_pin(), "pin_id": None}]), raw_root, MIN_DATE, MAX_DATE)
    result.check_invariant()
    lost = ValidationResult(result.table, result.valid.iloc[1:], result.quarantine, result.n_in)
    with pytest.raises(AssertionError, match="neither valid nor quarantined"):
        lost.check_invariant()
    doubled = ValidationResult(result.table, result.valid, pd.concat([result.quarantine, result.quarantine]), result.n_in)
    with pytest.raises(AssertionError):
        doubled.check_invariant()


def test_write_result_writes_both_tables(raw_root, tmp_path):
    result = validate_pins(pd.DataFrame(GOOD_PINS + [{**new_pin(), "pin_id": None}]), raw_root, MIN_DATE, MAX_DATE)
    counts = write_result(result, tmp_path / "storage")
    assert (counts["rows_in"], counts["rows_valid"], counts["rows_quarantined"]) == (5, 4, 1)
    valid = pd.read_parquet(tmp_path / "storage" / "validated" / "pins.parquet")
    quarantine = pd.read_parquet(tmp_path / "storage" / "quarantine" / "pins.parquet")
    assert valid["row_index"].tolist() == [0, 1, 2, 3]
    assert list(quarantine.columns) == QUARANTINE_COLUMNS and quarantine["row_index"].tolist() == [4]


def test_write_result_never_leaves_a_half_written_file(raw_root, tmp_path, monkeypatch):
    out = tmp_path / "storage"
    first = validate_pins(pd.DataFrame(GOOD_PINS), raw_root, MIN_DATE, MAX_DATE)
    write_result(first, out)
    target = out / "validated" / "pins.parquet"
    before = target.read_bytes()

    def crash_midway(self, path, *args, **kwargs):
        Path(path).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", crash_midway)
    second = validate_pins(pd.DataFrame(GOOD_PINS[:2]), raw_root, MIN_DATE, MAX_DATE)
    with pytest.raises(OSError, match="disk full"):
        write_result(second, out)
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["pins.parquet"]  # no temporary left


# -----------------------------------------------------------------------------
# the tiny generated world, end to end


@pytest.fixture(scope="module")
def tiny_results(tiny_world):
    cfg = world_config("tiny")
    last_day = (date.fromisoformat(cfg.start_date) + timedelta(days=cfg.n_days - 1)).isoformat()
    return validate_world(tiny_world, min_date=cfg.start_date, max_date=last_day)


def test_tiny_world_every_injected_defect_is_quarantined(tiny_world, tiny_results):
    truth = pd.read_parquet(truth_path(tiny_world, "bad_records"))
    assert set(truth["table"]) >= {"pins", "boards", "board_pins", "users", "interactions", "videos", "moment_queries"}
    for table, result in tiny_results.items():
        injected = truth[truth["table"] == table]
        caught = injected["row_index"].isin(result.quarantine["row_index"])
        assert caught.all(), f"{table}: missed {injected[~caught].to_dict('records')}"


def test_tiny_world_has_no_false_positives(tiny_world, tiny_results):
    truth = pd.read_parquet(truth_path(tiny_world, "bad_records"))
    for table, result in tiny_results.items():
        flagged = set(result.quarantine["row_index"])
        injected = set(truth.loc[truth["table"] == table, "row_index"])
        wrongly = result.quarantine[result.quarantine["row_index"].isin(flagged - injected)]
        assert wrongly.empty, f"{table}: {wrongly.to_dict('records')}"


def test_tiny_world_rows_are_conserved(tiny_world, tiny_results):
    assert list(tiny_results) == list(RAW_TABLES)
    for table, result in tiny_results.items():
        result.check_invariant()
        assert result.n_in == len(pd.read_parquet(tiny_world / f"{table}.parquet"))


def test_tiny_world_validated_tables_meet_expectations(tiny_results):
    valid = {table: result.valid for table, result in tiny_results.items()}
    for table in RAW_TABLES:
        report = run_expectations(table, valid[table], valid)
        assert report.success, report.failed()
        assert len(report.results) >= 3


def test_expectations_fail_on_a_broken_table(tiny_results):
    valid = {table: result.valid for table, result in tiny_results.items()}
    always_clicked = valid["interactions"].assign(clicked=1)
    report = run_expectations("interactions", always_clicked, valid)
    assert not report.success
    assert [r["expectation"] for r in report.failed()] == ["expect_column_mean_to_be_between"]

    orphan = pd.concat([valid["board_pins"], pd.DataFrame([{"board_id": "b0001", "pin_id": "p404", "saved_at": "2026-01-02"}])])
    report = run_expectations("board_pins", orphan, valid)
    assert [(r["expectation"], r["column"]) for r in report.failed()] == [("expect_column_values_to_be_in_set", "pin_id")]


def test_tiny_world_passes_the_default_quarantine_rate_policy(tiny_results):
    """The tiny world plants one record of every defect kind, 3 of its 13 boards and 7 of its
    31 videos: more than 20%, yet no evidence of a source worse than 20%."""
    from mmpipe.params import load_params
    from mmpipe.schemas.quarantine import quarantine_rate_verdict

    max_rate = load_params()["validation"]["max_quarantine_rate"]
    for table, result in tiny_results.items():
        verdict = quarantine_rate_verdict(len(result.quarantine), result.n_in, max_rate)
        assert verdict["passed"], (table, verdict)


@pytest.mark.parametrize("bad, rows, passed", [
    (3, 13, True), (8, 13, False),  # a few rows: only a clear excess fails
    (0, 0, True), (1, 1, True),
    (20_100, 100_000, True), (20_500, 100_000, False),  # many rows: the plain share, nearly
])
def test_the_quarantine_rate_verdict_fails_only_on_evidence(bad, rows, passed):
    from mmpipe.schemas.quarantine import quarantine_rate_verdict

    verdict = quarantine_rate_verdict(bad, rows, 0.2)
    assert verdict["passed"] is passed
    assert verdict["quarantine_rate"] == pytest.approx(bad / max(rows, 1))
