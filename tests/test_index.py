"""VectorIndex: index choice, recall against brute force, incremental adds, atomic saves."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from mmpipe.index import faiss_index
from mmpipe.index.faiss_index import (
    IndexConfig,
    VectorIndex,
    choose_factory,
    clustered_unit_vectors,
    exact_search,
    measure_qps,
    recall_at_k_vs_exact,
    training_sample,
)

N_CORPUS, N_QUERIES, DIM = 30_000, 300, 64


@pytest.fixture(scope="module", autouse=True)
def few_threads():
    # Two shared cores: more OpenMP threads than that only adds contention.
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    yield
    faiss.omp_set_num_threads(before)


def pin_ids(n: int, start: int = 0) -> list[str]:
    return [f"p{i:06d}" for i in range(start, start + n)]


@pytest.fixture(scope="module")
def clustered():
    """A 30k corpus and held-out queries from the same distribution (not corpus members,
    which would find themselves and inflate recall)."""
    vectors = clustered_unit_vectors(N_CORPUS + N_QUERIES, DIM, seed=0)
    return vectors[:N_CORPUS], pin_ids(N_CORPUS), vectors[N_CORPUS:]


@pytest.fixture(scope="module")
def ivf_index(clustered):
    corpus, ids, _ = clustered
    return VectorIndex.build(corpus, ids, IndexConfig(kind="ivf"))


@pytest.fixture(scope="module")
def hnsw_index(clustered):
    corpus, ids, _ = clustered
    return VectorIndex.build(corpus, ids, IndexConfig(kind="hnsw"))


def small_corpus(n: int = 2_000, seed: int = 1) -> np.ndarray:
    return clustered_unit_vectors(n, 32, n_clusters=20, seed=seed)


def nlist_of(factory: str) -> int:
    assert factory.startswith("IVF") and factory.endswith(",Flat"), factory
    return int(factory[len("IVF") : -len(",Flat")])


# --- choosing the index ---------------------------------------------------------------


def test_flat_below_threshold():
    cfg = IndexConfig()
    assert choose_factory(0, 128, cfg) == "IDMap,Flat"
    assert choose_factory(cfg.exact_below - 1, 128, cfg) == "IDMap,Flat"
    assert choose_factory(10**8, 128, IndexConfig(kind="flat")) == "IDMap,Flat"


def test_auto_is_exact_then_ivf_then_quantized_ivf_with_refine_by_size():
    cfg = IndexConfig()
    assert choose_factory(cfg.exact_below, 128, cfg) == "IVF512,Flat"  # 20000 // 39 (4·√N would starve lists)
    assert choose_factory(cfg.quantize_below - 1, 128, cfg).endswith(",Flat")
    assert choose_factory(cfg.quantize_below, 128, cfg) == "IDMap,IVF2191_HNSW32,SQ8,RFlat"
    assert choose_factory(1_000_000, 256, cfg) == "IDMap,IVF4000_HNSW32,SQ8,RFlat"
    assert choose_factory(50, 64, IndexConfig(kind="hnsw", hnsw_m=16)) == "IDMap,HNSW16"
    assert choose_factory(1_000_000, 256, IndexConfig(kind="ivf")) == "IVF4000,Flat"


def test_quantized_ivf_finds_the_exact_neighbours_and_takes_its_search_knobs(clustered):
    corpus, ids, queries = clustered
    index = VectorIndex.build(corpus, ids, IndexConfig(kind="ivf_sq8"))
    assert recall_at_k_vs_exact(index, corpus, ids, queries, k=10) >= 0.95
    refine = faiss.downcast_index(faiss.downcast_index(index._index).index)
    assert refine.k_factor == 2 and faiss.extract_index_ivf(index._index).nprobe == 8
    index.configure_search(nprobe=1)
    assert faiss.extract_index_ivf(index._index).nprobe == 1
    # The refine step re-ranks with exact vectors: returned scores are true inner products.
    scores, found = index.search(queries[:5], 10)
    position = {pin_id: row for row, pin_id in enumerate(ids)}
    for q, (row_scores, row_ids) in enumerate(zip(scores, found)):
        exact = corpus[[position[i] for i in row_ids]] @ queries[q]
        np.testing.assert_allclose(row_scores[: len(row_ids)], exact, rtol=1e-5, atol=1e-5)


def test_ivf_trains_on_a_bounded_sample():
    vectors = small_corpus(5_000)
    sample = training_sample(vectors, 1_000)
    assert sample.shape == (1_000, 32)
    assert np.array_equal(sample, training_sample(vectors, 1_000))  # seeded: the same every build
    assert training_sample(vectors, 10_000) is vectors
    with pytest.raises(ValueError, match="train_points_per_list"):
        IndexConfig(train_points_per_list=10)


def test_an_index_saved_with_a_dropped_setting_still_loads(tmp_path):
    index = VectorIndex.build(small_corpus(100), pin_ids(100))
    index.save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["config"]["hnsw_max_bytes"] = 4 * 2**30  # what versions before ivf_sq8 wrote
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert VectorIndex.load(tmp_path).ntotal == 100


def test_ivf_lists_grow_with_sqrt_n():
    ivf = IndexConfig(kind="ivf")
    assert nlist_of(choose_factory(1_000_000, 128, ivf)) == 4_000  # 4·√1e6
    assert nlist_of(choose_factory(4_000_000, 128, ivf)) == 8_000  # 4x the data, 2x the lists
    more_lists = IndexConfig(kind="ivf", nlist_per_sqrt_n=8)
    assert nlist_of(choose_factory(1_000_000, 128, more_lists)) == 8_000
    # Small N: capped so each list keeps >= 39 training points; never below one list.
    assert nlist_of(choose_factory(20_000, 64, ivf)) == 20_000 // 39  # not 4·√20000 = 566
    assert nlist_of(choose_factory(10, 64, ivf)) == 1


def test_config_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        IndexConfig(kind="pq")


# --- recall against the obvious reference ----------------------------------------------


def test_exact_search_matches_full_matrix_argsort():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 16)).astype(np.float32)
    queries = rng.standard_normal((20, 16)).astype(np.float32)
    scores, rows = exact_search(vectors, queries, 5)
    full = queries @ vectors.T
    expected_rows = np.argsort(-full, axis=1)[:, :5]
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected_rows, axis=1), rtol=1e-5)


def test_flat_index_recall_is_exact():
    corpus = small_corpus()
    ids = pin_ids(len(corpus))
    index = VectorIndex.build(corpus, ids, IndexConfig())
    assert index.factory == "IDMap,Flat"
    assert recall_at_k_vs_exact(index, corpus, ids, small_corpus(50, seed=2)) == 1.0


@pytest.mark.parametrize("index_fixture", ["ivf_index", "hnsw_index"])
def test_recall_at_10_at_default_settings(index_fixture, clustered, request):
    corpus, ids, queries = clustered
    index = request.getfixturevalue(index_fixture)
    recall = recall_at_k_vs_exact(index, corpus, ids, queries, k=10)
    assert recall >= 0.95, f"{index.factory}: recall@10 {recall:.3f}"


def test_ivf_probing_every_list_is_exact():
    corpus = small_corpus()
    ids = pin_ids(len(corpus))
    index = VectorIndex.build(corpus, ids, IndexConfig(kind="ivf", nprobe=1))
    queries = small_corpus(50, seed=2)
    assert recall_at_k_vs_exact(index, corpus, ids, queries) < 1.0
    index.configure_search(nprobe=nlist_of(index.factory))
    assert recall_at_k_vs_exact(index, corpus, ids, queries) == 1.0


def test_measure_qps_is_a_rate():
    corpus = small_corpus()
    index = VectorIndex.build(corpus, pin_ids(len(corpus)), IndexConfig())
    qps = measure_qps(index, corpus[:100], k=10, repeats=2)
    assert np.isfinite(qps) and qps > 0


# --- incremental adds ------------------------------------------------------------------


def test_flat_add_equals_one_shot_build():
    corpus = small_corpus(3_000)
    ids = pin_ids(len(corpus))
    queries = small_corpus(40, seed=3)
    one_shot = VectorIndex.build(corpus, ids, IndexConfig())
    incremental = VectorIndex.build(corpus[:1_000], ids[:1_000], IndexConfig())
    incremental.add(corpus[1_000:2_500], ids[1_000:2_500])
    incremental.add(corpus[2_500:], ids[2_500:])

    expected_scores, expected_ids = one_shot.search(queries, 10)
    scores, found = incremental.search(queries, 10)
    assert found == expected_ids
    np.testing.assert_array_equal(scores, expected_scores)


def test_ivf_add_equals_one_shot_fill_of_the_same_trained_index():
    # "Same" for a trained index: same centroids. build(A) + add(B) must equal the
    # same trained structure filled with A ∪ B at once; a fresh build(A ∪ B) would
    # retrain and legitimately differ.
    vectors = clustered_unit_vectors(8_000 + 100, 32, n_clusters=40, seed=4)
    part_a, part_b, queries = vectors[:5_000], vectors[5_000:8_000], vectors[8_000:]
    ids = pin_ids(8_000)
    cfg = IndexConfig(kind="ivf")

    incremental = VectorIndex.build(part_a, ids[:5_000], cfg)
    one_shot = incremental.empty_copy()
    incremental.add(part_b, ids[5_000:])
    one_shot.add(np.concatenate([part_a, part_b]), ids)

    assert incremental.factory == one_shot.factory == f"IVF{5_000 // 39},Flat"
    expected_scores, expected_ids = one_shot.search(queries, 10)
    scores, found = incremental.search(queries, 10)
    assert found == expected_ids
    np.testing.assert_array_equal(scores, expected_scores)
    # Trained on A only, the index still finds B's vectors well.
    assert recall_at_k_vs_exact(incremental, vectors[:8_000], ids, queries) >= 0.95


def test_hnsw_add_keeps_recall_and_finds_new_vectors():
    # HNSW's graph depends on insertion order: only the quality can be the same.
    vectors = clustered_unit_vectors(6_000 + 100, 32, n_clusters=40, seed=5)
    ids = pin_ids(6_000)
    index = VectorIndex.build(vectors[:4_000], ids[:4_000], IndexConfig(kind="hnsw"))
    index.add(vectors[4_000:6_000], ids[4_000:])

    assert recall_at_k_vs_exact(index, vectors[:6_000], ids, vectors[6_000:]) >= 0.95
    _, found = index.search(vectors[4_000:6_000], 1)
    self_found = np.mean([hits[0] == pin_id for hits, pin_id in zip(found, ids[4_000:])])
    assert self_found >= 0.99


def test_duplicate_ids_are_rejected_and_leave_the_index_unchanged():
    corpus = small_corpus(100)
    index = VectorIndex.build(corpus, pin_ids(100), IndexConfig())
    with pytest.raises(ValueError, match="already in the index"):
        index.add(corpus[:2], ["p000005", "p999999"])
    with pytest.raises(ValueError, match="repeated in this batch"):
        index.add(corpus[:2], ["p999999", "p999999"])
    with pytest.raises(ValueError):
        VectorIndex.build(corpus[:2], ["p1", "p1"], IndexConfig())
    assert index.ntotal == 100 and "p999999" not in index


def test_bad_inputs_get_clear_errors():
    corpus = small_corpus(100)
    index = VectorIndex.build(corpus, pin_ids(100), IndexConfig())
    with pytest.raises(ValueError, match="dim"):
        index.add(np.zeros((1, 7), np.float32), ["p999999"])
    with pytest.raises(ValueError, match="2 vectors but 1 ids"):
        index.add(corpus[:2], ["p999999"])
    with pytest.raises(TypeError, match="strings"):
        index.add(corpus[:1], [123])
    with pytest.raises(ValueError, match="2-D"):
        index.search(corpus[0], 5)


@pytest.mark.parametrize("kind", ["flat", "ivf"])  # ivf: the check comes before training
def test_non_finite_vectors_are_refused_naming_their_ids(kind):
    corpus = small_corpus(400)
    ids = pin_ids(400)
    bad = corpus.copy()
    bad[7, 3], bad[250, 0] = np.nan, -np.inf
    with pytest.raises(ValueError, match=r"^2 of 400 vectors hold NaN or inf \(ids \['p000007', 'p000250'\]\): "
                                         r"an index holds finite vectors only$"):
        VectorIndex.build(bad, ids, IndexConfig(kind=kind))
    index = VectorIndex.build(corpus[:300], ids[:300], IndexConfig(kind=kind))
    with pytest.raises(ValueError, match=r"1 of 100 vectors hold NaN or inf \(ids \['p000350'\]\)"):
        index.add(np.where(np.arange(100)[:, None] == 50, np.nan, corpus[300:]), ids[300:])
    assert index.ntotal == 300 and "p000301" not in index  # nothing of the refused batch went in


def test_search_on_empty_index_is_a_clear_error():
    index = VectorIndex.build(np.zeros((0, 16), np.float32), [], IndexConfig())
    assert index.ntotal == 0 and index.dim == 16
    with pytest.raises(ValueError, match="empty index"):
        index.search(np.ones((1, 16), np.float32), 5)
    with pytest.raises(ValueError, match="training"):
        VectorIndex.build(np.zeros((0, 16), np.float32), [], IndexConfig(kind="ivf"))


def test_fewer_than_k_results_are_marked():
    corpus = small_corpus(3)
    index = VectorIndex.build(corpus, ["a", "b", "c"], IndexConfig())
    scores, found = index.search(corpus[:1], 5)
    assert found[0][0] == "a" and sorted(found[0]) == ["a", "b", "c"]
    assert np.all(np.isfinite(scores[0, :3])) and np.all(scores[0, 3:] == -np.inf)


def test_string_ids_round_trip(tmp_path):
    ids = ["p000123", "board:42/pin-7", "épingle ✓", "", "p000123 "]
    vectors = small_corpus(len(ids))
    index = VectorIndex.build(vectors, ids, IndexConfig())
    index.save(tmp_path / "idx")
    loaded = VectorIndex.load(tmp_path / "idx")
    assert loaded.ids == ids
    _, found = loaded.search(vectors, 1)
    assert [hits[0] for hits in found] == ids


# --- saving ----------------------------------------------------------------------------


@pytest.mark.parametrize("index_fixture", ["ivf_index", "hnsw_index"])
def test_save_load_round_trip_is_identical(index_fixture, clustered, tmp_path, request):
    _, _, queries = clustered
    index = request.getfixturevalue(index_fixture)
    index.save(tmp_path / "idx")
    loaded = VectorIndex.load(tmp_path / "idx")

    assert (loaded.factory, loaded.ntotal, loaded.dim, loaded.cfg) == (
        index.factory,
        index.ntotal,
        index.dim,
        index.cfg,
    )
    expected_scores, expected_ids = index.search(queries, 10)
    scores, found = loaded.search(queries, 10)
    assert found == expected_ids
    np.testing.assert_array_equal(scores, expected_scores)


def saved_pair(tmp_path):
    """An index saved to disk and a different one about to replace it."""
    directory = tmp_path / "idx"
    old = VectorIndex.build(small_corpus(200, seed=6), pin_ids(200), IndexConfig())
    old.save(directory)
    new = VectorIndex.build(small_corpus(300, seed=7), pin_ids(300, start=1_000), IndexConfig())
    return directory, old, new


def assert_still_the_old_index(directory, old):
    queries = small_corpus(10, seed=8)
    loaded = VectorIndex.load(directory)
    assert loaded.ids == old.ids
    np.testing.assert_array_equal(loaded.search(queries, 5)[0], old.search(queries, 5)[0])
    # Nothing from the failed save is left behind, not even temporary files.
    names = sorted(path.name for path in directory.iterdir())
    assert [name.split("-")[0] for name in names] == ["ids", "index", "manifest.json"], names


def test_save_failing_inside_write_index_keeps_the_old_index(tmp_path, monkeypatch):
    directory, old, new = saved_pair(tmp_path)
    first_bytes = faiss.serialize_index(new._index).tobytes()[:100]

    def write_half_then_fail(index, path):
        with open(path, "wb") as handle:
            handle.write(first_bytes)
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        new.save(directory)
    assert_still_the_old_index(directory, old)


def test_save_failing_after_the_index_file_keeps_the_old_index(tmp_path, monkeypatch):
    # The new index file is complete here but its id table is not: without the
    # manifest as the single commit point, a reader would pair new vectors with old ids.
    directory, old, new = saved_pair(tmp_path)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(faiss_index, "write_parquet_atomic", fail)
    with pytest.raises(OSError, match="disk full"):
        new.save(directory)
    assert_still_the_old_index(directory, old)


def test_repeated_saves_keep_the_current_and_previous_generation(tmp_path):
    directory = tmp_path / "idx"
    corpus = small_corpus(50)
    for n in (10, 20, 30):
        VectorIndex.build(corpus[:n], pin_ids(n), IndexConfig()).save(directory)
    assert len(list(directory.glob("index-*.faiss"))) == 2
    assert len(list(directory.glob("ids-*.parquet"))) == 2
    assert VectorIndex.load(directory).ntotal == 30


def test_load_without_a_saved_index(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved VectorIndex"):
        VectorIndex.load(tmp_path)
