"""The Ray-free training runner on pico models with the plain torch engine: resume, fallback, NaN guard,
batch plan, bad input. Every run is a few optimiser steps of a 2-layer, 32-wide model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from app.config import TrainerConfig
from app.models.backbones import resolve
from app.train import run_checkpoints as rc
from app.train.bad_input import BadRowError, NonFiniteLossError
from app.train.elastic import BatchSizeError
from app.train.runner import Plan, local_hooks, run
from app.train.spec import TrainSpec
from app.train.tasks import ModelPathError, SftTask, make_task

PROMPTS = ["name a colour", "count to three", "say hello", "what is two plus two",
           "name a fruit", "spell cat", "opposite of hot", "a day of the week"]
ANSWERS = ["blue", "one two three", "hello", "four", "apple", "c a t", "cold", "monday"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    cache = tmp_path_factory.mktemp("models")
    return {"llama": str(resolve("tiny-llama", cache)), "bert": str(resolve("tiny-bert", cache))}


def _spec(model: str, root: Path, task: str = "sft", **trainer) -> TrainSpec:
    t = TrainerConfig(num_workers=1, micro_batch_size=2, checkpoint_every=2, max_steps=4, warmup_ratio=0.0,
                      lr=1e-3).model_dump()
    t.update(engine="torch", **trainer)
    extra = {"rejected": [a + " maybe" for a in ANSWERS]} if task in ("dpo", "reward") else {}
    return TrainSpec(task=task, start_model=model, start_is_flywheel=False, base_name="tiny", inputs=PROMPTS,
                     targets=ANSWERS, max_length=24, trainer=t, ckpt_root=str(root), **extra)


class _Crash(RuntimeError):
    """Stands for a process dying right after a checkpoint was committed."""


def test_resume_continues_bit_for_bit_and_corrupt_newest_falls_back(models, tmp_path):
    full = run(_spec(models["llama"], tmp_path / "a", max_steps=4), local_hooks(tmp_path / "a"))
    assert [h["step"] for h in full["history"]] == [1, 2, 3, 4]
    assert all(math.isfinite(h["loss"]) for h in full["history"])
    # the same run crashing right after its step-2 checkpoint, then resumed: the optimiser state, LR
    # schedule and data position were restored, so the losses match the uninterrupted run
    hooks = local_hooks(tmp_path / "b")
    commit = hooks.report

    def crash_after_commit(metrics, d, name):
        commit(metrics, d, name)
        if d is not None:
            raise _Crash(name)

    hooks.report = crash_after_commit
    with pytest.raises(_Crash, match=rc.ckpt_name(0, 2)):
        run(_spec(models["llama"], tmp_path / "b", max_steps=4), hooks)
    part = run(_spec(models["llama"], tmp_path / "b", max_steps=4), local_hooks(tmp_path / "b"))
    assert [e["event"] for e in part["events"]].count("resumed") == 1
    assert [h["loss"] for h in part["history"]] == pytest.approx([h["loss"] for h in full["history"]], rel=1e-5)

    # corrupt the newest checkpoint of run "a" (step 4): the resume skips it, names the file, uses step 2
    newest = tmp_path / "a" / rc.ckpt_name(0, 4)
    victim = newest / "rank_0" / "torch_state.pt"
    victim.write_bytes(victim.read_bytes()[:100])
    again = run(_spec(models["llama"], tmp_path / "a", max_steps=6), local_hooks(tmp_path / "a"))
    skipped = [e for e in again["events"] if e["event"] == "skipped_checkpoint"]
    assert len(skipped) == 1 and str(victim) in skipped[0]["problem"] and "truncated" in skipped[0]["problem"]
    resumed = [e for e in again["events"] if e["event"] == "resumed"][-1]
    assert resumed["step"] == 2 and resumed["from"].endswith(rc.ckpt_name(0, 2))
    assert [h["step"] for h in again["history"]] == [1, 2, 3, 4, 5, 6]
    # the resumed generation never reuses the corrupted checkpoint's name
    assert (tmp_path / "a" / rc.ckpt_name(1, 6)).is_dir()


def test_every_full_checkpoint_torn_resumes_from_the_best_and_keeps_its_history(models, tmp_path):
    first = run(_spec(models["llama"], tmp_path / "w", max_steps=4), local_hooks(tmp_path / "w"))
    best = rc.newest_best(tmp_path / "w")
    at = rc.read_meta(best)["step"]
    assert [h["step"] for h in rc.read_records(best, rc.HISTORY)] == list(range(1, at + 1))
    for c in (tmp_path / "w").glob("g0_step_*"):  # both full checkpoints torn, as by a node lost mid-upload
        (c / "rank_0" / "torch_state.pt").write_bytes(b"")
    again = run(_spec(models["llama"], tmp_path / "w", max_steps=6), local_hooks(tmp_path / "w"))
    resumed = [e for e in again["events"] if e["event"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["kind"] == "weights" and resumed[0]["step"] == at
    assert sum(e["event"] == "skipped_checkpoint" for e in again["events"]) == 2
    assert [h["step"] for h in again["history"]] == [1, 2, 3, 4, 5, 6]  # the steps before the best are kept
    assert [h["loss"] for h in again["history"][:at]] == [h["loss"] for h in first["history"][:at]]


class _NanAt(SftTask):
    """SFT whose loss is NaN on chosen micro-batch calls (counted from 0): fault injection."""

    def __init__(self, spec, bad):
        super().__init__(spec)
        self.bad, self.calls = set(bad), 0

    def loss(self, model, b):
        loss, m = super().loss(model, b)
        self.calls += 1
        return (loss * float("nan") if self.calls - 1 in self.bad else loss), m


def test_nan_losses_are_skipped_then_abort_keeps_good_checkpoints(models, tmp_path):
    spec = _spec(models["llama"], tmp_path / "n", max_steps=4, max_nan_steps=2)
    task = _NanAt(spec, bad={1, 3, 4})  # calls 0..6: 1 bad, then 3,4 bad in a row (2 <= limit)
    out = run(spec, local_hooks(tmp_path / "n"), task=task)
    # 4 steps need 4 good micro-batches; 3 were skipped -> 7 loss calls
    assert out["nan_skipped"] == 3 and task.calls == 7 and len(out["history"]) == 4
    assert all(math.isfinite(h["loss"]) for h in out["history"])

    spec = _spec(models["llama"], tmp_path / "m", max_steps=6, max_nan_steps=2)
    task = _NanAt(spec, bad=set(range(4, 100)))  # diverges after 4 good steps (checkpoints at 2 and 4)
    with pytest.raises(NonFiniteLossError, match="3 consecutive"):
        run(spec, local_hooks(tmp_path / "m"), task=task)
    newest = rc.find_resume(None, tmp_path / "m")
    assert newest[1] == "full" and rc.read_meta(newest[0])["step"] == 4


def test_dpo_starts_at_ln2_with_model_or_precomputed_reference(models, tmp_path):
    # policy == reference at step 1, so h = 0 and the sigmoid loss is -log σ(0) = ln 2 = 0.693147
    for ref in ("model", "precompute"):
        out = run(_spec(models["llama"], tmp_path / ref, task="dpo", max_steps=2, dpo_reference=ref),
                  local_hooks(tmp_path / ref))
        h = out["history"]
        assert h[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
        assert h[0]["reward_margin"] == pytest.approx(0.0, abs=1e-6)
        assert {"preference_accuracy", "chosen_reward", "rejected_reward"} <= set(h[0])


def test_reward_model_exports_a_scalar_head(models, tmp_path):
    out = run(_spec(models["bert"], tmp_path / "r", task="reward", max_steps=2), local_hooks(tmp_path / "r"))
    model_dir = tmp_path / "r" / rc.ckpt_name(0, 2) / "model"
    meta = json.loads((model_dir / "flywheel_model.json").read_text())
    assert meta["task"] == "reward" and meta["labels"] == ["reward"]
    from safetensors.torch import load_file

    assert load_file(str(model_dir / "head.safetensors"))["weight"].shape == (1, 32)  # hidden 32 -> 1 reward
    assert math.isfinite(out["final_loss"])


def test_batch_plan_keeps_global_batch_across_world_sizes(models, tmp_path):
    spec = _spec(models["llama"], tmp_path, max_steps=None, epochs=2, global_batch_size=8)
    # global 8 = micro 2 × world × accum: world 1 -> 4, world 2 -> 2, world 4 -> 1
    plans = {w: Plan(spec, 40, w) for w in (1, 2, 4)}
    assert {w: p.ga for w, p in plans.items()} == {1: 4, 2: 2, 4: 1}
    assert {p.total for p in plans.values()} == {10}  # 2 epochs × (40 rows // 8) steps
    with pytest.raises(BatchSizeError, match="world_size=3"):
        Plan(spec, 40, 3)


def test_bad_rows_and_model_paths_name_the_culprit(models, tmp_path):
    s = _spec(models["llama"], tmp_path, task="dpo")
    with pytest.raises(BadRowError, match="row 2: 'chosen' and 'rejected' are identical"):
        rej = list(s.rejected)
        rej[2] = ANSWERS[2]
        make_task(s.model_copy(update={"rejected": rej}))
    with pytest.raises(BadRowError, match="row 5: field 'response' is empty"):
        make_task(_spec(models["llama"], tmp_path).model_copy(update={"targets": ANSWERS[:5] + [" "] + ANSWERS[6:]}))
    with pytest.raises(ModelPathError, match="/no/such/model.*does not exist"):
        run(s.model_copy(update={"start_model": "/no/such/model"}), local_hooks(tmp_path))
    with pytest.raises(ModelPathError, match=r"architectures \['BertModel'\]; task 'dpo' needs a causal"):
        run(s.model_copy(update={"start_model": models["bert"]}), local_hooks(tmp_path))
    with pytest.raises(ValueError, match="2 inputs but 1 targets"):
        TrainSpec(task="sft", start_model="x", start_is_flywheel=False, base_name="x", inputs=["a", "b"],
                  targets=["c"], max_length=8, trainer={})


def test_step_rows_depend_on_global_batch_not_world_size(models, tmp_path):
    spec = _spec(models["llama"], tmp_path, max_steps=None, epochs=2, global_batch_size=8)

    def step_rows(world: int, step: int) -> list[int]:
        p = Plan(spec, 40, world)  # micro 2: world 1 -> accum 4, world 2 -> 2, world 4 -> 1
        return [i for r in range(world) for m in range(p.ga) for i in p.indices(step * p.ga + m, r, 0)[0]]

    for step in (0, 4, 5, 9):  # 40 // 8 = 5 steps an epoch: step 5 starts epoch 1
        rows = step_rows(1, step)
        assert step_rows(2, step) == rows and step_rows(4, step) == rows
        assert len(set(rows)) == 8  # a step never repeats a row when n >= global batch
    # an epoch visits every row once: 5 steps × 8 rows = 40
    assert sorted(i for s in range(5) for i in step_rows(2, s)) == list(range(40))


def test_resume_modes():
    from app.train.reshard import resume_mode

    meta = {"world_size": 2, "engine": "deepspeed", "zero_stage": 2}
    assert resume_mode(None, "none", 1, "deepspeed", 2) is None
    assert resume_mode(meta, "full", 2, "deepspeed", 2) == "same"
    assert resume_mode(meta, "full", 1, "deepspeed", 2) == "universal"  # ZeRO-2 partitions: re-partition
    assert resume_mode({**meta, "zero_stage": 0}, "full", 3, "deepspeed", 0) == "replicated"
    assert resume_mode({**meta, "engine": "torch"}, "full", 1, "torch", 2) == "replicated"  # DDP replicas
    assert resume_mode(meta, "full", 2, "deepspeed", 3) == "weights"  # another ZeRO stage
    assert resume_mode(meta, "weights", 2, "deepspeed", 2) == "weights"  # only the kept best is left


def test_compression_needs_the_torch_engine(models):
    import torch

    from app.train.engine import make_engine

    t = TrainerConfig().model_dump()
    lin = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="grad_compression='powersgd' needs trainer.engine='torch'"):
        make_engine(lin, [{"params": list(lin.parameters()), "lr": 1e-3}], {**t, "grad_compression": "powersgd"},
                    1, 0, 1, 2, 0)
    with pytest.raises(ValueError, match=r"grad_compression='zip'; allowed: \['none', 'powersgd', 'topk'\]"):
        make_engine(lin, [{"params": list(lin.parameters()), "lr": 1e-3}], {**t, "grad_compression": "zip"},
                    1, 0, 1, 2, 0)


def test_curriculum_orders_the_data_by_token_count(models, tmp_path):
    from app.train.tasks import make_task, row_tokens

    shuffled = run(_spec(models["llama"], tmp_path / "s", max_steps=2), local_hooks(tmp_path / "s"))
    cur = run(_spec(models["llama"], tmp_path / "c", max_steps=2, curriculum="linear", curriculum_c0=0.25),
              local_hooks(tmp_path / "c"))
    assert [h["step"] for h in cur["history"]] == [1, 2]
    # step 1 under the curriculum trains on the 2 shortest rows (c0 0.25 x 8 rows), not the shuffled pair
    spec = _spec(models["llama"], tmp_path / "x")
    task = make_task(spec)
    _, tok = task.build(models["llama"])
    n_tokens = row_tokens(task.features(tok))
    assert n_tokens.shape == (8,) and n_tokens.min() >= 2
    assert cur["history"][0]["loss"] != pytest.approx(shuffled["history"][0]["loss"], abs=1e-6)


def test_deepspeed_one_rank_zero0_skips_the_identity_allreduce_and_keeps_exact_grads():
    """World 1, ZeRO-0: DeepSpeed's backward all-reduce over one rank is off (it only copied every gradient);
    the gradients are bit-for-bit those of plain autograd on the same model. ZeRO-2 keeps its own path."""
    import copy

    import torch

    from app.train.engine import make_engine

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    ref = copy.deepcopy(model)
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    t = {**TrainerConfig(micro_batch_size=4).model_dump(), "engine": "deepspeed", "zero_stage": 0}
    eng = make_engine(model, [{"params": list(model.parameters()), "lr": 1e-3}], t, 1, 0, 1, 10, 0)
    assert eng.ds.enable_backward_allreduce is False
    eng.backward(torch.nn.functional.cross_entropy(eng(x), y))
    torch.nn.functional.cross_entropy(ref(x), y).backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad)
    z2 = copy.deepcopy(ref)
    eng2 = make_engine(z2, [{"params": list(z2.parameters()), "lr": 1e-3}], {**t, "zero_stage": 2}, 1, 0, 1, 10, 0)
    assert eng2.ds.enable_backward_allreduce is True
