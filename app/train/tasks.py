"""The training objectives behind one runner: build the model, turn rows into tensors, compute the loss
and its metrics for a micro-batch, export the trained model.

classify: cross-entropy on class labels over a pooled backbone + linear head.
sft: next-token cross-entropy on response tokens only (prompt masked with -100).
dpo, reward: preference pairs, in app.train.pref_tasks.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch

from app.train.bad_input import BadRowError, check_pair
from app.train.losses import classification_loss, sft_loss
from app.train.spec import TrainSpec

log = logging.getLogger(__name__)
META = "flywheel_model.json"
# Flywheel model kinds each task may continue from (dpo starts from any causal LM, incl. an SFT result)
_CONTINUES = {"classify": {"classify"}, "sft": {"sft"}, "dpo": {"sft"}, "reward": {"reward"}}


class ModelPathError(ValueError):
    """The start model does not exist or cannot serve the task."""


def check_start_model(path: str, task: str) -> bool:
    """Validate ``path`` for ``task``; True when it is a Flywheel model dir, False for a Hugging Face dir.

    Raises:
        ModelPathError: the path does not exist, is neither kind of model directory, is a Flywheel
            model of another task, or (sft / dpo) its architecture is not a causal LM.
    """
    p = Path(path)
    if not p.exists():
        raise ModelPathError(f"start model {str(p)!r} does not exist (task {task!r})")
    if (p / META).is_file():
        kind = json.loads((p / META).read_text()).get("task")
        if kind not in _CONTINUES[task]:
            raise ModelPathError(f"start model {str(p)!r} is a Flywheel {kind!r} model; task {task!r} can "
                                 f"start from {sorted(_CONTINUES[task])} models or a Hugging Face directory")
        return True
    if not (p / "config.json").is_file():
        raise ModelPathError(f"start model {str(p)!r} has neither {META} nor config.json: not a model directory")
    arch = json.loads((p / "config.json").read_text()).get("architectures") or []
    if task in ("sft", "dpo") and not any(a.endswith("ForCausalLM") for a in arch):
        raise ModelPathError(f"start model {str(p)!r} has architectures {arch}; task {task!r} needs a causal "
                             f"language model (an architecture ending in 'ForCausalLM', e.g. tiny-llama, smollm2)")
    return False


def _check_rows(spec: TrainSpec) -> None:
    for i, (x, y) in enumerate(zip(spec.inputs, spec.targets)):
        if not x or not x.strip():
            raise BadRowError(f"row {i}: field 'input' is empty ({x!r}); every row needs a text or prompt")
        if spec.task == "sft" and (not y or not y.strip()):
            raise BadRowError(f"row {i}: field 'response' is empty ({y!r}); SFT needs a response to learn")
    if spec.task in ("dpo", "reward"):
        for i, (c, r) in enumerate(zip(spec.targets, spec.rejected)):
            check_pair(c, r, row=i)


def trim_padding(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None = None):
    """Cut right-padded (B, T) tensors to the longest row of the batch (less compute on padding)."""
    L = max(1, int(mask.sum(1).max()))  # right padding: the longest row of this batch
    return ids[:, :L], mask[:, :L], (None if labels is None else labels[:, :L])


class Task:
    """Base of the four objectives; subclasses fill in build / features / batch / loss / export."""

    name = ""

    def __init__(self, spec: TrainSpec):
        self.spec = spec
        self.reference: torch.nn.Module | None = None

    def param_groups(self, model) -> list[dict]:
        t = self.spec.trainer
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": t["lr"]}]

    def batch(self, feats: dict, idx: list[int]) -> dict:
        ids, mask, labels = trim_padding(feats["input_ids"][idx], feats["attention_mask"][idx], feats["labels"][idx])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    @staticmethod
    def tokens(batch: dict) -> int:
        return int(sum(v.sum() for k, v in batch.items() if k.endswith("attention_mask")))


class ClassifyTask(Task):
    name = "classify"

    def build(self, is_flywheel: bool):
        from transformers import AutoTokenizer

        from app.models.classifier import build_classifier, load_classifier

        s = self.spec
        if is_flywheel:
            model, tok, _ = load_classifier(s.start_model)
        else:
            model = build_classifier(s.start_model, s.label_names, seed=s.trainer["seed"])
            tok = AutoTokenizer.from_pretrained(s.start_model)
        return model, tok

    def param_groups(self, model) -> list[dict]:
        t = self.spec.trainer  # the fresh head learns faster than the pretrained backbone
        return [{"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr": t["lr"]},
                {"params": list(model.head.parameters()), "lr": t["head_lr"]}]

    def batch(self, feats: dict, idx: list[int]) -> dict:
        ids, mask, _ = trim_padding(feats["input_ids"][idx], feats["attention_mask"][idx])
        return {"input_ids": ids, "attention_mask": mask, "labels": feats["labels"][idx]}  # labels (B,)

    def features(self, tok) -> dict:
        from app.train.data import classify_features

        s = self.spec
        return classify_features(tok, s.inputs, s.targets, s.label_names, s.max_length)

    def loss(self, model, b: dict) -> tuple[torch.Tensor, dict]:
        logits = model(b["input_ids"], b["attention_mask"])  # (B, K)
        return classification_loss(logits, b["labels"]), {}

    def export(self, module, state_dict, tok, out: Path) -> None:
        from app.models.classifier import save_classifier

        s = self.spec
        save_classifier(module, tok, out, s.label_names, s.max_length, s.base_name, state_dict=state_dict)


class SftTask(Task):
    name = "sft"

    def build(self, is_flywheel: bool):
        from app.models.lm import load_lm

        model, tok, _ = load_lm(self.spec.start_model)
        lc = self.spec.trainer.get("lora", {})
        if lc.get("enabled"):
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=lc["r"], lora_alpha=lc["alpha"], lora_dropout=lc["dropout"],
                                                     target_modules=list(lc["target_modules"]), task_type="CAUSAL_LM"))
        return model, tok

    def features(self, tok) -> dict:
        from app.models.lm import sft_features

        return sft_features(tok, self.spec.inputs, self.spec.targets, self.spec.max_length)

    def loss(self, model, b: dict) -> tuple[torch.Tensor, dict]:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits  # (B, T, V)
        return sft_loss(logits, b["labels"]), {}

    def export(self, module, state_dict, tok, out: Path) -> None:
        from app.models.lm import save_lm

        m = module
        if hasattr(m, "merge_and_unload"):  # LoRA: export merged weights so any HF user can load it
            m = copy.deepcopy(m).merge_and_unload()
        save_lm(m, tok, out, self.spec.max_length, self.spec.base_name)
        if self.name != "sft":
            meta = json.loads((out / META).read_text())
            meta["objective"] = self.name
            (out / META).write_text(json.dumps(meta, indent=2))


def make_task(spec: TrainSpec) -> Task:
    """The objective for ``spec.task``, after checking the rows (BadRowError names the first bad row)."""
    from app.train.pref_tasks import DpoTask, RewardTask

    _check_rows(spec)
    tasks: dict[str, type[Task]] = {"classify": ClassifyTask, "sft": SftTask, "dpo": DpoTask, "reward": RewardTask}
    return tasks[spec.task](spec)


def row_tokens(feats: dict) -> "np.ndarray":
    """(n,) tokens per row: the attention masks summed (over every sequence of a row, e.g. chosen + rejected)."""
    import numpy as np

    masks = [v for k, v in feats.items() if k.endswith("attention_mask")]
    return np.asarray(sum(m.reshape(m.shape[0], -1).sum(dim=1).double() for m in masks), dtype=np.float64)


def describe(feats: dict) -> dict[str, Any]:
    """Row count and truncation share of built features."""
    n = next(v.shape[0] for k, v in feats.items() if k.endswith("input_ids"))
    return {"rows": int(n), "truncated": int(feats.get("truncated", 0))}
