"""Ray Train + DeepSpeed fault tolerance on a local 2-CPU Ray: a training worker killed with SIGKILL mid-run,
then a corrupted newest checkpoint, in one run. Two workers, ZeRO-2, a pico BERT classifier (tiny-bert).

The test runs ``run_training`` in a thread, watches the run's storage directory (checkpoints and the
pid files the workers write), injects the fault, and checks the run still reaches its step count.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
STEPS = 48
EVERY = 8  # checkpoint interval (steps)
# About 70 s on an idle 2-core machine; the generous waits only keep a busy shared machine
# from failing it (they are limits, not sleeps).
WAIT = 300.0



@pytest.fixture(scope="module")
def tiny_bert(ray_local):
    from app.models.backbones import resolve

    return str(resolve("tiny-bert", ray_local / "models"))


def _spec(model: str, checkpoint_every: int, max_failures: int = 1):
    from app.config import TrainerConfig
    from app.train.spec import TrainSpec

    t = TrainerConfig(num_workers=2, cpus_per_worker=0.75, zero_stage=2, micro_batch_size=2, max_steps=STEPS,
                      checkpoint_every=checkpoint_every, max_failures=max_failures, keep_checkpoints=2).model_dump()
    texts = [f"review {i}: the film was {'great fun' if i % 2 else 'a dull mess'}" for i in range(16)]
    return TrainSpec(task="classify", start_model=model, start_is_flywheel=False, base_name="tiny-bert",
                     label_names=["negative", "positive"], inputs=texts,
                     targets=["positive" if i % 2 else "negative" for i in range(16)], max_length=16, trainer=t)


def _start(spec, storage: Path, name: str):
    from actors.trainer import run_training

    box: dict = {}

    def target():
        try:
            box["out"] = run_training(spec, storage, name, None)
        except BaseException as e:  # surfaced by the test body
            box["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    return th, box


def _wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _first_verified(root: Path):
    from app.train import checkpointing as ck
    from app.train import run_checkpoints as rc

    done = [c for c in ck.list_checkpoints(root) if rc.verify_checkpoint(c)[0]]
    return done[-1] if done else None


def _step(ckpt: Path) -> int:
    return int(ckpt.name.split("_")[-1])


def _finish(th, box, timeout: float = WAIT) -> dict:
    th.join(timeout)
    assert not th.is_alive(), "training did not finish after the fault"
    if "error" in box:
        raise box["error"]
    return box["out"]


def test_killed_worker_resumes_then_corrupt_newest_checkpoint_falls_back(ray_local, tiny_bert):
    """Two faults in one run (one Ray Train start-up instead of two): rank 1 SIGKILLed after the first
    checkpoint, then, after the restart, a flipped byte in the newest checkpoint and rank 0 SIGKILLed."""
    storage, name = ray_local / "results", "faults"
    root = storage / name
    th, box = _start(_spec(tiny_bert, checkpoint_every=EVERY, max_failures=2), storage, name)

    # fault 1: kill rank 1 once a checkpoint is committed; the new group must resume from it, not from scratch
    first = _wait_for(lambda: _first_verified(root), WAIT, "a committed checkpoint")
    pid1 = int((root / "workers" / "rank_1.pid").read_text())
    os.kill(pid1, signal.SIGKILL)

    # fault 2: once the restarted group has committed two more checkpoints, flip one byte in rank 1's ZeRO
    # optimiser shard of the newest, then kill rank 0 so the group restarts again and has to skip it
    newest = _wait_for(lambda: (c := _first_verified(root)) is not None and _step(c) >= _step(first) + 2 * EVERY
                       and int((root / "workers" / "rank_1.pid").read_text()) != pid1 and c,
                       WAIT, "two checkpoints after the first restart")
    shard = next((newest / "rank_1" / "ds" / "ckpt").glob("zero_pp_rank_1_*optim_states.pt"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    os.kill(int((root / "workers" / "rank_0.pid").read_text()), signal.SIGKILL)
    out = _finish(th, box)

    resumed = [e for e in out["events"] if e["event"] == "resumed"]
    assert len(resumed) == 2 and resumed[0]["kind"] == "full"
    # resumed from the checkpoint seen before the kill or a later one, never from scratch
    assert resumed[0]["step"] >= _step(first) >= EVERY and resumed[0]["step"] % EVERY == 0
    skipped = [e for e in out["events"] if e["event"] == "skipped_checkpoint"]
    assert skipped and skipped[0]["path"] == str(newest)
    assert str(shard) in skipped[0]["problem"] and "sha256 mismatch" in skipped[0]["problem"]
    before = _step(newest) - EVERY
    # the checkpoint before it: written by the first restarted group (g1_...), or the one it resumed from (g0_...)
    assert Path(resumed[1]["from"]).parent == root and _step(Path(resumed[1]["from"])) == before
    assert resumed[1]["step"] == before
    assert out["steps"] == STEPS and [h["step"] for h in out["history"]] == list(range(1, STEPS + 1))
    assert int((root / "workers" / "rank_1.pid").read_text()) != pid1  # new worker processes did the rest
