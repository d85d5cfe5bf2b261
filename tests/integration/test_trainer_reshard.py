"""Resume on a different number of workers with the optimiser state carried over (no Ray: the runner in
torch.distributed gloo process groups started here).

A 2-worker DeepSpeed ZeRO-2 run is checkpointed at step 2; that checkpoint is resumed on 1 worker
through a DeepSpeed universal checkpoint (ds_to_universal, re-partitioned on load). The global batch is
held at 4 rows (2 workers × micro 2 × accum 1 → 1 worker × micro 2 × accum 2) and a step's rows depend
on the global batch only, so steps 3-4 of the resumed run must reproduce steps 3-4 of the uninterrupted
2-worker run: same weights, same Adam moments and step count, same batches. A weights-only resume
(fresh Adam state) is the control that shows the comparison can fail.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.ports import free_port

pytestmark = pytest.mark.integration


def _spec(model: str, root: Path, workers: int, steps: int, zero: int = 2):
    from app.config import TrainerConfig
    from app.train.spec import TrainSpec

    t = TrainerConfig(num_workers=workers, zero_stage=zero, micro_batch_size=2, max_steps=steps, checkpoint_every=2,
                      warmup_ratio=0.0, lr=2e-3, head_lr=2e-3, export=False).model_dump()
    t["global_batch_size"] = 4
    texts = [f"note {i}: {'keep' if i % 2 else 'drop'} this one" for i in range(16)]
    return TrainSpec(task="classify", start_model=model, start_is_flywheel=False, base_name="tiny-bert",
                     label_names=["drop", "keep"], inputs=texts,
                     targets=["keep" if i % 2 else "drop" for i in range(16)],
                     max_length=16, trainer=t, ckpt_root=str(root))


def _no_dropout_task():
    from app.train.tasks import ClassifyTask

    class NoDropout(ClassifyTask):
        """The classifier with every dropout off: its masks come from per-rank RNG streams, which differ
        between a 2-worker and a 1-worker run and would hide what the comparisons are about."""

        def build(self, is_flywheel):
            import torch

            model, tok = super().build(is_flywheel)
            for m in model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = 0.0
            return model, tok

    return NoDropout


def _worker(rank: int, world: int, port: int, spec_json: str, out: str) -> None:
    import json

    import torch
    import torch.distributed as dist

    from app.train.runner import local_hooks, run
    from app.train.spec import TrainSpec

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    spec = TrainSpec.model_validate_json(spec_json)
    hooks = local_hooks(spec.ckpt_root, keep_last=5, rank=rank, world_size=world)
    res = run(spec, hooks, task=_no_dropout_task()(spec))
    if rank == 0:
        Path(out).write_text(json.dumps({k: res[k] for k in ("history", "events", "grad_accum", "global_batch")}))
    dist.destroy_process_group()


def _run(spec, world: int, out: Path) -> dict:
    import json

    import torch.multiprocessing as mp

    port = free_port()
    mp.start_processes(_worker, args=(world, port, spec.model_dump_json(), str(out)), nprocs=world, join=True,
                       start_method="spawn")
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from app.models.backbones import resolve

    return str(resolve("tiny-bert", tmp_path_factory.mktemp("models")))


def test_two_workers_resume_on_one_with_resharded_optimizer(tiny_bert, tmp_path):
    from app.train import run_checkpoints as rc

    full = _run(_spec(tiny_bert, tmp_path / "two", 2, 4), 2, tmp_path / "two.json")
    assert [(h["world_size"], h["grad_accum"]) for h in full["history"]] == [(2, 1)] * 4  # 4 = micro 2 × 2 × 1

    # the 2-worker checkpoint of step 2, alone in a fresh run directory, resumed by 1 worker
    for name, kind in (("uni", "universal"), ("wts", "weights")):
        (tmp_path / name).mkdir()
        shutil.copytree(tmp_path / "two" / rc.ckpt_name(0, 2), tmp_path / name / rc.ckpt_name(0, 2))
    one = _run(_spec(tiny_bert, tmp_path / "uni", 1, 4), 1, tmp_path / "uni.json")
    ev = one["events"]
    assert [e["kind"] for e in ev if e["event"] == "resumed"] == ["universal"]
    plans = [(e["world_size"], e["grad_accum"], e["global_batch"]) for e in ev if e["event"] == "batch_plan"]
    assert plans == [(2, 1, 4), (1, 2, 4)]  # 4 = micro 2 × 2 workers × 1 = micro 2 × 1 worker × 2
    h = one["history"]
    assert [(r["step"], r["world_size"], r["grad_accum"]) for r in h] == \
        [(1, 2, 1), (2, 2, 1), (3, 1, 2), (4, 1, 2)]
    full_loss = [r["loss"] for r in full["history"]]
    assert [r["loss"] for r in h] == pytest.approx(full_loss, rel=1e-4)

    # control: the same resume without the optimiser state (Adam moments and step restart) drifts away
    wts = tmp_path / "wts"
    meta = rc.read_meta(wts / rc.ckpt_name(0, 2))
    control_spec = _spec(tiny_bert, wts, 1, 4, zero=1)  # another ZeRO stage: a weights-only resume
    ctl = _run(control_spec, 1, tmp_path / "wts.json")
    assert meta["zero_stage"] == 2 and [e["kind"] for e in ctl["events"] if e["event"] == "resumed"] == ["weights"]
    assert ctl["history"][2]["loss"] == pytest.approx(full_loss[2], rel=1e-4)  # step 3: same weights, same rows
    assert abs(ctl["history"][3]["loss"] - full_loss[3]) > 1e-3 * abs(full_loss[3])  # step 4: the update differed
