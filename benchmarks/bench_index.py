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

from mmpipe.index.faiss_index import (
    IndexConfig,
    VectorIndex,
    clustered_unit_vectors,
    measure_qps,
    recall_at_k_vs_exact,
)


def disk_mb(index: VectorIndex) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp))
        return sum(path.stat().st_size for path in Path(tmp).iterdir()) / 2**20


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

    faiss.omp_set_num_threads(args.threads)
    vectors = clustered_unit_vectors(
        args.n + args.queries, args.dim, args.clusters, args.intrinsic_dim, seed=args.seed
    )
    corpus, queries = vectors[: args.n], vectors[args.n :]
    ids = [f"p{i:07d}" for i in range(args.n)]
    print(
        f"n={args.n} dim={args.dim} queries={args.queries} k={args.k} threads={args.threads} "
        f"clusters={args.clusters} intrinsic_dim={args.intrinsic_dim} faiss={faiss.__version__}"
    )

    indexes = {}
    rows = []
    for kind in ("flat", "ivf", "hnsw"):
        start = time.perf_counter()
        index = VectorIndex.build(corpus, ids, IndexConfig(kind=kind))
        build_s = time.perf_counter() - start
        recall = recall_at_k_vs_exact(index, corpus, ids, queries, args.k)
        qps = measure_qps(index, queries, args.k)
        indexes[kind] = index
        rows.append((kind, index.factory, build_s, recall, qps, disk_mb(index)))

    flat_qps = rows[0][4]
    print(
        f"\n{'index':<6} {'factory':<16} {'build s':>8} {f'recall@{args.k}':>10} {'QPS':>9} "
        f"{'vs Flat':>8} {'disk MB':>8}"
    )
    for kind, factory, build_s, recall, qps, mb in rows:
        print(
            f"{kind:<6} {factory:<16} {build_s:>8.2f} {recall:>10.4f} {qps:>9.0f} "
            f"{qps / flat_qps:>7.1f}x {mb:>8.1f}"
        )

    sweeps = [("ivf", "nprobe", [4, 8, 16, 32, 64]), ("hnsw", "ef_search", [16, 32, 64, 128, 256])]
    for kind, knob, values in sweeps:
        index = indexes[kind]
        print(f"\n{index.factory}: {knob:<10} {f'recall@{args.k}':>10} {'QPS':>9} {'vs Flat':>8}")
        for value in values:
            index.configure_search(**{knob: value})
            recall = recall_at_k_vs_exact(index, corpus, ids, queries, args.k)
            qps = measure_qps(index, queries, args.k)
            indent = " " * (len(index.factory) + 2)
            print(f"{indent}{value:<10} {recall:>10.4f} {qps:>9.0f} {qps / flat_qps:>7.1f}x")


if __name__ == "__main__":
    main()
