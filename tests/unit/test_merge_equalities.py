"""End-to-end method results on hand-sized tensors (the facts bench/merge_vs_mergekit.py checks at scale)."""

import math

import pytest
import torch

from app.merge import registry
from app.merge.engine import nonfinite_count
from app.merge.plan import TensorInfo

INFO = TensorInfo(name="model.layers.0.mlp.up_proj.weight", kind="layer", layer=0, num_layers=2, t=0.0, seed=0)


def run(method, tensors, base=None, dtype=torch.float32, **params):
    spec = registry.get(method)
    defaults = {k: p.default for k, p in spec.all_params().items() if p.default is not registry.REQUIRED}
    model_defaults = {k: [v] * len(tensors) for k, v in defaults.items() if k in spec.model_params}
    glob = {k: v for k, v in defaults.items() if k in spec.global_params}
    kwargs = {registry.kwarg_name(k): v for k, v in {**model_defaults, **glob, **params}.items()}
    return spec.fn([torch.tensor(t, dtype=dtype) for t in tensors],
                   base=None if base is None else torch.tensor(base, dtype=dtype), info=INFO, **kwargs)


def test_ties_trim_elect_and_disjoint_mean_together():
    # d1 = [4, -1, 3, 0.5], density 0.5 -> k = 2 keeps |4|, |3|: [4, 0, 3, 0]
    # d2 = [-2, 2, -1, 1],  density 0.5 -> keeps |-2|, |2|:      [-2, 2, 0, 0]
    # elected sign of the sum [2, 2, 3, 0] -> all + (0 counts as +)
    # coord0: only d1 (+4) agrees -> 4/1; coord1: only d2 (+2) -> 2/1; coord2: d1 -> 3/1; coord3: nobody -> 0
    out = run("ties", [[4.0, -1.0, 3.0, 0.5], [-2.0, 2.0, -1.0, 1.0]], base=[0.0] * 4,
              weight=[1.0, 1.0], density=[0.5, 0.5])
    assert out.tolist() == [4.0, 2.0, 3.0, 0.0]


def test_dare_ties_at_density_one_is_ties_without_trim_or_normalisation():
    # density 1 keeps every entry; d1 = [3, -1, 0], d2 = [1, 2, -2], elected [+, +, -]
    # dare_ties does not normalise: agreeing deltas are summed: [3 + 1, 2, -2]; base 1 added
    out = run("dare_ties", [[4.0, 0.0, 1.0], [2.0, 3.0, -1.0]], base=[1.0, 1.0, 1.0],
              weight=[1.0, 1.0], density=[1.0, 1.0])
    assert out.tolist() == [5.0, 3.0, -1.0]


def test_breadcrumbs_method_weights_the_kept_band():
    # delta = 1..10, density 0.8, gamma 0.1: n_top = 1 drops 10, keep 8 -> 2..9, n_bot = 1 drops 1
    # weight 0.5, no normalisation: base + 0.5 * [0, 2, 3, ..., 9, 0]
    delta = [float(i) for i in range(1, 11)]
    out = run("breadcrumbs", [delta], base=[0.0] * 10, weight=[0.5], density=[0.8], gamma=[0.1])
    assert out.tolist() == [0.0] + [0.5 * i for i in range(2, 10)] + [0.0]


def test_dare_linear_keeps_each_task_vectors_l1_norm():
    # one model, weight 1: base + dare(delta); the L1 rescale keeps sum|delta| = 1 + 2 + ... + 100 = 5050
    delta = [float(i) for i in range(1, 101)]
    out = run("dare_linear", [delta], base=[0.0] * 100, weight=[1.0], density=[0.4])
    assert out.abs().sum().item() == pytest.approx(5050.0, rel=1e-6)
    assert 20 < int((out != 0).sum()) < 60  # ~40 of 100 kept


def test_linear_accumulates_low_precision_inputs_in_float32():
    # bf16 [256], [1], [1], equal weights: in float32 (256 + 1 + 1) / 3 = 86, exact in bf16.
    # Accumulating in bf16 would lose both 1s (256 + 1 = 257 rounds to 256, spacing 2) and give 256/3 -> 85.5.
    out = run("linear", [[256.0], [1.0], [1.0]], dtype=torch.bfloat16, weight=[1.0, 1.0, 1.0])
    assert out.dtype == torch.bfloat16
    assert out.item() == 86.0


def test_task_arithmetic_lambda_and_negative_weight_together():
    # base 1; d1 = [2, 0], d2 = [1, 1]; weights [1, -0.5]: sum = [2 - 0.5, -0.5] = [1.5, -0.5]; lambda 2 -> [3, -1]
    out = run("task_arithmetic", [[3.0, 1.0], [2.0, 2.0]], base=[1.0, 1.0], weight=[1.0, -0.5], **{"lambda": 2.0})
    assert out.tolist() == [4.0, 0.0]


def test_slerp_of_orthogonal_unequal_norms():
    # v0 = (2, 0), v1 = (0, 1): unit directions orthogonal, theta = pi/2, t = 0.5:
    # sin(pi/4) * v0 + sin(pi/4) * v1 = (sqrt2, sqrt2/2) -- SLERP weights the raw (unnormalised) tensors
    out = run("slerp", [[0.0, 1.0]], base=[2.0, 0.0], t=0.5)
    assert out.tolist() == pytest.approx([math.sqrt(2), math.sqrt(2) / 2], abs=1e-6)


def test_nonfinite_count_fast_path_and_fp16_overflow():
    assert nonfinite_count(torch.tensor([1.0, float("nan"), float("inf"), 2.0])) == 2
    assert nonfinite_count(torch.tensor([1.0, -1.0])) == 0
    # fp16: 60000 + 60000 overflows the sum to inf, yet every entry is finite -> the exact count says 0
    assert nonfinite_count(torch.tensor([60000.0, 60000.0], dtype=torch.float16)) == 0
    assert nonfinite_count(torch.empty(0)) == 0


def test_ties_trim_breaks_ties_at_the_cut_like_a_descending_argsort():
    # |delta| = [1, 2, 2, 2, 0.5], density 0.4 -> k = int(0.4 * 5) = 2, but three entries tie at 2:
    # exactly two of indices {1, 2, 3} survive, the first two of torch.argsort(descending) (mergekit's choice)
    delta = torch.tensor([1.0, -2.0, 2.0, 2.0, 0.5])
    from app.merge.methods import sparsify

    out = sparsify.magnitude(delta, 0.4)
    kept = set(out.nonzero().flatten().tolist())
    assert len(kept) == 2 and kept <= {1, 2, 3}
    assert kept == set(torch.argsort(delta.abs(), descending=True)[:2].tolist())


def test_selection_masks_equal_the_argsort_masks_with_and_without_ties():
    # magnitude/breadcrumbs pick rank cuts by kthvalue and sort only when equal |delta| straddle a cut; the
    # kept set must equal mergekit's argsort slices (descending [:k]; ascending [n_bot:n_bot+target_n]) always
    from app.merge.methods import sparsify

    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(997, generator=g),  # no ties: selection path
              torch.randint(-4, 5, (1000,), generator=g).float(),  # ties at every cut: argsort path
              (torch.randn(500, generator=g) * 0.01).to(torch.bfloat16)]
    fast = 0
    for x in inputs:
        w, n = x.abs().float(), x.numel()
        for density, gamma in [(0.3, 0.01), (0.5, 0.0), (0.9, 0.05), (0.8, 0.3)]:
            k = max(1, int(density * n))
            ref = torch.zeros(n, dtype=x.dtype)
            ref[torch.argsort(w, descending=True)[:k]] = 1
            assert torch.equal(sparsify.magnitude(x, density), x * ref)
            keep, n_top = int(density * n), int(gamma * n)
            n_bot = max(0, n - keep - n_top)
            if n_top == 0:
                n_bot = n - keep  # gamma 0 keeps the top (documented difference from mergekit's [n_bot:-0])
            ref = torch.zeros(n, dtype=x.dtype)
            ref[torch.argsort(w)[n_bot : n_bot + keep]] = 1
            assert torch.equal(sparsify.breadcrumbs(x, density, gamma=gamma), x * ref)
            fast += sparsify._rank_band(w, n_bot, n_bot + keep) is not None
    assert 4 <= fast < 12  # both paths were exercised


def test_rows_sorted_together_keep_what_one_model_at_a_time_keeps():
    # bf16 task vectors big enough that only a sort decides (sparsify._ties_certain): sparsify_rows argsorts all
    # models in one 2-D call (rows in parallel); the result, ties included, must equal mergekit-style 1-D
    # argsorts per model, with per-model densities, rescaling and a model left dense (density 1)
    from app.merge.methods import sparsify

    g = torch.Generator().manual_seed(3)
    n = (1 << 18) + 1000
    deltas = (torch.randn(3, n, generator=g) * 0.01).to(torch.bfloat16)
    assert sparsify._ties_certain(deltas[0])
    w = deltas.abs().float()
    assert int((w[0] == torch.sort(w[0]).values[n // 2]).sum()) > 100  # many ties at a cut
    density, gamma = [0.3, 0.6, 1.0], [0.01, 0.05, 0.01]
    for rescale in (False, True):
        mag = sparsify.sparsify_rows(deltas.clone(), "magnitude", density, rescale=rescale)
        bc = sparsify.sparsify_rows(deltas.clone(), "breadcrumbs", density, gamma, rescale=rescale)
        for i in range(3):
            k = max(1, int(density[i] * n))
            ref = torch.zeros(n, dtype=deltas.dtype)
            ref[torch.argsort(w[i], descending=True)[:k]] = 1
            want = deltas[i] * ref
            want = sparsify._l1_rescale(deltas[i], want) if rescale and density[i] < 1 else want
            assert torch.equal(mag[i], want if density[i] < 1 else deltas[i])
            keep, n_top = int(density[i] * n), int(gamma[i] * n)
            ref = torch.zeros(n, dtype=deltas.dtype)
            ref[torch.argsort(w[i])[n - keep - n_top : n - n_top]] = 1
            want = deltas[i] * ref
            want = sparsify._l1_rescale(deltas[i], want) if rescale and density[i] < 1 else want
            assert torch.equal(bc[i], want if density[i] < 1 else deltas[i])
    with pytest.raises(ValueError, match="sparsifier='dare'"):
        sparsify.sparsify_rows(deltas, "dare", density)
