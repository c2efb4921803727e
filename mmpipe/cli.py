"""The ``mmpipe`` command line.

Each command group adds itself to the parser in its own ``add_*_commands`` function and
sets ``func`` on its leaf parsers; ``main`` parses and calls it. To add a command, write
one more such function and list it in ``COMMAND_GROUPS``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_world_commands(subparsers) -> None:
    world = subparsers.add_parser("world", help="the generated multimodal world")
    world_commands = world.add_subparsers(dest="world_command", required=True, metavar="COMMAND")

    generate = world_commands.add_parser(
        "generate",
        help="write a generated world (tables, images, videos, ground truth)",
        description="Generate a world whose truth is known and write it as raw data.",
    )
    generate.add_argument("--scale", default="small", help="tiny, small, medium or large (default: small)")
    generate.add_argument("--out", type=Path, default=Path("data/raw"), help="raw root to write (default: data/raw)")
    generate.add_argument("--seed", type=int, default=None, help="random seed (default: the scale's, 0)")
    generate.add_argument("--bad-rate", type=float, default=None, help="share of deliberately bad rows per table")
    generate.add_argument("--quiet", action="store_true", help="no progress bars")
    generate.add_argument("--workers", type=int, default=None,
                          help="processes rendering images and videos (default: one per CPU); "
                               "the output is identical whatever the number")
    generate.set_defaults(func=run_world_generate)

    advance = world_commands.add_parser(
        "advance",
        help="append the next day(s) of pins, saves, interactions and videos to a generated world",
        description="Deliver the day after the landing zone's end_date (and the next, ...) as a real "
                    "upstream would: new rows appended, old rows untouched, manifest updated last.",
    )
    advance.add_argument("--days", type=int, default=1, help="days to append (default: 1)")
    advance.add_argument("--root", type=Path, default=Path("data/raw"), help="raw root to advance (default: data/raw)")
    advance.add_argument("--quiet", action="store_true", help="no progress bars")
    advance.set_defaults(func=run_world_advance)


def run_world_generate(args: argparse.Namespace) -> int:
    from mmpipe.world.config import world_config
    from mmpipe.world.generate import generate_world

    overrides = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.bad_rate is not None:
        if not 0.0 <= args.bad_rate < 1.0:
            raise SystemExit(f"--bad-rate must be in [0, 1), got {args.bad_rate}")
        overrides["bad_rate"] = args.bad_rate
    try:
        cfg = world_config(args.scale, **overrides)
    except ValueError as error:
        raise SystemExit(str(error)) from None

    started = time.perf_counter()
    summary = generate_world(args.out, cfg, progress=not args.quiet, workers=args.workers)
    elapsed = time.perf_counter() - started

    print(f"world: scale={summary['scale']} seed={summary['seed']} -> {summary['out']} ({elapsed:.1f}s)")
    print(f"{'table':<16}{'rows':>10}{'bad':>8}")
    for table, rows in summary["counts"].items():
        print(f"{table:<16}{rows:>10}{summary['bad_records'][table]:>8}")
    from mmpipe.eval.classification import oracle_auc

    print(f"oracle AUC {oracle_auc(Path(summary['out'])):.4f}, mean p(click) {summary['mean_p_click']:.4f}, "
          f"cold pins from {summary['cutoff_date']}")
    print_video_summary(Path(summary["out"]), summary["video_generation_s"])
    return 0


def print_video_summary(raw_root: Path, generation_s: float | None = None) -> None:
    from mmpipe.eval.video_world import video_world_summary

    videos = video_world_summary(raw_root)
    if not videos["videos"]:
        print("videos: none")
        return
    made = f" made in {generation_s:.0f}s" if generation_s is not None else ""
    print(f"videos: {videos['videos']} ({videos['hours']} h, {videos['duration_s'][0]:g}-{videos['duration_s'][1]:g} s "
          f"each){made}; {videos['moment_queries']} moment queries ({videos['queries_with_two_or_more_windows']} "
          f"with two or more windows), {videos['captions']} captions, {videos['shots']} shots, "
          f"{videos['summary_queries']} summarization queries")
    print(f"held out (test window): {videos['test_videos']} videos, {videos['test_moment_queries']} moment "
          f"queries, {videos['test_captions']} captions, {videos['test_summary_queries']} summarization queries; "
          f"best fixed-span prior R1@0.7 {videos['fixed_prior_r1@0.7']:.3f} on every query, "
          f"{videos['fixed_prior_r1@0.7_test']:.3f} on the test window (span chosen before it)")


def run_world_advance(args: argparse.Namespace) -> int:
    from mmpipe.world.advance import advance

    if args.days < 1:
        raise SystemExit(f"--days must be >= 1, got {args.days}")
    started = time.perf_counter()
    try:
        summary = advance(args.root, args.days, progress=not args.quiet)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"mmpipe world advance: {error}") from None
    elapsed = time.perf_counter() - started

    print(f"world advanced by {len(summary['dates'])} day(s): {', '.join(summary['dates'])} "
          f"-> {summary['root']} ({elapsed:.1f}s)")
    print(f"{'table':<16}{'appended':>10}{'good':>8}{'bad':>8}")
    for table, counts in summary["appended"].items():
        print(f"{table:<16}{counts['rows']:>10}{counts['rows'] - counts['bad']:>8}{counts['bad']:>8}")
    print(f"date window now {summary['start_date']} .. {summary['end_date']}")
    return 0


def add_search_commands(subparsers) -> None:
    search = subparsers.add_parser(
        "search",
        help="nearest pins to a text query or to a pin; with --videos, videos for a text query",
        description="Print the nearest pins (pin_id, score, caption) from the pin index. "
                    "Text queries search image embeddings; pin queries search fused embeddings. "
                    "With --videos, a --text query searches the MAC video index and prints video_id, score, "
                    "the best-matching second of each video and its title. "
                    "Default paths are under the project root.",
    )
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="a text query, e.g. \"crimson striped disc\"")
    query.add_argument("--pin", help="a pin id: find its neighbors (itself excluded)")
    search.add_argument("--videos", action="store_true",
                        help="search videos (MAC) instead of pins, e.g. --videos --text \"a red star moves left\"")
    search.add_argument("--k", type=int, default=10, help="number of results (default: 10)")
    search.add_argument("--model", default=None,
                        help="MLflow model URI or checkpoint directory (default: models:/pinclip@champion, else "
                             "@challenger; with --videos the mac version the video index was built from)")
    search.add_argument("--text-model", type=Path, default=None,
                        help="text tower directory for a checkpoint --model (default: packaged MiniLM)")
    search.add_argument("--index", type=Path, default=None,
                        help="VectorIndex root holding image/ and fused/ (default: storage/index/pins; "
                             "with --videos the root holding video/, default storage/index/videos)")
    search.add_argument("--pins", type=Path, default=None,
                        help="validated pins table or folder of day partitions (default: storage/validated/pins)")
    search.add_argument("--embeddings", type=Path, default=None,
                        help="pin_embeddings parquet file or directory (default: storage/embeddings/pins; "
                             "with --videos the video_embeddings, default storage/embeddings/videos)")
    search.set_defaults(func=run_search)


def run_search(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise SystemExit(f"--k must be >= 1, got {args.k}")
    if args.videos:
        return run_video_search(args)
    from mmpipe.systems.pinclip.serve import PinSearcher, SearchSetupError

    paths = {"index_dir": args.index, "pins_table_path": args.pins, "embeddings": args.embeddings}
    searcher = PinSearcher.from_project(args.model, text_model_dir=args.text_model,
                                        **{name: path for name, path in paths.items() if path is not None})
    try:
        if args.text is not None:
            hits = searcher.search_text(args.text, args.k)
        else:
            hits = searcher.search_pin(args.pin, args.k)
    except SearchSetupError as error:
        raise SystemExit(f"mmpipe search: {error}") from None
    except (KeyError, ValueError) as error:
        raise SystemExit(f"mmpipe search: {error.args[0] if error.args else error}") from None
    for pin_id, score, caption in zip(hits["pin_id"], hits["score"], hits["caption"]):
        print(f"{pin_id}  {score:.4f}  {caption}")
    return 0


def run_video_search(args: argparse.Namespace) -> int:
    """``search --videos --text``: one line per video: video_id, score, best second, title."""
    from mmpipe.systems.mac.serve import SearchSetupError, VideoSearcher

    if args.text is None:
        raise SystemExit("mmpipe search --videos: videos are searched by --text, not --pin")
    if args.pins is not None:
        raise SystemExit("mmpipe search --videos: --pins applies to pin search only")
    paths = {"index_dir": args.index, "embeddings": args.embeddings}
    searcher = VideoSearcher.from_project(args.model, text_model_dir=args.text_model,
                                          **{name: path for name, path in paths.items() if path is not None})
    try:
        hits = searcher.search_text(args.text, args.k)
    except SearchSetupError as error:
        raise SystemExit(f"mmpipe search: {error}") from None
    except (KeyError, ValueError) as error:
        raise SystemExit(f"mmpipe search: {error.args[0] if error.args else error}") from None
    for video_id, score, best_s, title in zip(hits["video_id"], hits["score"], hits["best_s"], hits["title"]):
        print(f"{video_id}  {score:.4f}  {best_s:.1f}s  {title}".rstrip())
    return 0


def add_registry_commands(subparsers) -> None:
    registry = subparsers.add_parser("registry", help="the MLflow model registry")
    commands = registry.add_subparsers(dest="registry_command", required=True, metavar="COMMAND")
    rollback = commands.add_parser(
        "rollback", help="move a system's champion alias back (recorded like a promotion)")
    rollback.add_argument("system", help="a system name, e.g. pinclip")
    rollback.add_argument("--to", default=None, help="the version to serve; default: the champion before this one")
    rollback.set_defaults(func=run_registry_rollback)


def run_registry_rollback(args: argparse.Namespace) -> int:
    from mmpipe.registry.mlflow_registry import configure
    from mmpipe.registry.promotion import rollback
    from mmpipe.systems import spec_named

    try:
        spec = spec_named(args.system)
        decision = rollback(configure(), spec.registered_model, args.to)
    except (KeyError, ValueError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    print(f"{decision.name}@champion: version {decision.previous_champion} -> version {decision.champion} "
          f"({decision.reason})")
    return 0


def add_load_commands(subparsers) -> None:
    load = subparsers.add_parser("load", help="people's own data into a raw landing zone")
    commands = load.add_subparsers(dest="load_command", required=True, metavar="COMMAND")
    videos = commands.add_parser(
        "videos",
        help="a folder of MP4s plus QVHighlights / Charades-STA / MSR-VTT / QFVS-style annotations",
        description="Copy the MP4s of --videos into --out/videos, probe them, read the annotation "
                    "files given, and write the raw tables and manifest validation reads. Records "
                    "that cannot be read go to --out/_load_quarantine.parquet with their line number. "
                    "Formats: mmpipe/loaders/formats.py.",
    )
    videos.add_argument("--videos", type=Path, required=True, help="folder holding the .mp4 files")
    videos.add_argument("--qvhighlights", type=Path, help="moment queries, QVHighlights JSONL")
    videos.add_argument("--charades", type=Path, help="moment queries, Charades-STA 'vid start end##query' lines")
    videos.add_argument("--msrvtt", type=Path, help="captions, MSR-VTT JSON ('sentences' list)")
    videos.add_argument("--qfvs", type=Path, help="shot concepts and summarization queries, QFVS-style JSONL")
    dates = videos.add_mutually_exclusive_group()
    dates.add_argument("--date", help="created_at of every video, YYYY-MM-DD (default: file modification day)")
    dates.add_argument("--dates", type=Path, help="per-video created_at: CSV video_id,created_at or JSON {id: date}")
    videos.add_argument("--hardlink", action="store_true", help="hard-link the videos instead of copying them")
    videos.add_argument("--out", type=Path, required=True, help="landing zone to write, e.g. data/raw")
    videos.set_defaults(func=run_load_videos)


def run_load_videos(args: argparse.Namespace) -> int:
    from mmpipe.loaders import AnnotationFileError, load_videos

    try:
        result = load_videos(args.videos, args.out, qvhighlights=args.qvhighlights, charades=args.charades,
                             msrvtt=args.msrvtt, qfvs=args.qfvs, date=args.date, dates_file=args.dates,
                             link=args.hardlink)
    except (AnnotationFileError, OSError, ValueError) as error:  # missing files, a folder not ours, bad dates
        raise SystemExit(f"mmpipe load videos: {error}") from None

    print(f"loaded {result.rows['videos']} videos -> {result.out} "
          f"(dates {result.manifest['start_date']} .. {result.manifest['end_date']})")
    print(f"{'table':<16}{'rows':>8}")
    for table in ("videos", "moment_queries", "video_captions", "video_shots", "summary_queries"):
        print(f"{table:<16}{result.rows[table]:>8}")
    if result.sources:
        print(f"{'file':<32}{'records':>8}{'rows':>8}{'quarantined':>12}")
        for source in result.sources.values():
            print(f"{source['file']:<32}{source['records']:>8}{source['rows']:>8}{source['quarantined']:>12}")
    for record in result.quarantine.head(10).itertuples():
        print(f"quarantined {record.source_file}:{record.row_index} [{record.rule}] {record.message}")
    if len(result.quarantine) > 10:
        print(f"... {len(result.quarantine) - 10} more in {result.out / result.manifest['quarantine_file']}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    return 0


def add_moment_commands(subparsers) -> None:
    evaluate = subparsers.add_parser(
        "eval-moments",
        help="score moment predictions (QVHighlights-style JSONL) against ground truth",
        description="Print R1/R5 at IoU 0.3/0.5/0.7, mIoU and MR-mAP (moment_detr's standalone evaluation; "
                    "mmpipe/eval/moment.py) of a prediction file against a ground-truth file. Prediction lines: "
                    '{"qid", "query", "vid", "pred_relevant_windows": [[start, end, score], ...]}, best first; '
                    'ground-truth lines: {"qid", ..., "relevant_windows": [[start, end], ...]}.',
    )
    evaluate.add_argument("predictions", type=Path, help="prediction JSONL")
    evaluate.add_argument("ground_truth", type=Path, help="ground-truth JSONL")
    evaluate.add_argument("--shared-only", action="store_true",
                          help="score only the queries both files hold (default: they must hold the same)")
    evaluate.add_argument("--json", type=Path, default=None, help="also write the metrics to this JSON file")
    evaluate.set_defaults(func=run_eval_moments)

    moment = subparsers.add_parser(
        "moment",
        help="where in a stored video a query happens: the top spans by the moment model",
        description="Print the top spans (start s, end s, score) of --query in stored video --video by the "
                    "registered moment model (champion, else challenger), over the frame features of the image "
                    "encoder version it was trained on.",
    )
    moment.add_argument("--video", required=True, help="a video id, e.g. v0042")
    moment.add_argument("--query", required=True, help='e.g. "the red striped circle moves to the left"')
    moment.add_argument("--k", type=int, default=5, help="number of spans (default: 5)")
    moment.add_argument("--model", default=None, help="MLflow model URI (default: models:/moment@champion, "
                                                      "else @challenger)")
    moment.add_argument("--storage", type=Path, default=None, help="storage root (default: <project>/storage)")
    moment.set_defaults(func=run_moment)


def run_eval_moments(args: argparse.Namespace) -> int:
    import json

    from mmpipe.eval.moment import evaluate_files
    from mmpipe.eval.report import metrics_table_markdown
    from mmpipe.io import write_bytes_atomic

    try:
        metrics = evaluate_files(args.predictions, args.ground_truth, match_number=not args.shared_only)
    except (OSError, ValueError) as error:
        raise SystemExit(f"mmpipe eval-moments: {error}") from None
    print(metrics_table_markdown({args.predictions.name: metrics}), end="")
    if args.json is not None:
        write_bytes_atomic((json.dumps(metrics, indent=2) + "\n").encode(), args.json)
    return 0


def run_moment(args: argparse.Namespace) -> int:
    from mmpipe.params import project_root
    from mmpipe.registry.serving import SearchSetupError
    from mmpipe.systems.moment.serve import moment_lookup

    if args.k < 1:
        raise SystemExit(f"--k must be >= 1, got {args.k}")
    try:
        spans, predictor = moment_lookup(args.video, args.query, args.storage or project_root() / "storage",
                                         args.model)
    except (SearchSetupError, FileNotFoundError) as error:
        raise SystemExit(f"mmpipe moment: {error}") from None
    except (KeyError, ValueError) as error:
        raise SystemExit(f"mmpipe moment: {error.args[0] if error.args else error}") from None
    for start, end, score in spans[:args.k]:
        print(f"{start:7.2f}s  {end:7.2f}s  {score:.4f}")
    return 0


def add_summarize_commands(subparsers) -> None:
    summarize = subparsers.add_parser(
        "summarize",
        help="a query-focused summary of a stored video, written as an MP4",
        description="Score the detected shots of stored video --video for --query (concept words, e.g. \"red, "
                    "striped\") with the registered CHAN (champion, else challenger), keep the best under the "
                    "length budget (the model's own unless --share or --seconds), write them concatenated in "
                    "time order to --out (MP4) and print the chosen shots' times.",
    )
    summarize.add_argument("--video", required=True, help="a video id, e.g. v0042")
    summarize.add_argument("--query", required=True, help='concept words, e.g. "red, striped"')
    summarize.add_argument("--out", type=Path, required=True, help="the MP4 to write, e.g. summary.mp4")
    budget = summarize.add_mutually_exclusive_group()
    budget.add_argument("--share", type=float, default=None, help="keep this share of the shots, e.g. 0.4")
    budget.add_argument("--seconds", type=float, default=None, help="keep at most this many seconds")
    summarize.add_argument("--json", type=Path, default=None,
                           help="also write the summary (mmpipe.video_summaries JSON) to this file")
    summarize.add_argument("--model", default=None, help="MLflow model URI (default: models:/chan@champion, "
                                                         "else @challenger)")
    summarize.add_argument("--storage", type=Path, default=None, help="storage root (default: <project>/storage)")
    summarize.add_argument("--raw", type=Path, default=None, help="raw root (default: <project>/data/raw)")
    summarize.set_defaults(func=run_summarize)


def run_summarize(args: argparse.Namespace) -> int:
    from mmpipe.eval.summarization import LengthBudget, write_summaries
    from mmpipe.media.decode import VideoDecodeError
    from mmpipe.params import project_root
    from mmpipe.registry.serving import SearchSetupError
    from mmpipe.systems.chan.serve import resolve_model_uri, summarize_video

    try:
        budget = (LengthBudget(shots_share=args.share, seconds=args.seconds)
                  if args.share is not None or args.seconds is not None else None)
        summary = summarize_video(args.video, args.query, args.out, args.storage or project_root() / "storage",
                                  args.raw or project_root() / "data" / "raw", budget, args.model)
    except (SearchSetupError, FileNotFoundError, VideoDecodeError) as error:
        raise SystemExit(f"mmpipe summarize: {error}") from None
    except (KeyError, ValueError) as error:
        raise SystemExit(f"mmpipe summarize: {error.args[0] if error.args else error}") from None
    if args.json is not None:
        write_summaries(args.json, [summary], model=args.model or resolve_model_uri())
    for shot in summary.shots:
        print(f"shot {shot.shot_id:3d}  {shot.start_s:7.2f}s  {shot.end_s:7.2f}s  score {shot.score:.3f}")
    print(f"{len(summary.shots)} shots, {summary.seconds:.2f}s -> {args.out}")
    return 0


def add_serve_commands(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="answer searches from warm models over HTTP, with the explorer page",
        description="Load every system's registered version (champion, else challenger; for an index the "
                    "version that built it) and its index once, then answer on http://HOST:PORT: /api/... "
                    "(/openapi.json lists them), the explorer page on /. The registry is polled every "
                    "--poll-seconds and a new version is loaded in the background and swapped in without a restart.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--root", type=Path, default=None,
                       help="project root (default: the project's); its mlflow.db unless MLFLOW_TRACKING_URI is set")
    serve.add_argument("--storage", type=Path, default=None, help="storage root (default: <root>/storage)")
    serve.add_argument("--raw", type=Path, default=None, help="raw root (default: <root>/data/raw)")
    serve.add_argument("--systems", default=None, help="comma-separated systems to serve (default: every one)")
    serve.add_argument("--poll-seconds", type=float, default=5.0,
                       help="how often the registry and indexes are checked for a new version (default: 5; 0: never)")
    serve.add_argument("--torch-threads", type=int, default=1,
                       help="torch threads per forward (default: 1: requests run in parallel, and one small "
                            "query on several threads is slower on a busy machine)")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import logging
    import os

    import uvicorn

    from mmpipe.params import project_root
    from mmpipe.serving.app import create_app
    from mmpipe.serving.live import LiveService
    from mmpipe.serving.media import MediaStore
    from mmpipe.serving.service import ServingPaths
    from mmpipe.systems import services

    if args.poll_seconds < 0:
        raise SystemExit(f"--poll-seconds must be >= 0, got {args.poll_seconds}")
    if args.torch_threads < 1:
        raise SystemExit(f"--torch-threads must be >= 1, got {args.torch_threads}")
    import torch

    torch.set_num_threads(args.torch_threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.root is not None and not os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(args.root).resolve() / 'mlflow.db'}"
    project = ServingPaths.of_project(args.root or project_root())
    paths = ServingPaths(args.storage or project.storage, args.raw or project.raw)
    names = [name.strip() for name in args.systems.split(",") if name.strip()] if args.systems else None
    try:
        live = [LiveService(service) for service in services(paths, names)]
    except KeyError as error:
        raise SystemExit(f"mmpipe serve: {error.args[0]}") from None
    for service in live:  # warm before the port opens: the first request is as fast as the next
        service.refresh()
        status = service.status()
        print(f"{service.service.name}: " + (f"{status['registered_model']} version {status['version']}"
                                            if status["version"] else f"not serving ({status['error']})"), flush=True)
    app = create_app(live, MediaStore(paths), poll_s=args.poll_seconds or None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=args.access_log)
    return 0


COMMAND_GROUPS = [add_world_commands, add_search_commands, add_registry_commands, add_load_commands,
                  add_moment_commands, add_summarize_commands, add_serve_commands]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmpipe", description="multimodal pipeline tools")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_commands in COMMAND_GROUPS:
        add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
