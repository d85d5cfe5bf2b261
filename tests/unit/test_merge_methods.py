"""Merge methods on hand-sized tensors: every expected number is worked out in a comment."""

import math

import pytest
import torch

from app.merge import registry
from app.merge.methods import sparsify
from app.merge.methods.basic import slerp_arrays
from app.merge.methods.consensus import resolve_signs
from app.merge.params import evaluate, resolve
from app.merge.plan import TensorInfo

INFO = TensorInfo(name="model.layers.0.mlp.up_proj.weight", kind="layer", layer=0, num_layers=2, t=0.0, seed=0)


def run(method, tensors, base=None, info=INFO, **params):
    spec = registry.get(method)
    defaults = {k: p.default for k, p in spec.global_params.items() if p.default is not registry.REQUIRED}
    kwargs = {registry.kwarg_name(k): v for k, v in {**defaults, **params}.items()}
    return spec.fn([torch.as_tensor(t, dtype=torch.float32) for t in tensors],
                   base=None if base is None else torch.as_tensor(base, dtype=torch.float32), info=info, **kwargs)


def test_linear_weights_one_zero_returns_first_model():
    a, b = [[1.0, -2.0], [3.0, 4.0]], [[9.0, 9.0], [9.0, 9.0]]
    assert torch.equal(run("linear", [a, b], weight=[1.0, 0.0]), torch.tensor(a))


def test_linear_weighted_mean_and_unnormalised_sum():
    # (1*[1,2] + 3*[5,6]) / (1+3) = [16, 20] / 4 = [4, 5]; without normalize the sum is [16, 20]
    assert run("linear", [[1.0, 2.0], [5.0, 6.0]], weight=[1.0, 3.0]).tolist() == [4.0, 5.0]
    assert run("linear", [[1.0, 2.0], [5.0, 6.0]], weight=[1.0, 3.0], normalize=False).tolist() == [16.0, 20.0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("weight", [[0.6, 0.4], [1.0, 0.6], [0.7, -0.3, 0.2]])
def test_weighted_sum_matches_float32_accumulation_bit_for_bit(dtype, weight):
    """The fast path (start from w0*x0, skip /1) must give the bits of zeros + sum of w_i*x_i, then / sum w."""
    from app.merge.methods.basic import weighted_sum

    g = torch.Generator().manual_seed(1)
    xs = [(torch.randn(64, 33, generator=g) * 0.02).to(dtype) for _ in weight]
    for normalize in (True, False):
        ref = torch.zeros(xs[0].shape)
        for x, w in zip(xs, weight):
            ref.add_(x, alpha=w)
        if normalize:
            ref.div_(sum(weight))
        assert torch.equal(weighted_sum(xs, weight, normalize), ref.to(dtype))


def test_slerp_endpoints_return_the_models():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    assert torch.allclose(run("slerp", [b], base=a, t=0.0), a, atol=1e-6)
    assert torch.allclose(run("slerp", [b], base=a, t=1.0), b, atol=1e-6)


def test_slerp_quarter_turn_keeps_unit_norm():
    # v0=(1,0), v1=(0,1): theta=pi/2, sin(theta)=1; t=0.5 -> sin(pi/4)*v0 + sin(pi/4)*v1 = (sqrt2/2, sqrt2/2)
    out = run("slerp", [[0.0, 1.0]], base=[1.0, 0.0], t=0.5)
    assert out.tolist() == pytest.approx([math.sqrt(2) / 2, math.sqrt(2) / 2], abs=1e-6)
    assert out.norm().item() == pytest.approx(1.0, abs=1e-6)
    # t=1/3: sin(pi/3)/1 * v0 + sin(pi/6)/1 * v1 = (sqrt3/2, 1/2)
    assert run("slerp", [[0.0, 1.0]], base=[1.0, 0.0], t=1 / 3).tolist() == pytest.approx([math.sqrt(3) / 2, 0.5], abs=1e-6)


def test_slerp_falls_back_to_lerp_for_parallel_tensors():
    # v1 = 2 v0: cos = 1 > 0.9995 -> lerp: 0.5*(1,2) + 0.5*(2,4) = (1.5, 3)
    assert slerp_arrays(0.5, torch.tensor([1.0, 2.0]).numpy(), torch.tensor([2.0, 4.0]).numpy()).tolist() == [1.5, 3.0]


def test_ties_hand_example():
    # base 0, deltas d1=[+3,-1,0], d2=[+1,+2,-2], weights 1, density 1 (no trim)
    # elect: sum = [4, 1, -2] -> signs [+, +, -]
    # coord0: both + -> (3+1)/2 = 2; coord1: only d2 (+2) agrees -> 2/1 = 2; coord2: only d2 (-2) -> -2/1 = -2
    base = [0.0, 0.0, 0.0]
    out = run("ties", [[3.0, -1.0, 0.0], [1.0, 2.0, -2.0]], base=base, weight=[1.0, 1.0], density=[1.0, 1.0])
    assert out.tolist() == [2.0, 2.0, -2.0]
    # normalize false: agreeing deltas summed, [3+1, 2, -2]; lambda 0.5 halves that
    out = run("ties", [[3.0, -1.0, 0.0], [1.0, 2.0, -2.0]], base=base, weight=[1.0, 1.0], density=[1.0, 1.0],
              normalize=False, **{"lambda": 0.5})
    assert out.tolist() == [2.0, 1.0, -1.0]


def test_ties_trim_keeps_largest_magnitudes():
    # density 0.5 of 4 entries -> k = 2: |4| and |3| survive
    assert sparsify.magnitude(torch.tensor([4.0, -1.0, 3.0, 0.5]), 0.5).tolist() == [4.0, 0.0, 3.0, 0.0]
    # density 0.1 of 4 -> int(0.4) = 0, but at least one entry is kept (as mergekit): only |4|
    assert sparsify.magnitude(torch.tensor([4.0, -1.0, 3.0, 0.5]), 0.1).tolist() == [4.0, 0.0, 0.0, 0.0]
    # rescale: L1 norm 8.5 kept, so [4, 3] -> [4, 3] * 8.5 / 7
    out = sparsify.magnitude(torch.tensor([4.0, -1.0, 3.0, 0.5]), 0.5, rescale=True)
    assert out.tolist() == pytest.approx([4 * 8.5 / 7, 0.0, 3 * 8.5 / 7, 0.0])


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("magnitude", 3.0),  # sum 3-1 = 2 >= 0 elects +, only +3 counts: 3/1
        ("count", 3.0),  # votes +1-1 = 0 >= 0 elects +: 3/1
        ("zero", 0.0),  # the models disagree: coordinate dropped
        ("importance", 2.0),  # m = [3/4, 1/4]: (0.75*3 + 0.25*(-1)) / (0.75+0.25) = 2
    ],
)
def test_sign_conflict_modes(mode, expected):
    wd = torch.tensor([[3.0], [-1.0]])
    w = torch.ones(2, 1)
    mixed, divisor = resolve_signs(wd, w, mode)
    assert (mixed / divisor).item() == pytest.approx(expected)


def test_sign_modes_agree_where_models_agree():
    # both positive: every mode averages (2+4)/2 = 3
    for mode in ("magnitude", "count", "zero", "importance"):
        mixed, divisor = resolve_signs(torch.tensor([[2.0], [4.0]]), torch.ones(2, 1), mode)
        assert (mixed / divisor).item() == 3.0


def test_dare_is_seeded_and_reproducible():
    deltas = [[float(i) for i in range(1, 65)]]
    base = [0.0] * 64
    a = run("dare_linear", deltas, base=base, weight=[1.0], density=[0.5])
    b = run("dare_linear", deltas, base=base, weight=[1.0], density=[0.5])
    c = run("dare_linear", deltas, base=base, info=TensorInfo(**{**INFO.__dict__, "seed": 1}), weight=[1.0], density=[0.5])
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    kept = a != 0
    # kept entries are rescaled so the L1 norm is kept: c = sum(1..64) / sum(kept) = 2080 / sum(kept)
    d = torch.tensor(deltas[0])
    c = 2080.0 / d[kept].sum().item()
    assert torch.allclose(a[kept], c * d[kept])
    assert a.abs().sum().item() == pytest.approx(2080.0)


def test_dare_keeps_density_and_l1_norm():
    # delta = 1 everywhere, density 0.3: about 30% kept (k of them), each scaled to n/k ~ 1/0.3,
    # so the L1 norm n is kept exactly and the mean is exactly 1
    gen = torch.Generator().manual_seed(0)
    out = sparsify.dare(torch.ones(200_000), 0.3, gen)
    k = int((out != 0).sum())
    assert k / 200_000 == pytest.approx(0.3, abs=0.005)
    assert out[out != 0].unique().tolist() == pytest.approx([200_000 / k])
    assert out.mean().item() == pytest.approx(1.0, abs=1e-5)
    # rescale off: kept entries stay 1
    out = sparsify.dare(torch.ones(1000), 0.3, torch.Generator().manual_seed(0), rescale=False)
    assert set(out.tolist()) <= {0.0, 1.0}


def test_breadcrumbs_drops_outliers_and_smallest():
    # |delta| = 1..100; density 0.9, gamma 0.01: n_top = 1 (drops 100), keep 90, n_bot = 100-90-1 = 9 (drops 1..9)
    out = sparsify.breadcrumbs(torch.arange(1.0, 101.0), 0.9, gamma=0.01)
    assert torch.equal(out.nonzero().flatten() + 1, torch.arange(10, 100))
    # gamma 0: nothing dropped at the top, the 10 smallest go -> 11..100 kept
    out = sparsify.breadcrumbs(torch.arange(1.0, 101.0), 0.9, gamma=0.0)
    assert torch.equal(out.nonzero().flatten() + 1, torch.arange(11, 101))


def test_task_arithmetic_negative_weight_removes_a_task():
    # m1 = base + ta + tb, m2 = base + tb; weights [1, -1]: base + (ta + tb) - tb = base + ta
    base, ta, tb = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.5, 0.0, -0.5]), torch.tensor([0.25, 0.25, 0.25])
    out = run("task_arithmetic", [(base + ta + tb).tolist(), (base + tb).tolist()], base=base.tolist(), weight=[1.0, -1.0])
    assert torch.allclose(out, base + ta)
    # lambda scales the summed task vector: base + 0.5 * ta
    out = run("task_arithmetic", [(base + ta).tolist()], base=base.tolist(), weight=[1.0], **{"lambda": 0.5})
    assert torch.allclose(out, base + 0.5 * ta)


def test_registry_rejects_duplicates_and_lists_names():
    with pytest.raises(KeyError, match="available: .*'linear'.*'ties'"):
        registry.get("tie")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(registry.MergeMethod(name="linear", fn=lambda *a, **k: None))
    assert registry.kwarg_name("lambda") == "lambda_"


def test_gradient_and_filter_parameters():
    # gradient [0, 0.5, 0.3, 0.7, 1]: t=0.5 -> s = 2 -> exactly g[2] = 0.3
    # t=0.6 -> s = 2.4 -> 0.6*0.3 + 0.4*0.7 = 0.46
    g = [0, 0.5, 0.3, 0.7, 1]
    assert evaluate(g, "x", 0.5) == pytest.approx(0.3)
    assert evaluate(g, "x", 0.6) == pytest.approx(0.46)
    cond = [{"filter": "self_attn", "value": [0.0, 1.0]}, {"filter": "mlp", "value": 0.9}, {"value": 0.5}]
    assert evaluate(cond, "model.layers.3.self_attn.q_proj.weight", 0.25) == pytest.approx(0.25)
    assert evaluate(cond, "model.layers.3.mlp.up_proj.weight", 0.25) == 0.9
    assert evaluate(cond, "model.norm.weight", 1.0) == 0.5
    # no matching filter -> falls through to the next scope (model -> slice -> global)
    assert resolve("t", tensor_name="lm_head", t=0, scopes=[{"t": [{"filter": "mlp", "value": 1}]}, {"t": 0.2}]) == 0.2


def test_param_bounds_messages():
    density = registry.get("ties").model_params["density"]
    assert density.check("density", 1.0) is None
    assert "outside (0.0, 1.0]" in density.check("density", 0.0)
    assert "must be true or false" in registry.get("ties").global_params["normalize"].check("normalize", 1)
