"""ZeRO optimizer offload with our torch AdamW really initialises and trains (DeepSpeed 0.19 refuses it unless
build_deepspeed_config sets zero_force_ds_cpu_optimizer=False)."""

import subprocess
import sys
import textwrap

import pytest

from tests.ports import free_port

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)
    import deepspeed
    from app.train.deepspeed_config import build_deepspeed_config
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    cfg = build_deepspeed_config(2, 4, 1, 1, offload_optimizer=True)
    eng, *_ = deepspeed.initialize(model=m, optimizer=torch.optim.AdamW(m.parameters(), lr=1e-2), config=cfg,
                                   dist_init_required=False)
    x = torch.randn(4, 8); y = x.sum(1, keepdim=True)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.mse_loss(eng(x), y); eng.backward(loss); eng.step(); losses.append(loss.item())
    print("LOSSES", losses[0], losses[-1])
""")


def test_zero2_optimizer_offload_trains_with_torch_adamw():
    port = free_port()
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(port)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    first, last = map(float, out.stdout.split("LOSSES")[1].split())
    assert last < 0.2 * first  # it learned: 20 AdamW steps at lr 1e-2 on a linear target
