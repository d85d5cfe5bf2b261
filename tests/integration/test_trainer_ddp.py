"""engine=torch on 2 processes (DistributedDataParallel over gloo) with gradient compression, no Ray.

Top-k with ratio 1 sends every entry, so it must train exactly like the uncompressed all-reduce (a check
of the hook's gather/decode path inside real training); PowerSGD rank 1 after 2 plain steps must change
the updates from step 3 on (its low-rank gradient differs) yet keep the loss finite.
"""

from __future__ import annotations

import math

import pytest

from tests.integration.test_trainer_reshard import _run, _spec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from app.models.backbones import resolve

    return str(resolve("tiny-bert", tmp_path_factory.mktemp("models")))


def _ddp_spec(model, root, **opts):
    spec = _spec(model, root, 2, 5)
    return spec.model_copy(update={"trainer": {**spec.trainer, "engine": "torch", **opts}})


def test_topk_ratio_one_matches_allreduce_and_powersgd_differs(tiny_bert, tmp_path):
    base = _run(_ddp_spec(tiny_bert, tmp_path / "none"), 2, tmp_path / "none.json")
    topk = _run(_ddp_spec(tiny_bert, tmp_path / "topk", grad_compression="topk", topk_ratio=1.0), 2,
                tmp_path / "topk.json")
    psgd = _run(_ddp_spec(tiny_bert, tmp_path / "psgd", grad_compression="powersgd", powersgd_rank=1,
                          powersgd_start_iter=2), 2, tmp_path / "psgd.json")
    loss = {k: [h["loss"] for h in r["history"]] for k, r in (("none", base), ("topk", topk), ("psgd", psgd))}
    assert [h["world_size"] for h in base["history"]] == [2] * 5 and base["grad_accum"] == 1  # 4 = 2 × 2 × 1
    assert loss["topk"] == pytest.approx(loss["none"], rel=1e-5)
    # steps 1-3 see the same weights (updates 1-2 are plain all-reduces); update 3 is low-rank
    assert loss["psgd"][:3] == pytest.approx(loss["none"][:3], rel=1e-5)
    # updates 3 and 4 were rank-1 approximations: step 5 moves by more than float noise (topk vs none)
    noise = max(abs(a - b) for a, b in zip(loss["topk"], loss["none"]))
    assert all(math.isfinite(x) for x in loss["psgd"]) and abs(loss["psgd"][4] - loss["none"][4]) > 10 * noise + 1e-6
