"""Ensemble members: Flywheel classifier directories, loaded for inference or built from labelled data.

A member is any Flywheel classifier directory (`app.models.classifier` format), so the loop's trained champion
can be served as a member next to members built here. `build_member` makes one cheaply on CPU: the backbone
stays frozen, texts are mean-pooled into embeddings, and a scikit-learn logistic regression fitted on those
embeddings becomes the linear head. Shapes: n texts, H hidden width, K classes.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from app.serving.data import Split


class MemberModel:
    """Inference of one member: `forward(texts) -> (logits (n, K), embeddings (n, H))`.

    Right padding matters for decoder backbones: with causal attention real tokens never see the pads after
    them, so a text gets the same logits whatever batch it is in (left padding would shift its positions).
    """

    def __init__(self, model_dir: str | Path, torch_threads: int | None = None):
        import torch

        from app.models.classifier import load_classifier

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.model, self.tok, self.meta = load_classifier(model_dir)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.tok.padding_side = "right"
        self.labels: list[str] = list(self.meta["labels"])
        self.max_length = int(self.meta["max_length"])

    def forward(self, texts: list[str], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Logits W·e + b (n, K) and pooled embeddings e (n, H), float32, in input order."""
        import torch

        logits, embs = [], []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                enc = self.tok(list(texts[i:i + batch_size]), padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt")
                e = self.model.embed(enc["input_ids"], enc["attention_mask"])  # (b, H)
                embs.append(e.float().numpy())
                logits.append(self.model.head(e).float().numpy())  # eval mode: no dropout
        if not logits:
            return np.zeros((0, len(self.labels)), np.float32), np.zeros((0, self.model.head.in_features), np.float32)
        return np.concatenate(logits), np.concatenate(embs)


def fingerprint(model_dir: str | Path) -> str:
    """12 hex chars identifying a member directory's content: sha256 of its head and metadata files.

    The backbone is frozen in built members, but a trained loop model changes its backbone too, so the sizes
    and modification times of the backbone weights are part of the key (hashing 500 MB would take seconds).
    """
    d = Path(model_dir)
    h = hashlib.sha256()
    for name in ("flywheel_model.json", "head.safetensors"):
        h.update((d / name).read_bytes())
    for p in sorted((d / "backbone").glob("*.safetensors")):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def linear_head_from_logreg(coef: np.ndarray, intercept: np.ndarray, mean: np.ndarray,
                            scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fold standardisation and scikit-learn's logistic regression into one linear layer (W (K, H), b (K,)).

    scikit-learn scores z = coef · (e - mean) / scale + intercept, so W = coef / scale and
    b = intercept - W · mean. Binary models have one row (the logit of class 1): softmax([0, z]) equals
    sigmoid(z) for class 1, so W gets a zero row for class 0.
    """
    w = coef / scale[None, :]
    b = intercept - w @ mean
    if w.shape[0] == 1:
        w = np.vstack([np.zeros_like(w), w])
        b = np.array([0.0, float(b[0])])
    return w, b


def ensure_backbone(name: str, cache_root: str | Path) -> Path:
    """The local HF directory of a member's backbone (`app.models.backbones.resolve`; SmolLM2 is converted from
    its shipped GGUF on first use there)."""
    from app.models import backbones

    return backbones.resolve(name, cache_root)


def build_member(backbone: str, out_dir: str | Path, train: Split, label_names: list[str], cache_root: str | Path,
                 max_length: int = 64, C: float = 1.0, batch_size: int = 32, torch_threads: int | None = None
                 ) -> dict:
    """Build a member directory: frozen backbone, masked mean pooling, logistic-regression head.

    Args:
        backbone: minilm, smollm2, tiny-bert or a Hugging Face directory (`app.models.backbones.resolve`).
        out_dir: where the Flywheel classifier directory is written (created).
        train: rows to fit the head on.
        label_names: K class names; `train.labels` index them.
        cache_root: where converted backbones are cached (SmolLM2 is de-quantised once).
        max_length: tokens per text.
        C: inverse L2 strength of the head.
        batch_size: texts per forward pass.
        torch_threads: torch threads while embedding (None: torch's default).

    Returns:
        {"dir", "backbone", "train_rows", "train_accuracy", "embed_s", "fit_s"}.
    """
    import torch
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoTokenizer

    from app.models.classifier import build_classifier, save_classifier

    if torch_threads:
        torch.set_num_threads(torch_threads)
    if len(set(train.labels.tolist())) < 2:
        raise ValueError(f"build_member: train rows hold {len(set(train.labels.tolist()))} class(es); need >= 2")
    src = ensure_backbone(backbone, cache_root)
    model = build_classifier(src, label_names)
    model.eval()
    tok = AutoTokenizer.from_pretrained(src)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    t0 = time.time()
    embs = []
    with torch.no_grad():
        for i in range(0, len(train.texts), batch_size):
            enc = tok(train.texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
            embs.append(model.embed(enc["input_ids"], enc["attention_mask"]).float().numpy())
    x = np.concatenate(embs).astype(np.float64)  # (n, H)
    t1 = time.time()
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0  # a constant feature stays 0 after centring
    clf = LogisticRegression(C=C, max_iter=2000).fit((x - mean) / scale, train.labels)
    if list(clf.classes_) != list(range(len(label_names))):
        raise ValueError(f"build_member: train labels cover classes {clf.classes_.tolist()}; need all "
                         f"{len(label_names)} of {label_names}")
    w, b = linear_head_from_logreg(clf.coef_, clf.intercept_, mean, scale)
    with torch.no_grad():
        model.head.weight.copy_(torch.as_tensor(w, dtype=torch.float32))
        model.head.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
    train_acc = float(np.mean((x @ w.T + b).argmax(axis=1) == train.labels))
    out = save_classifier(model, tok, out_dir, label_names, max_length, base=backbone)
    info = {"dir": str(out), "backbone": backbone, "train_rows": len(train.texts), "train_accuracy": train_acc,
            "embed_s": round(t1 - t0, 2), "fit_s": round(time.time() - t1, 2), "C": C}
    (Path(out) / "build.json").write_text(json.dumps(info, indent=2))
    return info
