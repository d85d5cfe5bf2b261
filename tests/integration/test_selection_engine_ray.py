"""Selection engine end to end on local Ray: SST-2 texts -> MiniLM actor pool -> shards -> k-means / MMR."""

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
N = 200


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def texts():
    import pandas as pd

    df = pd.read_csv(REPO / "data/sst2/alps_dev_first3000.tsv", sep="\t", quoting=3, nrows=N)
    return [str(t) for t in df["sentence"]]


def test_minilm_shards_then_kmeans_and_mmr(ray_local, texts, tmp_path):
    from actors.selection_engine import embed_texts_to_shards, run_selection
    from app.selection.embed import MiniLMEmbedder
    from app.selection.engine import select_from_shards

    ids = [f"sst2-{i}" for i in range(N)]
    shards = embed_texts_to_shards(texts, tmp_path / "emb", ids=ids, concurrency=2, num_cpus=0.5, batch_size=32,
                                  shard_rows=64)  # several shards, to check they reassemble in row order
    assert (shards.n, shards.dim) == (N, 384) and len(shards.names) >= 2
    assert shards.ids().tolist() == ids  # row r of the shards is texts[r], whatever order the actors finished in
    x = shards.to_array()
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)  # MiniLM's Normalize step
    # the actor pool computes what the in-process embedder computes (padding differs; masked, so ~1e-6)
    local = MiniLMEmbedder().embed([texts[i] for i in (0, 17, 199)])
    np.testing.assert_allclose(x[[0, 17, 199]], local, atol=1e-4)

    out = run_selection(tmp_path / "emb", "kmeans", budget=10, out_dir=tmp_path / "sel", seed=1, streaming=True)
    same = select_from_shards(shards, "kmeans", 10, seed=1, streaming=True)  # per-shard passes in-process
    assert out["selected"] == same.selected and len(set(out["selected"])) == 10
    doc = json.loads(Path(out["selection_json"]).read_text())
    assert doc["ids"] == [ids[i] for i in out["selected"]]
    assert all(it["reason"].startswith("nearest") and set(it["scores"]) == {"cluster", "centroid_distance"}
               for it in doc["items"])
    assert Path(out["map_png"]).stat().st_size > 10_000

    probs = np.random.default_rng(0).dirichlet([1.0, 1.0], size=N)
    # no exclude here: each covered-set pass is one more actor-pool start; exclude is covered in the unit tests
    mmr = run_selection(tmp_path / "emb", "mmr", budget=8, out_dir=tmp_path / "mmr", probs=probs, streaming=True)
    mem = select_from_shards(shards, "mmr", 8, probs=probs, streaming=False)
    assert mmr["selected"] == mem.selected  # lazy streaming MMR (+ final pass on Ray) == the in-memory strategy
