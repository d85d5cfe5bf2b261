"""Pipeline layer split, the run's dp × tp × pp layout and MFU arithmetic (no process group, tiny models)."""

from __future__ import annotations

import pytest
import torch

from app.config import TrainerConfig
from app.train.layout import choose_layout
from app.train.mfu import flops_per_token, mfu, peak_flops
from app.train.pipeline import forward_unpiped


def _llama(tied: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied,
                                        pad_token_id=0, bos_token_id=1, eos_token_id=2)).eval()


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=4, n_positions=32, resid_pdrop=0,
                                      embd_pdrop=0, attn_pdrop=0, tie_word_embeddings=False, bos_token_id=1,
                                      eos_token_id=2)).eval()


@pytest.mark.parametrize("build", [_llama, lambda: _llama(tied=False), _gpt2], ids=["llama-tied", "llama", "gpt2"])
def test_pipeline_layers_compute_the_models_logits(build):
    model = build()
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0  # right padding: the padded positions are not compared (the loss ignores them)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        out = forward_unpiped(model, ids, mask)
    assert out.shape == ref.shape == (2, 7, 50)
    assert torch.allclose(out[mask.bool()], ref[mask.bool()], atol=1e-5)


def test_pipeline_rejects_other_architectures():
    from transformers import BertConfig, BertModel

    with pytest.raises(ValueError, match="Llama-style .* and GPT-2"):
        forward_unpiped(BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32)),
                        torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))


def test_manual_layout_divides_the_world():
    t = TrainerConfig(num_workers=4, zero_stage=1, pipeline_stages=2).model_dump()
    lay = choose_layout(t, None, 4, 64)
    assert (lay.dp, lay.tp, lay.pp, lay.source) == (2, 1, 2, "manual")  # 4 = 2 × 1 × 2
    with pytest.raises(ValueError, match="pipeline_stages=2 × trainer.tensor_parallel=1 must divide the world size 3"):
        choose_layout(t, None, 3, 64)


def test_config_rejects_pipeline_with_zero2():
    with pytest.raises(ValueError, match="pipeline_stages=2 needs trainer.zero_stage 0 or 1"):
        TrainerConfig(pipeline_stages=2, zero_stage=2)


def test_auto_layout_follows_the_planner():
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):  # a Llama-2-7B shape, no memory allocated
        model = LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                             num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32))
    t = TrainerConfig(num_workers=8, zero_stage=1, micro_batch_size=1, parallel_plan="auto", precision="bf16",
                      device_memory_gb=40, activation_checkpoint_ratio=1.0, gpus_per_node=1).model_dump()
    # N = 6,738,415,616; budget 40 · 0.85 = 34 GB; activations (full checkpointing, s = 2048, b = 1, h = 4096):
    #   32 · 2·s·b·h + s·b·h·(34 + 5·32·2048/4096) + 4·s·b·V = 536.9e6 + 956.3e6 + 262.1e6 = 1.7553 GB
    # pp=1 dp=8: 2N + 2N + 12N/8 = 13.477 + 13.477 + 10.108 + 1.755 = 38.82 GB > 34
    # pp=2 dp=4: (2N + 2N)/2 + 12N/(2·4) = 6.738 + 6.738 + 10.108 + 1.755 = 25.34 GB fits
    lay = choose_layout(t, model, 8, 2048)
    assert (lay.dp, lay.tp, lay.pp, lay.source) == (4, 1, 2, "planner")
    assert lay.memory_gb == pytest.approx({"weights": 6.7384, "gradients": 6.7384, "optimizer": 10.1076,
                                           "activations": 1.7553}, abs=1e-3)
    assert "tp=1 pp=1 would need 38.82 GB" in lay.reason
    # with 8 devices per node the planner prefers tensor parallelism at the same degree (intra-node links)
    t["gpus_per_node"] = 8
    assert (lambda x: (x.dp, x.tp, x.pp))(choose_layout(t, model, 8, 2048)) == (4, 2, 1)


def test_flops_and_mfu_by_hand():
    # GPT-2 small at s = 1024: 6 · 124e6 + 12 · 12 · 768 · 1024 = 744,000,000 + 113,246,208 = 857,246,208
    assert flops_per_token(124e6, 12, 768, 1024) == 857_246_208
    # 30,000 tokens/s on one A100 (312 TFLOP/s bf16): 30,000 · 857,246,208 / 312e12 = 0.0824275
    assert mfu(30_000, 124e6, 12, 768, 1024, 1, 312e12) == pytest.approx(0.0824275, rel=1e-6)
    # the same throughput spread over 4 devices is a quarter of the utilisation
    assert mfu(30_000, 124e6, 12, 768, 1024, 4, 312e12) == pytest.approx(0.0824275 / 4, rel=1e-6)
    assert peak_flops("NVIDIA H200", "bf16") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == 156e12  # TF32 tensor cores
    assert peak_flops("NVIDIA A10G", "bf16") == 125e12
    assert peak_flops("Some NPU", "bf16") is None and peak_flops("Some NPU", "bf16", given_tflops=100) == 1e14
    with pytest.raises(ValueError):
        flops_per_token(0, 1, 1, 1)


def test_use_gpu_auto_asks_only_when_the_cluster_has_a_gpu_per_minimum_worker():
    from app.train.layout import want_gpu

    assert want_gpu("auto", 0.0, 1)[0] is False  # a CPU cluster: gloo
    assert want_gpu("auto", 2.0, 2) == (True, "trainer.use_gpu auto: the cluster has 2 GPU(s) for 2 minimum worker(s)")
    assert want_gpu("auto", 1.0, 2)[0] is False  # not enough GPUs for the minimum group
    assert want_gpu("auto", 8.0, 0)[0] is True
    assert want_gpu(True, 0.0, 4)[0] is True and want_gpu(False, 8.0, 1)[0] is False  # explicit wins
    with pytest.raises(ValueError, match="trainer.use_gpu"):
        want_gpu("yes", 1.0, 1)


@pytest.mark.parametrize("zero", [0, 1])
def test_pipeline_engine_drops_the_update_of_a_non_finite_loss(zero):
    """A NaN loss inside ``train_batch`` (where DeepSpeed steps) leaves every weight and the learning-rate
    schedule as they were and sets ``step_skipped``; the next finite batch updates normally."""
    from app.train.deepspeed_config import build_deepspeed_config
    from app.train.engine import ensure_process_group
    from app.train.pipeline import make_pipe_engine, pipe_loss

    ensure_process_group()
    model = _llama()
    t = {**TrainerConfig(micro_batch_size=2, zero_stage=zero, lr=1e-2, warmup_ratio=0.5).model_dump()}
    cfg = build_deepspeed_config(zero, 2, 1, 1, grad_clip=t["grad_clip"])
    eng = make_pipe_engine(model, t, 1, 0, 1, 10, 0, cfg, 1)
    ids = torch.randint(3, 50, (2, 7), generator=torch.Generator().manual_seed(2))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    def weights():
        return [p.detach().clone() for p in eng.ds.module.parameters()]

    before, lr0 = weights(), eng.lr()
    eng.ds.module.loss_fn = lambda logits, labels: pipe_loss(logits, labels) * float("nan")
    loss = eng.train_batch([batch])
    assert not torch.isfinite(loss) and eng.step_skipped
    assert all(torch.equal(a, b) for a, b in zip(before, weights())) and eng.lr() == lr0
    eng.ds.module.loss_fn = pipe_loss
    loss = eng.train_batch([batch])
    assert torch.isfinite(loss) and not eng.step_skipped
    assert not all(torch.equal(a, b) for a, b in zip(before, weights())) and eng.lr() != lr0
    assert all(bool(torch.isfinite(p).all()) for p in eng.ds.module.parameters())
