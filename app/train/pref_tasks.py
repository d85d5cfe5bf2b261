"""Preference-pair objectives: DPO (against a frozen reference) and a Bradley–Terry reward model.

Each micro-batch holds B pairs as one (2B, L) batch — chosen rows then rejected rows — so one forward
pass scores both sides.

dpo: h = (log π(y_c) - log π(y_r)) - (log π_ref(y_c) - log π_ref(y_r)), loss by ``dpo_loss`` (sigmoid,
    hinge, ipo, robust; app.train.losses); π_ref is a frozen copy, the policy with its LoRA adapter
    switched off, or log-probs computed once at the start (``dpo_reference: precompute``) or given.
reward: r = w · mean_pool(backbone(prompt, response)), loss -log σ(r_c - r_r) (Bradley & Terry 1952).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from app.train.losses import IGNORE_INDEX, bradley_terry_loss, dpo_loss, preference_metrics, sequence_logprobs
from app.train.spec import option
from app.train.tasks import META, ClassifyTask, SftTask, Task


def _pad_to(t: torch.Tensor, L: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, L - t.shape[1]), value=value)


def _pair_features(sides: list[dict], truncated: int) -> dict:
    out = {f"{k}_{key}": v for k, side in zip(("c", "r"), sides) for key, v in side.items() if key != "truncated"}
    out["truncated"] = truncated
    return out


def _concat_pair(feats: dict, idx: list[int]) -> dict:
    """Chosen rows then rejected rows as one (2B, L) batch, L the longest unpadded row of either side."""
    sides = [{key[2:]: v[idx] for key, v in feats.items() if key.startswith(p)} for p in ("c_", "r_")]
    L = max(int(s["attention_mask"].sum(1).max()) for s in sides)
    pad = {"input_ids": 0, "attention_mask": 0, "labels": IGNORE_INDEX}
    b = {key: torch.cat([_pad_to(s[key][:, :L], L, pad[key]) for s in sides]) for key in sides[0]}
    for k in ("ref_chosen", "ref_rejected"):
        if k in feats:
            b[k] = feats[k][idx]
    return b


class DpoTask(SftTask):
    name = "dpo"

    def build(self, is_flywheel: bool):
        model, tok = super().build(is_flywheel)
        t = self.spec.trainer
        if option(t, "dpo_reference") not in ("model", "precompute"):
            raise ValueError(f"trainer.dpo_reference={option(t, 'dpo_reference')!r}; allowed: 'model', 'precompute'")
        if option(t, "dpo_reference") == "model" and self.spec.ref_chosen_logps is None \
                and not hasattr(model, "disable_adapter"):
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)  # frozen π_ref
        return model, tok

    def features(self, tok) -> dict:
        from app.models.lm import sft_features

        s = self.spec
        sides = [sft_features(tok, s.inputs, resp, s.max_length) for resp in (s.targets, s.rejected)]
        feats = _pair_features(sides, sides[0]["truncated"] + sides[1]["truncated"])
        if s.ref_chosen_logps is not None:
            feats["ref_chosen"] = torch.tensor(s.ref_chosen_logps, dtype=torch.float32)
            feats["ref_rejected"] = torch.tensor(s.ref_rejected_logps, dtype=torch.float32)
        return feats

    def batch(self, feats: dict, idx: list[int]) -> dict:
        return _concat_pair(feats, idx)

    def _logps(self, model, b: dict) -> torch.Tensor:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits  # (2B, T, V)
        lp = sequence_logprobs(logits, b["labels"])  # (2B,)
        if option(self.spec.trainer, "dpo_loss") == "ipo":  # IPO is defined on length-averaged log-probs
            lp = lp / (b["labels"][:, 1:] != IGNORE_INDEX).sum(-1).clamp(min=1)
        return lp

    @torch.no_grad()
    def reference_logps(self, model, b: dict) -> torch.Tensor:
        """(2B,) log π_ref of the batch rows: the frozen copy, or the policy with its LoRA adapter off."""
        if self.reference is not None:
            return self._logps(self.reference, b)
        module = getattr(model, "module", model)  # a DeepSpeed engine wraps the peft model
        with module.disable_adapter():
            return self._logps(module, b)

    def precompute(self, model, feats: dict, batch_size: int = 8) -> None:
        """Store log π_ref for every pair in ``feats`` (the start model is the reference)."""
        was = model.training
        model.eval()
        n = feats["c_input_ids"].shape[0]
        out = []
        with torch.no_grad():
            for i in range(0, n, batch_size):
                idx = list(range(i, min(n, i + batch_size)))
                out.append(self._logps(model, _concat_pair(feats, idx)).view(2, -1))
        ref = torch.cat(out, 1)  # (2, n)
        feats["ref_chosen"], feats["ref_rejected"] = ref[0].clone(), ref[1].clone()
        model.train(was)

    def loss(self, model, b: dict) -> tuple[torch.Tensor, dict]:
        t = self.spec.trainer
        lp = self._logps(model, b)
        B = lp.shape[0] // 2
        if "ref_chosen" in b:
            ref_c, ref_r = b["ref_chosen"], b["ref_rejected"]
            if option(t, "dpo_loss") == "ipo" and self.spec.ref_chosen_logps is not None:
                n_tok = (b["labels"][:, 1:] != IGNORE_INDEX).sum(-1).clamp(min=1)  # given refs are sums
                ref_c, ref_r = ref_c / n_tok[:B], ref_r / n_tok[B:]
        else:
            ref = self.reference_logps(model, b)
            ref_c, ref_r = ref[:B], ref[B:]
        loss, rc, rr = dpo_loss(lp[:B], lp[B:], ref_c, ref_r, beta=option(t, "dpo_beta"),
                                loss_type=option(t, "dpo_loss"), label_smoothing=option(t, "dpo_label_smoothing"))
        m = preference_metrics(rc, rr)
        m.update(chosen_reward=rc.mean().item(), rejected_reward=rr.mean().item())
        return loss, m


class RewardTask(Task):
    name = "reward"

    def build(self, is_flywheel: bool):
        from transformers import AutoModel, AutoTokenizer

        from app.models.classifier import TextClassifier

        s = self.spec
        src = Path(s.start_model) / "backbone" if is_flywheel else Path(s.start_model)
        torch.manual_seed(s.trainer["seed"])
        model = TextClassifier(AutoModel.from_pretrained(src, dtype=torch.float32), 1)  # scalar reward head
        if is_flywheel:
            from safetensors.torch import load_file

            model.head.load_state_dict(load_file(str(Path(s.start_model) / "head.safetensors")))
        tok = AutoTokenizer.from_pretrained(src)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return model, tok

    def param_groups(self, model) -> list[dict]:
        return ClassifyTask.param_groups(self, model)

    def features(self, tok) -> dict:
        s = self.spec
        sides, truncated = [], 0
        for resp in (s.targets, s.rejected):
            full = tok(list(s.inputs), list(resp))["input_ids"]
            truncated += sum(len(x) > s.max_length for x in full)
            enc = tok(list(s.inputs), list(resp), padding="max_length", truncation=True,
                      max_length=s.max_length, return_tensors="pt")
            sides.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
        return _pair_features(sides, truncated)

    def batch(self, feats: dict, idx: list[int]) -> dict:
        return _concat_pair(feats, idx)

    def loss(self, model, b: dict) -> tuple[torch.Tensor, dict]:
        r = model(b["input_ids"], b["attention_mask"])[:, 0]  # (2B,)
        B = r.shape[0] // 2
        m = preference_metrics(r[:B], r[B:])
        m.update(chosen_reward=r[:B].mean().item(), rejected_reward=r[B:].mean().item())
        return bradley_terry_loss(r[:B], r[B:]), m

    def export(self, module, state_dict, tok, out: Path) -> None:
        from app.models.classifier import save_classifier

        s = self.spec
        save_classifier(module, tok, out, ["reward"], s.max_length, s.base_name, state_dict=state_dict)
        meta = json.loads((out / META).read_text())
        meta["task"] = "reward"  # a scalar head: not loadable as a classifier
        (out / META).write_text(json.dumps(meta, indent=2))
