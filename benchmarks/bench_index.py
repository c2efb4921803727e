"""Flat vs IVF vs HNSW on the same synthetic pin embeddings, in one run.

    python benchmarks/bench_index.py [--n 100000 --dim 128 --queries 1000 --threads 2]

Prints, per index: build time, recall@k against exact search, batched QPS, speedup over
Flat and size on disk; then the recall/QPS curve of each approximate index's search knob
(IVF nprobe, HNSW efSearch), as the faiss benchs do. Queries are held out from the
corpus, so no query finds itself.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import faiss
from figures import Figure

from mmpipe.index.faiss_index import (
    IndexConfig,
    VectorIndex,
    choose_factory,
    clustered_unit_vectors,
    measure_qps,
    recall_at_k_vs_exact,
)

BENCHMARK = "index"


def disk_mb(index: VectorIndex) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp))
        return sum(path.stat().st_size for path in Path(tmp).iterdir()) / 2**20


SWEEPS = [("ivf", "nprobe", [4, 8, 16, 32, 64]), ("ivf_sq8", "nprobe", [4, 8, 16, 32]),
          ("hnsw", "ef_search", [16, 32, 64, 128, 256])]


def run(n: int = 100_000, dim: int = 128, queries: int = 1_000, k: int = 10, clusters: int = 200,
        intrinsic_dim: int = 8, threads: int | None = None, seed: int = 0, sweep: bool = True) -> list[Figure]:
    """Each approximate index against exact search on the same corpus and held-out queries,
    printing what ``main`` always printed; ``sweep``: also the recall/QPS curve of each knob."""
    threads = threads or faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    vectors = clustered_unit_vectors(n + queries, dim, clusters, intrinsic_dim, seed=seed)
    corpus, held_out = vectors[:n], vectors[n:]
    ids = [f"p{i:07d}" for i in range(n)]
    print(f"n={n} dim={dim} queries={queries} k={k} threads={threads} "
          f"clusters={clusters} intrinsic_dim={intrinsic_dim} faiss={faiss.__version__}")

    indexes = {}
    rows = []
    for kind in ("flat", "ivf", "ivf_sq8", "hnsw"):
        start = time.perf_counter()
        index = VectorIndex.build(corpus, ids, IndexConfig(kind=kind))
        build_s = time.perf_counter() - start
        recall = recall_at_k_vs_exact(index, corpus, ids, held_out, k)
        qps = measure_qps(index, held_out, k)
        indexes[kind] = index
        rows.append((kind, index.factory, build_s, recall, qps, disk_mb(index)))

    _, flat_factory, flat_build, _, flat_qps, flat_mb = rows[0]
    print(f"\n{'index':<8} {'factory':<30} {'build s':>8} {f'recall@{k}':>10} {'QPS':>9} "
          f"{'vs Flat':>8} {'disk MB':>8}")
    for kind, factory, build_s, recall, qps, mb in rows:
        print(f"{kind:<8} {factory:<30} {build_s:>8.2f} {recall:>10.4f} {qps:>9.0f} "
              f"{qps / flat_qps:>7.1f}x {mb:>8.1f}")

    # What the pipeline would build at this size (IndexConfig's "auto"), so the table says
    # which row is the chosen index.
    chosen = choose_factory(n, dim, IndexConfig())
    exact = f"exact ({flat_factory})"
    figures = []
    for kind, factory, build_s, recall, qps, mb in rows[1:]:
        label = f"{factory}{' (chosen)' if factory == chosen else ''}"
        cfg = indexes[kind].cfg
        setting = {"ivf": f"nprobe {cfg.nprobe}", "ivf_sq8": f"nprobe {cfg.nprobe}, k_factor {cfg.refine_k_factor}",
                   "hnsw": f"efSearch {cfg.ef_search}"}[kind]
        note = f"n {n:,}, dim {dim}, {setting}, batches of {queries:,} held-out queries"
        figures += [Figure(BENCHMARK, f"{label} QPS", qps, "queries/s", exact, flat_qps, note),
                    Figure(BENCHMARK, f"{label} recall@{k}", recall, "fraction", exact, 1.0,
                           "share of exact top-k found"),
                    Figure(BENCHMARK, f"{label} build time", build_s, "s", exact, flat_build, f"n {n:,}"),
                    Figure(BENCHMARK, f"{label} memory", mb, "MiB", exact, flat_mb, "serialized index size")]

    if sweep:
        for kind, knob, values in SWEEPS:
            index = indexes[kind]
            print(f"\n{index.factory}: {knob:<10} {f'recall@{k}':>10} {'QPS':>9} {'vs Flat':>8}")
            for value in values:
                index.configure_search(**{knob: value})
                recall = recall_at_k_vs_exact(index, corpus, ids, held_out, k)
                qps = measure_qps(index, held_out, k)
                indent = " " * (len(index.factory) + 2)
                print(f"{indent}{value:<10} {recall:>10.4f} {qps:>9.0f} {qps / flat_qps:>7.1f}x")
                figures.append(Figure(BENCHMARK, f"{index.factory} {knob} {value} QPS", qps, "queries/s",
                                      exact, flat_qps, f"recall@{k} {recall:.4f}"))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="corpus size")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument(
        "--intrinsic-dim", type=int, default=8, help="directions within a cluster; higher is harder"
    )
    parser.add_argument("--threads", type=int, default=faiss.omp_get_max_threads())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run(args.n, args.dim, args.queries, args.k, args.clusters, args.intrinsic_dim, args.threads, args.seed)


if __name__ == "__main__":
    main()
