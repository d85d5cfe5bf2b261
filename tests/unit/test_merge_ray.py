"""Ray fan-out of a merge: tensors computed as Ray tasks give the same bytes as the in-process engine."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from app.merge.config import MergeConfig
from app.merge.engine import run_merge
from app.merge.plan import build_plan

pytestmark = pytest.mark.integration


def _model(path, seed):
    g = torch.Generator().manual_seed(seed)
    t = {"model.embed_tokens.weight": torch.randn(16, 8, generator=g), "model.norm.weight": torch.ones(8)}
    for i in range(2):
        t.update({f"model.layers.{i}.mlp.up_proj.weight": torch.randn(12, 8, generator=g),
                  f"model.layers.{i}.self_attn.q_proj.weight": torch.randn(8, 8, generator=g)})
    path.mkdir()
    save_file(t, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                                  "hidden_size": 8, "vocab_size": 16, "num_hidden_layers": 2}))
    return str(path)


def read(path):
    index = json.loads((path / "model.safetensors.index.json").read_text())
    out = {}
    for name, shard in index["weight_map"].items():
        with safe_open(str(path / shard), framework="pt") as f:
            out[name] = f.get_tensor(name)
    return out


def test_ray_map_output_equals_local_merge(tmp_path, ray_dir):
    zoo = {n: _model(tmp_path / n, seed) for seed, n in enumerate(["base", "ft0", "ft1"])}
    ray = pytest.importorskip("ray")
    from actors.merge_workers import ray_map

    cfg = MergeConfig.model_validate({"merge_method": "ties", "base_model": zoo["base"], "models": [
        {"model": zoo[f"ft{i}"], "parameters": {"weight": 1.0, "density": 0.5}} for i in range(2)]})
    plan = build_plan(cfg)
    run_merge(plan, tmp_path / "local", progress=False)
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=ray_dir)
    try:
        summary = run_merge(plan, tmp_path / "ray", progress=False, map_fn=ray_map(max_in_flight=2))
    finally:
        ray.shutdown()
    a, b = read(tmp_path / "local"), read(tmp_path / "ray")
    assert summary["tensors"] == len(plan.tasks) == 6
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
