"""The standalone moment evaluator (mmpipe.eval.moment): hand-computed cases, the golden
prediction file against moment_detr's own numbers, the JSONL round trip and the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest

from mmpipe import cli
from mmpipe.eval.moment import (
    MAP_IOUS,
    average_precision,
    evaluate_files,
    prediction_record,
    read_jsonl,
    score_predictions,
    score_windows,
    truth_record,
    write_jsonl,
)

GOLDEN = Path(__file__).parent / "data" / "moment"


def spans(*rows):
    return np.asarray(rows, dtype=float).reshape(-1, 3)


def windows(*rows):
    return np.asarray(rows, dtype=float).reshape(-1, 2)


def test_r1_r5_and_miou_by_hand_with_the_best_matching_of_several_windows():
    # q1: first span [7, 9] hits the second window exactly (IoU 1); q2: first span [0, 2] vs
    # [1, 5] is 1/5, the third span [1, 4] is 3/4; q3: nothing overlaps.
    scores = score_windows(["q1", "q2", "q3"],
                           [spans([7, 9, .9], [1, 3, .5]), spans([0, 2, .9], [6, 8, .8], [1, 4, .7]),
                            spans([0, 1, .9])],
                           [windows([1, 3], [7, 9]), windows([1, 5]), windows([4, 6])])
    np.testing.assert_allclose(scores.top1_iou, [1.0, 0.2, 0.0])
    np.testing.assert_allclose(scores.top5_iou, [1.0, 0.75, 0.0])
    metrics = scores.metrics()
    assert metrics["R1@0.7"] == pytest.approx(1 / 3) and metrics["R1@0.3"] == pytest.approx(1 / 3)
    assert metrics["R5@0.7"] == pytest.approx(2 / 3) and metrics["R5@0.5"] == pytest.approx(2 / 3)
    assert metrics["mIoU"] == pytest.approx((1.0 + 0.2 + 0.0) / 3)


def test_average_precision_by_hand():
    # Two true windows; by score: [0, 2] (IoU 1 with the first: TP), [0, 2.2] (IoU 0.91 with the
    # first, already taken, and 0 with the second: FP), [5, 6] (IoU 0.5 with the second).
    truth = windows([0, 2], [5, 7])
    predicted = spans([0, 2, .9], [0, 2.2, .8], [5, 6, .7])
    ap = average_precision(predicted, truth, ious=(0.5, 0.7))
    # IoU 0.5: TP, FP, TP -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1; interpolated AP =
    # 1/2 * 1 + 1/2 * 2/3. IoU 0.7: TP, FP, FP -> 1/2 * 1.
    np.testing.assert_allclose(ap, [0.5 + 1 / 3, 0.5])
    # mAP ranks by score, not by file order; windows past the tenth are not read
    np.testing.assert_allclose(average_precision(predicted[::-1], truth, ious=(0.5, 0.7)), ap)
    eleventh = np.vstack([spans(*[[20 + i, 21 + i, 1.0] for i in range(10)]), spans([0, 2, 0.5])])
    assert average_precision(eleventh, windows([0, 2]), ious=(0.5,))[0] == 0.0
    assert average_precision(eleventh[-2:], windows([0, 2]), ious=(0.5,))[0] == pytest.approx(0.5)


def test_golden_file_scores_as_moment_detr_scores_it():
    expected = json.loads((GOLDEN / "golden_metrics.json").read_text())
    scores = score_predictions(read_jsonl(GOLDEN / "golden_predictions.jsonl"),
                               read_jsonl(GOLDEN / "golden_ground_truth.jsonl"))
    # moment_detr prints percentages with two decimals
    r1 = {f"{iou:g}": round(100 * float((scores.top1_iou >= iou).mean()), 2) for iou in MAP_IOUS}
    assert r1 == {key: pytest.approx(value) for key, value in expected["moment_detr"]["MR-R1"].items()}
    per_threshold = scores.ap.mean(0)
    for iou, value in zip(MAP_IOUS, per_threshold):
        assert 100 * value == pytest.approx(expected["moment_detr"]["MR-mAP"][f"{iou:g}"], abs=0.005)
    metrics = scores.metrics()
    assert 100 * metrics["mAP"] == pytest.approx(expected["moment_detr"]["MR-mAP"]["average"], abs=0.005)
    for key, value in expected["charades"].items():
        assert metrics[key] == pytest.approx(value), key


def test_jsonl_round_trip_and_file_evaluation(tmp_path):
    predictions = [prediction_record("a", "v1", "the red star", [[1, 3, 0.2], [2, 4, 0.9]]),
                   prediction_record("b", "v2", "a blue disc", [[0, 5, 0.5]])]
    truths = [truth_record("a", "v1", "the red star", [[2, 4]], duration=10),
              truth_record("b", "v2", "a blue disc", [[6, 8], [0, 4]])]
    assert predictions[0]["pred_relevant_windows"][0] == [2.0, 4.0, 0.9]  # written best first
    write_jsonl(predictions, tmp_path / "pred.jsonl")
    write_jsonl(truths, tmp_path / "gt.jsonl")
    assert read_jsonl(tmp_path / "pred.jsonl") == predictions and read_jsonl(tmp_path / "gt.jsonl") == truths
    metrics = evaluate_files(tmp_path / "pred.jsonl", tmp_path / "gt.jsonl")
    assert metrics["n_queries"] == 2 and metrics["R1@0.7"] == 1.0 and metrics["mIoU"] == pytest.approx(0.9)


def test_unreadable_or_mismatched_files_say_what_is_wrong(tmp_path):
    truths = [truth_record(1, "v", "q", [[0, 1]]), truth_record(2, "v", "q", [[0, 1]])]
    with pytest.raises(ValueError, match="same queries: 1 without a prediction"):
        score_predictions([prediction_record(1, "v", "q", [[0, 1, 1]])], truths)
    assert score_predictions([prediction_record(1, "v", "q", [[0, 1, 1]])], truths, match_number=False).qids == ["1"]
    with pytest.raises(ValueError, match="has no window"):
        score_predictions([prediction_record(1, "v", "q", []), prediction_record(2, "v", "q", [[0, 1, 1]])], truths)
    with pytest.raises(ValueError, match="ends before it starts"):
        score_predictions([prediction_record(1, "v", "q", [[0, 1, 1]]), {"qid": 2, "pred_relevant_windows":
                                                                            [[3, 2, 1.0]]}], truths)
    (tmp_path / "bad.jsonl").write_text('{"qid": 1}\n\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:3: not valid JSON"):
        read_jsonl(tmp_path / "bad.jsonl")


def test_cli_eval_moments_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert cli.main(["eval-moments", str(GOLDEN / "golden_predictions.jsonl"),
                     str(GOLDEN / "golden_ground_truth.jsonl"), "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    row = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert row[header.index("R1@0.7")] == "0.500" and row[header.index("n_queries")] == "14"
    assert json.loads(out.read_text())["R1@0.5"] == pytest.approx(9 / 14)
    one_query = tmp_path / "one.jsonl"
    one_query.write_text((GOLDEN / "golden_ground_truth.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(SystemExit, match="eval-moments: .*13 not in the ground truth"):
        cli.main(["eval-moments", str(GOLDEN / "golden_predictions.jsonl"), str(one_query)])
    assert cli.main(["eval-moments", str(GOLDEN / "golden_predictions.jsonl"), str(one_query), "--shared-only"]) == 0
