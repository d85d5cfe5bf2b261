"""Validation score of a classification checkpoint: what a tuning trial reports after each iteration.

The trainer's own reports carry the training loss only; a study compares trials on held-out rows, so each
trial keeps one evaluation copy of the model and loads every new checkpoint's weights into it.
"""

from __future__ import annotations

import math
from pathlib import Path


class ValScorer:
    """Accuracy and mean cross-entropy of checkpoint weights on fixed validation rows.

    Args:
        start_model: the backbone directory the trial starts from (same architecture as its checkpoints).
        label_names: class names, index = class id (as the trainer's TrainSpec.label_names).
        texts, labels: validation rows (labels are names).
        max_length: tokens per text.
    """

    def __init__(self, start_model: str | Path, label_names: list[str], texts: list[str], labels: list[str],
                 max_length: int):
        from transformers import AutoTokenizer

        from app.models.classifier import build_classifier
        from app.train.data import classify_features

        self.model = build_classifier(start_model, label_names)
        self.model.eval()
        tok = AutoTokenizer.from_pretrained(start_model)
        self.feats = classify_features(tok, texts, labels, label_names, max_length)

    def score(self, state_dict: dict) -> dict[str, float]:
        """{"val_accuracy": mean(argmax logits == y), "val_loss": mean CE} over the n validation rows.

        Raises:
            FloatingPointError: the logits hold NaN or inf (diverged weights): the trial should error.
        """
        import torch

        self.model.load_state_dict(state_dict)
        ids, mask, y = self.feats["input_ids"], self.feats["attention_mask"], self.feats["labels"]
        with torch.no_grad():
            logits = torch.cat([self.model(ids[i:i + 128], mask[i:i + 128]) for i in range(0, len(y), 128)])  # (n, K)
        if not bool(torch.isfinite(logits).all()):
            raise FloatingPointError("validation logits are NaN/inf: the weights diverged")
        acc = float((logits.argmax(-1) == y).float().mean())
        loss = float(torch.nn.functional.cross_entropy(logits, y))
        if not math.isfinite(loss):
            raise FloatingPointError(f"validation loss is {loss}")
        return {"val_accuracy": acc, "val_loss": loss}
