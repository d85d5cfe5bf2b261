"""DPO bench (issue 2 of 5): SmolLM2-135M + LoRA on real HH-RLHF preference pairs, through the trainer
(Ray Train + DeepSpeed, 1 worker); preference accuracy on held-out pairs before vs after.

    python bench/trainer_dpo.py --train 256 --eval 200 --steps 32 --lr 2e-4 --beta 0.1

Data: Anthropic HH-RLHF harmless-base test split (data/hh_rlhf). A pair's prompt is the dialogue up to its
last "Assistant:" turn (the chat template wraps it as one user message); chosen / rejected are the two last
assistant turns. Only pairs whose both sides fit ``--max-length`` tokens are used (nothing truncated); a seeded
shuffle splits them into disjoint train and held-out sets.

Scores on the held-out pairs, with s(y) = log π(y | x) summed over response tokens:
  implicit-reward accuracy  P[(s_θ(y_c) - s_ref(y_c)) - (s_θ(y_r) - s_ref(y_r)) > 0]   (Rafailov et al. 2023)
    — before training θ = ref, so every margin is exactly 0 and the accuracy is 0.5 by definition (ties);
  log-prob accuracy         P[s(y_c) > s(y_r)], the model's own preference, before (ref) and after (θ);
  per-token accuracy        the same with s divided by the response length (removes the length bias).
Writes bench/results/trainer_dpo.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.atomic_files import write_json_atomic  # noqa: E402

OUT = ROOT / "bench" / "results"
MARK = "\n\nAssistant:"


def hh_pairs(path: Path) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) of every HH-RLHF row whose two dialogues differ only in the last turn."""
    out = []
    with gzip.open(path, "rt") as f:
        for line in f:
            r = json.loads(line)
            c, rj = r["chosen"], r["rejected"]
            i, j = c.rfind(MARK), rj.rfind(MARK)
            if i < 0 or c[:i] != rj[:j]:
                continue  # not the same conversation up to the compared turn
            prompt, yc, yr = c[:i].strip(), c[i + len(MARK):].strip(), rj[j + len(MARK):].strip()
            if prompt and yc and yr and yc != yr:
                out.append((prompt, yc, yr))
    return out


def fitting(tok, pairs, max_length: int) -> list[tuple[str, str, str]]:
    from app.models.lm import format_prompt

    eos = tok.eos_token or ""
    keep = []
    for p, yc, yr in pairs:
        n_p = len(tok(format_prompt(tok, p), add_special_tokens=False)["input_ids"])
        if all(n_p + len(tok(y + eos, add_special_tokens=False)["input_ids"]) <= max_length for y in (yc, yr)):
            keep.append((p, yc, yr))
    return keep


def scores(model, tok, pairs, max_length: int, batch: int = 8) -> dict[str, np.ndarray]:
    """Summed response log-probs and response lengths of both sides, through the trainer's DPO task code."""
    import torch

    from app.train.losses import IGNORE_INDEX, sequence_logprobs
    from app.train.pref_tasks import _concat_pair
    from app.train.spec import TrainSpec
    from app.train.tasks import make_task

    spec = TrainSpec(task="dpo", start_model="-", start_is_flywheel=False, base_name="smollm2",
                     inputs=[p for p, _, _ in pairs], targets=[c for _, c, _ in pairs],
                     rejected=[r for _, _, r in pairs], max_length=max_length, trainer={})
    feats = make_task(spec).features(tok)
    lp, n = [], []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(pairs), batch):
            b = _concat_pair(feats, list(range(i, min(len(pairs), i + batch))))
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            lp.append(sequence_logprobs(logits, b["labels"]).view(2, -1))
            n.append((b["labels"][:, 1:] != IGNORE_INDEX).sum(-1).view(2, -1))
    lp, n = torch.cat(lp, 1).double().numpy(), torch.cat(n, 1).double().numpy()
    return {"c": lp[0], "r": lp[1], "n_c": n[0], "n_r": n[1]}


def accuracies(s: dict, ref: dict | None) -> dict:
    res = {"logprob_accuracy": float(np.mean(s["c"] > s["r"])),
           "per_token_accuracy": float(np.mean(s["c"] / s["n_c"] > s["r"] / s["n_r"]))}
    if ref is not None:
        h = (s["c"] - ref["c"]) - (s["r"] - ref["r"])  # implicit reward margin / β
        res.update(implicit_reward_accuracy=float(np.mean(h > 0)), implicit_margin_mean=float(np.mean(h)),
                   implicit_reward_ties=int(np.sum(h == 0)))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=256, help="training pairs")
    ap.add_argument("--eval", type=int, default=200, help="held-out pairs")
    ap.add_argument("--steps", type=int, default=32, help="optimiser steps")
    ap.add_argument("--micro-batch", type=int, default=4, help="pairs per micro-batch")
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--loss", default="sigmoid", choices=["sigmoid", "hinge", "ipo", "robust"])
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--zero", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--storage", default="/tmp/flywheel-trainer-bench")
    ap.add_argument("--out", default=str(OUT / "trainer_dpo.json"))
    args = ap.parse_args()
    t0 = time.time()

    import torch

    from app.config import TrainerConfig
    from app.models.backbones import resolve
    from app.models.lm import load_lm
    from app.train.spec import TrainSpec

    torch.set_num_threads(args.threads)
    base = resolve("smollm2", ROOT / ".flywheel" / "models")
    ref_model, tok, _ = load_lm(base)
    pairs = fitting(tok, hh_pairs(ROOT / "data/hh_rlhf/harmless-base_test.jsonl.gz"), args.max_length)
    order = np.random.default_rng(args.seed).permutation(len(pairs))
    if len(pairs) < args.train + args.eval:
        raise SystemExit(f"only {len(pairs)} pairs fit {args.max_length} tokens; need {args.train + args.eval}")
    train = [pairs[i] for i in order[:args.train]]
    held = [pairs[i] for i in order[args.train:args.train + args.eval]]
    print(f"{len(pairs)} pairs fit {args.max_length} tokens; train {len(train)}, held-out {len(held)}", flush=True)

    ts = time.time()
    ref = scores(ref_model, tok, held, args.max_length)
    before = accuracies(ref, None)
    before.update(implicit_reward_accuracy=0.5, implicit_margin_mean=0.0, implicit_reward_ties=len(held))
    eval_s = time.time() - ts
    print("before", json.dumps(before), f"({eval_s:.0f}s)", flush=True)
    del ref_model

    t = TrainerConfig(num_workers=1, cpus_per_worker=float(args.threads), zero_stage=args.zero,
                      micro_batch_size=args.micro_batch, grad_accum=args.grad_accum, max_steps=args.steps,
                      checkpoint_every=10_000, warmup_ratio=0.1, lr=args.lr, max_failures=0, seed=args.seed,
                      dpo_beta=args.beta, dpo_loss=args.loss, report_every=5).model_dump()
    t["lora"].update(enabled=True, r=args.lora_r)
    spec = TrainSpec(task="dpo", start_model=str(base), start_is_flywheel=False, base_name="smollm2",
                     inputs=[p for p, _, _ in train], targets=[c for _, c, _ in train],
                     rejected=[r for _, _, r in train], max_length=args.max_length, trainer=t)

    import ray

    from actors.trainer import run_training

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("RAY_worker_niceness", "0")  # see trainer_bench._ray
    ray.init(address="local", num_cpus=args.threads, include_dashboard=False, _temp_dir=f"/tmp/fw-bench-ray-{os.getpid()}")
    name = f"dpo-{int(time.time())}"
    try:
        out = run_training(spec, Path(args.storage), name, Path(args.storage) / name / "final_model")
    finally:
        ray.shutdown()
    policy, _, _ = load_lm(out["model_dir"])  # the exported model: LoRA merged into the weights
    after = accuracies(scores(policy, tok, held, args.max_length), ref)
    print("after", json.dumps(after), flush=True)
    h = out["history"]
    k = max(1, len(h) // 4)
    res = {"what": "dpo", "data": "HH-RLHF harmless-base test (Anthropic), pairs fitting max_length",
           "pairs_fitting": len(pairs), "train_pairs": len(train), "held_out_pairs": len(held),
           "before": before, "after": after, "train_wall_s": out["wall_s"], "eval_s_per_pass": eval_s,
           "train_loss_first_last": [float(np.mean([x["loss"] for x in h[:k]])),
                                     float(np.mean([x["loss"] for x in h[-k:]]))],
           "train_preference_accuracy_first_last": [float(np.mean([x["preference_accuracy"] for x in h[:k]])),
                                                    float(np.mean([x["preference_accuracy"] for x in h[-k:]]))],
           "step_time_s_median": float(np.median([x["step_time_s"] for x in h])),
           "history": [{key: x[key] for key in ("step", "loss", "preference_accuracy", "reward_margin", "lr")}
                       for x in h],
           "args": vars(args), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
           "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "load_avg_at_end": os.getloadavg(), "wall_s_total": time.time() - t0}
    write_json_atomic(args.out, res)  # a killed run leaves the previous result
    print(json.dumps({k: v for k, v in res.items() if k != "history"}))


if __name__ == "__main__":
    main()
