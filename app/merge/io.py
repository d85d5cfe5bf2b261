"""Lazy access to Hugging Face safetensors model directories: headers first, one tensor at a time.

A model directory holds ``config.json`` and either ``model.safetensors`` or shards listed in
``model.safetensors.index.json``. ``ModelFiles.open`` reads only the JSON headers (names, shapes,
dtypes); ``load_tensor`` then reads a single tensor when the merge needs it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from app.merge.errors import MergeInputError

# safetensors dtype codes <-> torch dtypes (the codes appear in file headers).
ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
ST_CODES = {v: k for k, v in ST_DTYPES.items()}
DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64,
}
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
    "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json", "vocab.txt",
    "spiece.model",
)
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# "model.layers.12.mlp.up_proj.weight" -> ("model.layers", 12, "mlp.up_proj.weight"); GPT-2 style "h.3." too.
_LAYER = re.compile(r"^(?P<prefix>(?:.*?\.)?(?:layers|h|blocks|layer))\.(?P<idx>\d+)\.(?P<rest>.+)$")


def split_layer_name(name: str) -> tuple[str, int, str] | None:
    """(prefix, layer index, rest) for a per-layer tensor name, None for embeddings / final norm / head."""
    m = _LAYER.match(name)
    return (m.group("prefix"), int(m.group("idx")), m.group("rest")) if m else None


@dataclass(frozen=True)
class TensorMeta:
    """Where a tensor lives and what it is, from the safetensors header only."""

    path: str
    shape: tuple[int, ...]
    dtype: str  # safetensors code, e.g. "BF16"


def check_model_dir(name: str) -> str | None:
    """Why ``name`` is not a usable local safetensors model directory (None if it is); reads no tensor."""
    path = Path(name)
    if "+" in name and not path.exists():
        return f"model {name!r}: 'model+lora' references are not supported; merge the LoRA first"
    if not path.is_dir():
        return f"model {name!r}: not a local directory (hub ids are not downloaded; pass a path)"
    if not (path / "config.json").is_file():
        return f"model {name!r}: no config.json in {path}"
    if not (path / INDEX_FILE).is_file() and not (path / SINGLE_FILE).is_file():
        has_bin = (path / "pytorch_model.bin").exists()
        extra = " (found pytorch_model.bin: re-save with safe_serialization=True)" if has_bin else ""
        return f"model {name!r}: no {SINGLE_FILE} or {INDEX_FILE} in {path}{extra}"
    return None


@dataclass
class ModelFiles:
    """Header-level view of one model directory."""

    name: str
    path: Path
    config: dict
    tensors: dict[str, TensorMeta]

    @classmethod
    def open(cls, name: str, path: str | Path | None = None) -> "ModelFiles":
        """Read config.json and every shard header of the model at ``path`` (default: ``name``)."""
        from safetensors import safe_open

        root = Path(path if path is not None else name)
        problem = check_model_dir(str(root))
        if problem:
            raise MergeInputError(problem)
        config = json.loads((root / "config.json").read_text())
        if (root / INDEX_FILE).is_file():
            weight_map = json.loads((root / INDEX_FILE).read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = [SINGLE_FILE]
        tensors: dict[str, TensorMeta] = {}
        for fname in files:
            fpath = root / fname
            if not fpath.is_file():
                raise MergeInputError(f"model {name!r}: shard {fname} listed in {INDEX_FILE} is missing")
            with safe_open(str(fpath), framework="pt") as f:
                for key in f.keys():
                    sl = f.get_slice(key)
                    tensors[key] = TensorMeta(str(fpath), tuple(sl.get_shape()), sl.get_dtype())
        return cls(name=name, path=root, config=config, tensors=tensors)

    @property
    def num_layers(self) -> int:
        """Number of decoder layers, counted from tensor names."""
        idx = {p[1] for p in map(split_layer_name, self.tensors) if p}
        return max(idx) + 1 if idx else 0

    @property
    def vocab_size(self) -> int | None:
        """``vocab_size`` from config.json (top level or ``text_config``)."""
        return self.config.get("vocab_size") or (self.config.get("text_config") or {}).get("vocab_size")

    @property
    def architecture(self) -> tuple[str, ...]:
        """(model_type, *architectures) from config.json: must match across merged models."""
        return (str(self.config.get("model_type")), *(self.config.get("architectures") or []))

    @property
    def heads(self) -> tuple[int, int, int] | None:
        """(num_attention_heads, num_key_value_heads, head_dim) when config.json says so."""
        c = self.config
        n = c.get("num_attention_heads")
        if not n or not c.get("hidden_size"):
            return None
        return int(n), int(c.get("num_key_value_heads") or n), int(c.get("head_dim") or c["hidden_size"] // n)


def token_table(root: str | Path) -> list[str | None] | None:
    """Token of each id (index = id) of the tokenizer in a model directory; None when it has none we can read.

    Read from ``tokenizer.json`` (``model.vocab`` as a dict for BPE / WordPiece / WordLevel or a list of
    ``[piece, score]`` for Unigram, plus ``added_tokens``), else ``vocab.json``, else ``vocab.txt``. Ids
    with no token are None. A sentencepiece ``tokenizer.model`` alone is not parsed (returns None).
    """
    root = Path(root)
    ids: dict[int, str] = {}
    try:
        if (root / "tokenizer.json").is_file():
            data = json.loads((root / "tokenizer.json").read_text())
            vocab = (data.get("model") or {}).get("vocab")
            if isinstance(vocab, dict):
                ids.update({int(i): t for t, i in vocab.items()})
            elif isinstance(vocab, list):
                ids.update({i: (v[0] if isinstance(v, list) else str(v)) for i, v in enumerate(vocab)})
            ids.update({int(a["id"]): a["content"] for a in data.get("added_tokens") or []})
        elif (root / "vocab.json").is_file():
            ids.update({int(i): t for t, i in json.loads((root / "vocab.json").read_text()).items()})
        elif (root / "vocab.txt").is_file():
            ids.update(enumerate((root / "vocab.txt").read_text(encoding="utf-8").splitlines()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise MergeInputError(f"{root}: cannot read the tokenizer's vocabulary ({e})") from e
    if not ids:
        return None
    table: list[str | None] = [None] * (max(ids) + 1)
    for i, t in ids.items():
        table[i] = t
    return table


@lru_cache(maxsize=256)
def _header(path: str) -> tuple[dict, int]:
    """(JSON header, byte offset of the data section) of a safetensors file."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n)), 8 + n


def load_tensor(path: str, name: str) -> torch.Tensor:
    """Read one tensor from a safetensors file into private memory.

    The bytes are read with ``readinto`` at the tensor's offset instead of through a memory map: mapped
    pages stay resident (and count in the process's RSS) for as long as the file is open, so over a merge a
    mmap reader's RSS grows towards the size of every input model, while this reader holds only the tensors
    in flight. The layout (8-byte header length, JSON header, raw little-endian data) is the published
    safetensors format; dtypes we do not map fall back to ``safe_open``.
    """
    header, start = _header(path)
    meta = header.get(name)
    if meta is None:
        raise KeyError(f"tensor {name!r} is not in {path}")
    dtype = ST_DTYPES.get(meta["dtype"])
    if dtype is None:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return f.get_tensor(name)
    begin, end = meta["data_offsets"]
    buf = torch.empty(end - begin, dtype=torch.uint8)
    view = memoryview(buf.numpy())
    with open(path, "rb", buffering=0) as f:
        f.seek(start + begin)
        done = 0
        while done < len(view):
            got = f.readinto(view[done:])
            if not got:
                raise MergeInputError(f"{path}: file ends inside tensor {name!r} (truncated download?)")
            done += got
    return buf.view(dtype).reshape(meta["shape"])


def prefetch(path: str, name: str) -> None:
    """Ask the kernel to start reading one tensor's bytes into the page cache, without waiting for them.

    ``posix_fadvise(WILLNEED)`` queues asynchronous readahead, so the disk reads the next tensor while
    the CPU merges the current one; the pages live in the page cache, not in this process's memory (our
    reads are ``readinto`` copies, not maps), so peak RSS does not change. A no-op where the call is missing.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    header, start = _header(path)
    meta = header.get(name)
    if meta is None:
        return
    begin, end = meta["data_offsets"]
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, start + begin, end - begin, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)


def release_handles() -> None:
    """Forget cached file headers after a merge (files may be rewritten between merges)."""
    _header.cache_clear()
