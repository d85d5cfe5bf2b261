"""Ray Serve deployment of one ensemble member (a Flywheel classifier directory).

Each member runs as its own Serve application without an HTTP route, so the ingress can switch to a new
version by routing (see actors/serve_ensemble.py) instead of redeploying anything that serves HTTP.
Requests are merged with `@serve.batch`; `max_batch_size: 1` in the config turns batching off.
"""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve


@serve.deployment(max_ongoing_requests=64)
class MemberServer:
    """`predict(texts) -> (logits (n, K), embeddings (n, H))`, batched across concurrent callers."""

    def __init__(self, model_dir: str, name: str, version: str, torch_threads: int, max_batch_size: int,
                 wait_s: float):
        from ray.util.metrics import Histogram

        from app.serving.members import MemberModel

        self.model = MemberModel(model_dir, torch_threads)
        self.name, self.version = name, version
        self.forward.set_max_batch_size(max_batch_size)
        self.forward.set_batch_wait_timeout_s(wait_s)
        self.batch_hist = Histogram("flywheel_member_batch_texts", description="texts per member forward pass",
                                    boundaries=[1, 2, 4, 8, 16, 32, 64, 128], tag_keys=("member",))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def forward(self, calls: list[list[str]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """One forward pass over every text of the merged calls, split back per caller."""
        flat = [t for c in calls for t in c]
        self.batch_hist.observe(len(flat), tags={"member": self.name})
        # A thread keeps the replica's event loop free to queue the next batch while torch computes.
        logits, emb = await asyncio.to_thread(self.model.forward, flat)
        out, i = [], 0
        for c in calls:
            out.append((logits[i:i + len(c)], emb[i:i + len(c)]))
            i += len(c)
        return out

    async def predict(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Logits and pooled embeddings of `texts`."""
        return await self.forward(list(texts))

    def info(self) -> dict:
        """Name, version and labels of the loaded member."""
        return {"name": self.name, "version": self.version, "labels": self.model.labels}
