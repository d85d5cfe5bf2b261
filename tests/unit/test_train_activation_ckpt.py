"""Selective activation checkpointing: hand-picked layers and identical outputs and gradients."""

import copy

import pytest
import torch

from app.train.activation_ckpt import apply_checkpointing, layers_to_checkpoint


def test_largest_layers_first_ties_by_index():
    sizes = [10, 40, 40, 5, 30]
    # ratio 0.5 of 5 layers -> ceil(2.5) = 3: 40 (idx 1), 40 (idx 2), 30 (idx 4)
    assert layers_to_checkpoint(sizes, 0.5) == [1, 2, 4]
    # ratio 0.2 -> 1 layer: the tie 40/40 goes to the lower index
    assert layers_to_checkpoint(sizes, 0.2) == [1]
    assert layers_to_checkpoint(sizes, 0.0) == []
    assert layers_to_checkpoint(sizes, 1.0) == [0, 1, 2, 3, 4]
    assert len(layers_to_checkpoint([1] * 10, 0.3)) == 3  # 0.3*10 is 3.0000000000000004 in floats


def test_bad_input():
    with pytest.raises(ValueError, match="ratio=1.5"):
        layers_to_checkpoint([1, 2], 1.5)
    with pytest.raises(ValueError, match=r"\(1, -3\)"):
        layers_to_checkpoint([1, -3], 0.5)
    with pytest.raises(IndexError, match=r"\[5\] out of range for 2 layers"):
        apply_checkpointing([torch.nn.Linear(2, 2)] * 2, [5])


class CountingBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.calls = torch.nn.Linear(8, 8), 0

    def forward(self, x, scale=1.0):
        self.calls += 1
        return torch.tanh(self.lin(x)) * scale


def test_wrapped_mlp_same_outputs_and_grads_and_recomputes():
    torch.manual_seed(0)
    ref = torch.nn.ModuleList([CountingBlock() for _ in range(3)])
    ck = copy.deepcopy(ref)
    assert apply_checkpointing(ck, [0, 2]) == 2
    assert apply_checkpointing(ck, [2]) == 0  # no double wrapping

    x = torch.randn(4, 8)

    def run(layers):
        h = x
        for layer in layers:
            h = layer(h, scale=0.5)
        h.pow(2).sum().backward()
        return h

    out_ref, out_ck = run(ref), run(ck)
    assert torch.equal(out_ref, out_ck)
    for p, q in zip(ref.parameters(), ck.parameters()):
        assert torch.allclose(p.grad, q.grad)
    # checkpointed layers ran forward twice (forward + recompute in backward), the other once
    assert [b.calls for b in ck] == [2, 1, 2] and [b.calls for b in ref] == [1, 1, 1]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from app.models.backbones import resolve

    return str(resolve("tiny-llama", tmp_path_factory.mktemp("models")))


def _saved_bytes(model, ids) -> tuple[int, torch.Tensor, list[torch.Tensor]]:
    """Bytes autograd keeps for backward outside checkpointed blocks, the loss and the gradients."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return sum(saved), loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_hf_decoder_blocks_wrapped_same_grads_less_saved_memory(tiny_llama):
    from transformers import AutoModelForCausalLM

    from app.train.activation_ckpt import checkpoint_model, find_layers

    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert find_layers(base)[0] == "model.layers" and len(base.model.layers) == 2
    half, full = copy.deepcopy(base), copy.deepcopy(base)
    # equal block sizes: ceil(0.5 × 2) = 1 block, the tie goes to the first
    assert checkpoint_model(half, 0.5) == ["model.layers.0"]
    assert checkpoint_model(full, 1.0) == ["model.layers.0", "model.layers.1"]
    assert full.config.use_cache is False  # a recomputed block must not append to a KV cache twice
    ids = torch.randint(0, base.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    b0, l0, g0 = _saved_bytes(base, ids)
    b_half, l_half, g_half = _saved_bytes(half, ids)
    b1, l1, g1 = _saved_bytes(full, ids)
    assert torch.equal(l0, l1) and torch.equal(l0, l_half)
    for a, b, c in zip(g0, g_half, g1):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-7)
    # each checkpointed block keeps only its input instead of every intermediate: saved bytes fall
    # monotonically with the ratio (about 2 blocks' worth of intermediates gone at ratio 1)
    assert b1 < b_half < b0
    per_block = (b0 - b1) / 2
    assert b0 - b_half == pytest.approx(per_block, rel=0.05)  # blocks are identical: half the saving


def test_runner_option_trains_identically(tiny_llama, tmp_path):
    from app.config import TrainerConfig
    from app.train.runner import Hooks, run
    from app.train.spec import TrainSpec

    said = []
    losses = {}
    for ratio in (0.0, 1.0):
        t = TrainerConfig(num_workers=1, micro_batch_size=2, max_steps=3, warmup_ratio=0.0, lr=1e-3,
                          checkpoint_every=100, export=False).model_dump()
        t.update(engine="torch", activation_checkpoint_ratio=ratio)
        spec = TrainSpec(task="sft", start_model=tiny_llama, start_is_flywheel=False, base_name="tiny",
                         inputs=["say hi", "count", "name a colour", "spell cat"],
                         targets=["hi", "1 2", "red", "c a t"],
                         max_length=16, trainer=t)
        out = run(spec, Hooks(say=said.append))
        losses[ratio] = [h["loss"] for h in out["history"]]
    assert losses[1.0] == pytest.approx(losses[0.0], rel=1e-5)
    assert any("activation checkpointing on 2 blocks" in s for s in said)
