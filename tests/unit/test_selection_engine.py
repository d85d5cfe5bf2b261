"""Selection engine helpers without Ray: pooling, shards on disk, streaming k-means / lazy MMR, reports, PNGs."""

import json
import time

import numpy as np
import pytest

from app.selection import SelectionInput, SelectionInputError, select
from app.selection.embed import mean_pool
from app.selection.engine import save_selection, select_from_shards
from app.selection.plots import learning_curve_png, log_png, pca_2d, selection_map_png
from app.selection.shards import EmbeddingShards, ShardError, write_index, write_shard, write_shard_batch
from app.selection.streaming import BlockScorer, lazy_mmr, run_blocks_local

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _shards(tmp_path, x, parts=3, ids=True, seed=0):
    """Write x (n, d) as ``parts`` shards of a random permutation of its rows, like unordered Ray blocks."""
    perm = np.random.default_rng(seed).permutation(len(x))
    recs = []
    for chunk in np.array_split(perm, parts):
        recs.append(write_shard(tmp_path, chunk, x[chunk],
                                np.array([f"item-{i}" for i in chunk], dtype=object) if ids else None))
    write_index(tmp_path, recs)
    return EmbeddingShards(tmp_path)


def test_mean_pool_by_hand():
    hidden = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 5.0], [7.0, 7.0], [9.0, 9.0]]])
    mask = np.array([[1, 1, 0], [0, 0, 0]])
    raw = mean_pool(hidden, mask, normalize=False)
    # row 0: padding token ignored -> ([1, 2] + [3, 4]) / 2 = [2, 3]; row 1: no real tokens -> 0 / 1e-9 = 0
    np.testing.assert_allclose(raw, [[2.0, 3.0], [0.0, 0.0]])
    # normalised: [2, 3] / sqrt(4 + 9) = [0.5547, 0.8321]; the all-zero row stays zero
    np.testing.assert_allclose(mean_pool(hidden, mask), [[2 / 13**0.5, 3 / 13**0.5], [0.0, 0.0]], rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(B, T, H\)"):
        mean_pool(hidden[0], mask)


def test_shards_round_trip_in_row_order(tmp_path):
    x = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    sh = _shards(tmp_path, x)
    assert (sh.n, sh.dim, len(sh.names)) == (50, 4, 3)
    np.testing.assert_array_equal(sh.to_array(), x)  # shards hold a permutation; row r comes back as x[r]
    np.testing.assert_array_equal(sh.take(np.array([49, 0, 7, 7])), x[[49, 0, 7, 7]])
    assert sh.ids()[[0, 31]].tolist() == ["item-0", "item-31"]
    mm = sh.to_array(tmp_path / "all.npy")  # disk-backed copy for strategies that need one array
    assert isinstance(mm, np.memmap)
    np.testing.assert_array_equal(np.load(tmp_path / "all.npy", mmap_mode="r"), x)
    assert sum(len(r) for r, _ in sh.blocks()) == 50
    assert all(isinstance(e, np.memmap) for _, e in sh.blocks())  # read lazily, never loaded whole


def test_index_is_the_source_of_truth(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    recs = [write_shard(tmp_path, np.arange(0, 3), x[:3]), write_shard(tmp_path, np.arange(3, 6), x[3:])]
    write_shard(tmp_path, np.arange(0, 3), x[:3] + 100)  # a retried task's orphan: not in the index
    write_index(tmp_path, recs)
    np.testing.assert_array_equal(EmbeddingShards(tmp_path).to_array(), x)
    assert EmbeddingShards(tmp_path).ids().tolist() == [0, 1, 2, 3, 4, 5]  # no ids stored -> row numbers


def test_shard_errors_name_the_problem(tmp_path):
    x = np.zeros((4, 2), dtype=np.float32)
    recs = [write_shard(tmp_path, np.array([0, 1]), x[:2]), write_shard(tmp_path, np.array([1, 3]), x[2:])]
    write_index(tmp_path, recs)
    # rows 0..3 expected; stored rows [0, 1, 1, 3]: row 1 twice, row 2 never -> [1, 2]
    with pytest.raises(ShardError, match=r"permutation of 0..3; rows missing or repeated: \[1, 2\]"):
        EmbeddingShards(tmp_path)
    with pytest.raises(ShardError, match=r"\(b, d\) with b = len\(rows\) = 3"):
        write_shard(tmp_path, np.arange(3), x)
    with pytest.raises(ShardError, match="no index.json"):
        EmbeddingShards(tmp_path / "nowhere")


def test_write_shard_batch_takes_a_ray_style_batch(tmp_path):
    batch = {"row": np.array([1, 0]), "item_id": np.array(["b", "a"], dtype=object),
             "embedding": np.empty(2, dtype=object)}
    batch["embedding"][:] = [np.array([3.0, 4.0]), np.array([1.0, 2.0])]  # ragged-tensor form: object column
    rec = write_shard_batch(batch, str(tmp_path))
    assert rec["rows"].tolist() == [2] and rec["min_row"].tolist() == [0]
    write_index(tmp_path, [{k: v[0] for k, v in rec.items()}])
    sh = EmbeddingShards(tmp_path)
    np.testing.assert_array_equal(sh.to_array(), [[1.0, 2.0], [3.0, 4.0]])
    assert sh.ids().tolist() == ["a", "b"]


def test_block_scorer_by_hand(tmp_path):
    x = np.array([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0]], dtype=np.float32)
    _shards(tmp_path, x, parts=2, ids=False)
    cols = run_blocks_local(str(tmp_path), {"centroids": np.array([[0.0, 0.0], [10.0, 0.0]], dtype=np.float32),
                                            "head_w": np.zeros((2, 2)), "sim_to": np.array([[0.0, 1.0]])})
    # nearest centroid: row 0 -> c0 (d2 0), row 1 -> c0 (d2 9 + 16 = 25; to c1: 49 + 16 = 65), row 2 -> c1 (0)
    assert cols["cluster"].tolist() == [0, 0, 1]
    np.testing.assert_allclose(cols["d2"], [0.0, 25.0, 0.0])
    # zero head -> uniform softmax -> entropy log 2 / log 2 = 1 for every row
    np.testing.assert_allclose(cols["relevance"], [1.0, 1.0, 1.0])
    # cosine to (0, 1): zero row 0, (3, 4)/5 -> 0.8, (1, 0) -> 0
    np.testing.assert_allclose(cols["max_sim"], [0.0, 0.8, 0.0], atol=1e-12)
    bad = x.copy()
    bad[1, 0] = np.nan
    write_index(tmp_path / "bad", [write_shard(tmp_path / "bad", np.arange(3), bad)])
    with pytest.raises(ShardError, match=r"pool rows \[1\] contain NaN/inf"):
        BlockScorer(str(tmp_path / "bad"), head_w=np.zeros((2, 2))).score(0)


def test_lazy_mmr_by_hand_with_a_tiny_working_set():
    e = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
    rel = np.array([1.0, 0.9, 0.2])
    sel, reasons, value, _ = lazy_mmr(e.__getitem__, rel, 2, 0.5, np.ones(3, bool), pool_size=1, chunk=1)
    # pick 1: values 0.5 * rel = [0.5, 0.45, 0.1] -> row 0
    # pick 2: cos(e1, e0) = 1 / sqrt(1.01) = 0.995 -> 0.45 - 0.4975 = -0.0475; cos(e2, e0) = 0 -> 0.1 -> row 2
    assert sel == [0, 2]
    np.testing.assert_allclose(value[sel], [0.5, 0.1])
    assert reasons[1] == "mmr=0.1 (relevance=0.2, max sim to picked/covered=0)"


@pytest.mark.parametrize("exclude", [None, np.arange(0, 400, 7)])
def test_streaming_equals_in_memory_strategies(tmp_path, exclude):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    probs = rng.dirichlet([1.0, 1.0, 1.0], size=400)
    sh = _shards(tmp_path, x)
    for name, kw in (("kmeans", {}), ("mmr", {"probs": probs, "lam": 0.7})):
        mem = select(name, SelectionInput(n=400, embeddings=x, probs=kw.pop("probs", None), exclude=exclude),
                     25, seed=4, **kw)
        got = select_from_shards(sh, name, 25, seed=4, probs=probs if name == "mmr" else None, exclude=exclude,
                                 streaming=True, **kw)
        assert got.selected == mem.selected, name
        assert got.reasons == mem.reasons, name
        for k in mem.scores:
            # MMR cosines are float32 in the streaming path (see lazy_mmr): agreement to ~1e-7
            np.testing.assert_allclose(got.scores[k], mem.scores[k], atol=1e-6, err_msg=f"{name} {k}")


def test_lazy_mmr_touches_few_rows_and_matches_eager():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20_000, 32))
    rel = rng.random(20_000)
    start = time.process_time()
    sel, *_ = lazy_mmr(x.__getitem__, rel, 50, 0.5, np.ones(20_000, bool))
    lazy_s = time.process_time() - start
    assert len(set(sel)) == 50 and lazy_s < 3.0  # ~0.1 CPU-s; eager MMR is 50 passes over all rows
    # eager MMR with this relevance (the mmr strategy only takes relevance from probs), written out
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    ms, avail, ref = np.zeros(20_000), np.ones(20_000, bool), []
    for _ in range(50):
        i = int(np.argmax(np.where(avail, 0.5 * rel - 0.5 * ms, -np.inf)))
        ref.append(i)
        avail[i] = False
        ms = np.maximum(ms, u @ u[i])
    assert sel == ref


def test_streaming_bad_input(tmp_path):
    sh = _shards(tmp_path, np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32))
    with pytest.raises(SelectionInputError, match="cannot stream; streaming supports"):
        select_from_shards(sh, "entropy", 3, streaming=True)
    with pytest.raises(SelectionInputError, match=r"unknown params \['beta'\]"):
        select_from_shards(sh, "mmr", 3, streaming=True, beta=1)
    with pytest.raises(SelectionInputError, match="out-of-range indices"):
        select_from_shards(sh, "kmeans", 3, exclude=np.array([30]), streaming=True)
    with pytest.raises(SelectionInputError, match="budget must be an integer >= 1"):
        select_from_shards(sh, "kmeans", 0, streaming=True)
    # not streaming: any registered strategy runs on the loaded embeddings
    assert len(select_from_shards(sh, "kcenter", 4, streaming=False).selected) == 4


def test_save_selection_json_and_scores(tmp_path):
    res = select("kcenter", SelectionInput(n=5, embeddings=np.array([[0.0], [1.5], [3.0], [10.0], [11.0]]),
                                           exclude=np.array([0])), budget=2)
    path = save_selection(res, tmp_path / "sel.json", ids=np.array(["a", "b", "c", "d", "e"]), strategy="kcenter")
    doc = json.loads(path.read_text())
    # kcenter from {0}: farthest is row 4 (distance 11), then row 2 (distance 3, see test_selection_diversity)
    assert doc["selected"] == [4, 2] and doc["ids"] == ["e", "c"] and doc["n"] == 5
    assert doc["items"][0] == {"row": 4, "id": "e", "rank": 0, "reason": "distance to nearest center=11 (pick 1)",
                               "scores": {"distance": 11.0}}
    np.testing.assert_allclose(np.load(tmp_path / doc["scores_file"])["distance"], [0.0, 1.5, 3.0, 1.0, 11.0])


def test_pca_2d_by_hand():
    pts = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [2.0, 2.0, 0.0]])
    fit, extra = pca_2d(pts, np.array([[3.0, 3.0, 0.0]]))
    # all variance lies along (1, 1, 0)/sqrt(2); centred at (1, 1, 0): PC1 = +-[-sqrt2, 0, sqrt2]
    np.testing.assert_allclose(np.abs(fit[:, 0]), [2**0.5, 0.0, 2**0.5], atol=1e-9)
    np.testing.assert_allclose(fit[:, 1], 0.0, atol=1e-9)
    np.testing.assert_allclose(abs(extra[0, 0]), 2 * 2**0.5, atol=1e-9)  # (3, 3) is 2 steps of sqrt2 from centre


def test_selection_map_and_learning_curve_pngs(tmp_path):
    x = np.random.default_rng(0).normal(size=(60, 5))
    png = selection_map_png(x.__getitem__, 60, [3, 9, 27], tmp_path / "m" / "map.png", exclude=[0, 1], max_points=40)
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5_000
    with pytest.raises(ValueError, match=r"selected rows must be in \[0, 60\)"):
        selection_map_png(x.__getitem__, 60, [60], tmp_path / "bad.png")
    curves = {"random": ([20, 40, 60], np.array([[0.6, 0.7, 0.75], [0.62, 0.69, 0.77]])),
              "entropy": ([20, 40, 60], np.array([0.6, 0.74, 0.8]))}
    lc = learning_curve_png(curves, tmp_path / "lc.png", target=0.76)
    assert lc.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="3 label counts but accuracies of shape"):
        learning_curve_png({"x": ([1, 2, 3], np.ones(2))}, tmp_path / "bad.png")
    assert log_png(lc) is False  # no active MLflow run: saved, not logged, no error
