"""Flywheel's merge engine against mergekit: same inputs, same YAML, tensors, wall time and peak RSS.

mergekit lives only in a separate bench venv (never a project dependency)::

    python -m venv /tmp/mkvenv && /tmp/mkvenv/bin/pip install torch==2.13.0 && /tmp/mkvenv/bin/pip install mergekit==0.1.5
    nice -n 10 .venv/bin/python bench/merge_vs_mergekit.py --mergekit /tmp/mkvenv/bin/mergekit-yaml

Inputs (built once under ``--work``):
  - ``smollm2``: SmolLM2-135M-Instruct (``app.models.backbones.resolve``) as base, plus two "fine-tunes" made
    by adding seeded Gaussian noise (1% of each tensor's std) to every weight.
  - ``big``: a synthetic Llama-shaped model of ~1B parameters (bf16, 1 GB shards) and two noisy variants,
    written tensor by tensor with the project's streaming ``ShardWriter`` so building it needs one tensor
    of memory, not 2 GB.

Each merge runs as its own subprocess (ours: ``python -m jobs.merge``; theirs: ``mergekit-yaml``); wall time
is measured around it, peak RSS and CPU time come from ``os.wait4``'s rusage of that child, taken in a small
launcher process (a child of this bench would report the bench's own RSS as its peak: see ``_LAUNCH``). Order
alternates per method so drift in the machine's load does not favour one side. Tensors are compared name by
name (max |ours - theirs|), DARE's too: with ``dare_rng: mergekit`` (the default) our masks are mergekit's
``--random-seed 0`` masks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.atomic_files import write_json_atomic  # noqa: E402

# method -> (YAML template over models base/ft0/ft1, whether the tensors must match exactly)
METHODS: dict[str, tuple[dict, bool]] = {
    "linear": ({"merge_method": "linear", "models": [{"model": "ft0", "parameters": {"weight": 0.6}},
                                                     {"model": "ft1", "parameters": {"weight": 0.4}}]}, True),
    "slerp": ({"merge_method": "slerp", "base_model": "base",
               "models": [{"model": "base"}, {"model": "ft0"}],
               "parameters": {"t": [{"filter": "self_attn", "value": [0.1, 0.6, 0.3]}, {"value": 0.4}]}}, True),
    "task_arithmetic": ({"merge_method": "task_arithmetic", "base_model": "base",
                         "models": [{"model": "ft0", "parameters": {"weight": 0.7}},
                                    {"model": "ft1", "parameters": {"weight": -0.3}}],
                         "parameters": {"lambda": 0.9}}, True),
    "ties": ({"merge_method": "ties", "base_model": "base",
              "models": [{"model": "ft0", "parameters": {"weight": 1.0, "density": 0.5}},
                         {"model": "ft1", "parameters": {"weight": 0.6, "density": 0.3}}]}, True),
    "breadcrumbs": ({"merge_method": "breadcrumbs", "base_model": "base",
                     "models": [{"model": "ft0", "parameters": {"weight": 0.5, "density": 0.9, "gamma": 0.01}},
                                {"model": "ft1", "parameters": {"weight": 0.5, "density": 0.8, "gamma": 0.02}}]},
                    True),
    "dare_ties": ({"merge_method": "dare_ties", "base_model": "base",
                   "models": [{"model": "ft0", "parameters": {"weight": 0.5, "density": 0.5}},
                              {"model": "ft1", "parameters": {"weight": 0.5, "density": 0.7}}]}, True),
    "dare_linear": ({"merge_method": "dare_linear", "base_model": "base",
                     "models": [{"model": "ft0", "parameters": {"weight": 0.5, "density": 0.5}},
                                {"model": "ft1", "parameters": {"weight": 0.5, "density": 0.7}}]}, True),
}


def _perturb(x: torch.Tensor, gen: torch.Generator, scale: float = 0.01) -> torch.Tensor:
    """A fine-tune-like change: Gaussian noise with std ``scale * std(x)`` (integer buffers untouched)."""
    if not x.is_floating_point():
        return x
    std = float(x.float().std()) if x.numel() > 1 else 1.0
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float32) * (scale * (std or 1.0))
    return (x.float() + noise).to(x.dtype)


def _copy_side_files(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
            shutil.copy2(f, dst / f.name)


def build_smollm2(work: Path) -> dict[str, str]:
    """SmolLM2-135M base plus two seeded perturbations; returns name -> directory."""
    from safetensors.torch import load_file, save_file

    from app.models.backbones import resolve

    base = resolve("smollm2", work / "cache")
    out = {"base": str(base)}
    tensors = None
    for i in range(2):
        d = work / "smollm2" / f"ft{i}"
        out[f"ft{i}"] = str(d)
        if (d / "model.safetensors").is_file():
            continue
        tensors = tensors or load_file(str(base / "model.safetensors"))
        gen = torch.Generator().manual_seed(100 + i)
        d.mkdir(parents=True, exist_ok=True)
        _copy_side_files(base, d)
        save_file({k: _perturb(v, gen).contiguous() for k, v in tensors.items()}, str(d / "model.safetensors"),
                  metadata={"format": "pt"})
    return out


BIG = {"hidden": 2048, "ffn": 5632, "layers": 20, "vocab": 32000, "heads": 16, "kv_heads": 4}


def _big_specs(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, f, kv = cfg["hidden"], cfg["ffn"], cfg["kv_heads"] * cfg["hidden"] // cfg["heads"]
    specs = [("model.embed_tokens.weight", (cfg["vocab"], h))]
    for i in range(cfg["layers"]):
        p = f"model.layers.{i}."
        specs += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,)),
                  (p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                  (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h)),
                  (p + "mlp.gate_proj.weight", (f, h)), (p + "mlp.up_proj.weight", (f, h)),
                  (p + "mlp.down_proj.weight", (h, f))]
    return specs + [("model.norm.weight", (h,)), ("lm_head.weight", (cfg["vocab"], h))]


def build_big(work: Path, cfg: dict = BIG) -> tuple[dict[str, str], int]:
    """A ~1B-parameter bf16 Llama (base + 2 variants), streamed to 1 GB shards; returns (dirs, parameters)."""
    from app.merge.writer import ShardWriter, TensorSpec

    specs = _big_specs(cfg)
    n_params = sum(torch.Size(s).numel() for _, s in specs)
    names = ["base", "ft0", "ft1"]
    dirs = {n: work / "big" / n for n in names}
    if all((d / "model.safetensors.index.json").is_file() for d in dirs.values()):
        return {n: str(d) for n, d in dirs.items()}, n_params
    tspecs = [TensorSpec(n, s, torch.bfloat16) for n, s in specs]
    writers = {}
    for n, d in dirs.items():
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        writers[n] = ShardWriter(d, tspecs, 10**9)
    gen = torch.Generator().manual_seed(0)
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    for name, shape in specs:
        x = torch.ones(shape) if name.endswith("norm.weight") else torch.randn(shape, generator=gen) * 0.02
        writers["base"].write(name, x.to(torch.bfloat16))
        for i in range(2):
            writers[f"ft{i}"].write(name, _perturb(x, gens[i]).to(torch.bfloat16))
        del x
    for n, w in writers.items():
        w.close()
        config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": cfg["hidden"],
                  "intermediate_size": cfg["ffn"], "num_hidden_layers": cfg["layers"],
                  "num_attention_heads": cfg["heads"], "num_key_value_heads": cfg["kv_heads"],
                  "vocab_size": cfg["vocab"], "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
                  "tie_word_embeddings": False, "dtype": "bfloat16", "hidden_act": "silu"}
        (dirs[n] / "config.json").write_text(json.dumps(config, indent=2))
    return {n: str(d) for n, d in dirs.items()}, n_params


def write_config(template: dict, models: dict[str, str], dtype: str, path: Path) -> Path:
    """Substitute absolute model paths into a method template (mergekit wants absolute paths offline)."""
    cfg = json.loads(json.dumps(template))
    if "base_model" in cfg:
        cfg["base_model"] = models[cfg["base_model"]]
    for m in cfg["models"]:
        m["model"] = models[m["model"]]
    cfg["dtype"] = dtype
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# Forks and execs the tool from a fresh, small interpreter, then reports the tool's rusage. Linux keeps the
# pre-exec image's high-water RSS across execve (signal->maxrss), and a child forked (or vforked) straight
# from this bench starts from the bench's own RSS — several GB after comparing merged models — so wait4 on a
# direct child reported max(bench, tool). Measured: `python -c pass` launched from a 2 GB parent reports
# 1938 MiB, from this launcher 10 MiB.
_LAUNCH = """import json, os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "maxrss_kib": ru.ru_maxrss,
               "cpu_s": ru.ru_utime + ru.ru_stime}, f)
"""


def timed(cmd: list[str], env: dict, log: Path) -> dict:
    """Run ``cmd`` as a child; wall seconds, peak RSS (the tool's own ru_maxrss, in MiB) and CPU seconds
    (user + sys), the last two from ``os.wait4`` in a small launcher process (see ``_LAUNCH``)."""
    usage = log.with_suffix(".rusage.json")
    start = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-S", "-c", _LAUNCH, str(usage), *cmd], stdout=f, stderr=subprocess.STDOUT,
                       env=env, cwd=str(ROOT), check=False)
    wall = time.perf_counter() - start
    u = json.loads(usage.read_text())
    if u["rc"] != 0:
        raise RuntimeError(f"{cmd[0]} failed ({u['rc']}); see {log}:\n{log.read_text()[-2000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(u["maxrss_kib"] / 1024, 1), "cpu_s": round(u["cpu_s"], 2)}


def compare(ours: Path, theirs: Path, base: Path | None, exact: bool) -> dict:
    """Max |ours - theirs| over shared tensors (exact methods) or per-tensor mask statistics (DARE)."""
    from app.merge.io import ModelFiles, load_tensor, release_handles

    a, b = ModelFiles.open("ours", ours), ModelFiles.open("mergekit", theirs)
    ref = ModelFiles.open("base", base) if base else None
    shared = sorted(set(a.tensors) & set(b.tensors))
    out: dict = {"tensors_ours": len(a.tensors), "tensors_mergekit": len(b.tensors), "shared": len(shared),
                 "only_ours": sorted(set(a.tensors) - set(b.tensors))[:5],
                 "only_mergekit": sorted(set(b.tensors) - set(a.tensors))[:5]}
    max_diff, worst, frac_gap, mag_gap = 0.0, None, 0.0, 0.0
    for name in shared:
        x = load_tensor(a.tensors[name].path, name).double()
        y = load_tensor(b.tensors[name].path, name).double()
        if x.shape != y.shape:
            raise RuntimeError(f"{name}: ours {tuple(x.shape)} vs mergekit {tuple(y.shape)}")
        if exact or ref is None:
            d = float((x - y).abs().max()) if x.numel() else 0.0
            if d > max_diff:
                max_diff, worst = d, name
        else:
            z = load_tensor(ref.tensors[name].path, name).double()
            dx, dy = x - z, y - z
            if dx.numel() < 1000:
                continue  # tiny tensors (norms) give noisy fractions
            frac_gap = max(frac_gap, abs(float((dx != 0).double().mean() - (dy != 0).double().mean())))
            mx, my = float(dx.abs().mean()), float(dy.abs().mean())
            mag_gap = max(mag_gap, abs(mx - my) / max(mx, my, 1e-30))
    release_handles()
    if exact or ref is None:
        out.update({"max_abs_diff": max_diff, "worst_tensor": worst, "equal_within_1e-6": max_diff <= 1e-6})
    else:
        out.update(max_changed_fraction_gap=round(frac_gap, 5), max_mean_abs_delta_rel_gap=round(mag_gap, 5))
    return out


def run_suite(label: str, models: dict[str, str], methods: list[str], dtype: str, work: Path, args,
              results: dict, save) -> dict:
    """Run every method on both tools into ``results`` (calling ``save()`` after each, so a cut run keeps rows)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    for k, method in enumerate(methods):
        template, exact = METHODS[method]
        d = work / "runs" / label / method
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        cfg = write_config(template, models, dtype, d / "merge.yaml")
        ours_cmd = [sys.executable, "-m", "jobs.merge", str(cfg), str(d / "ours"), "--no-progress"]
        mk_cmd = [args.mergekit, str(cfg), str(d / "mergekit"), "--no-write-model-card", "--random-seed", "0",
                  "--quiet"]
        order = [("ours", ours_cmd), ("mergekit", mk_cmd)]
        if (k + (args.first == "mergekit")) % 2:
            order.reverse()
        row: dict = {}
        for who, cmd in order:
            row[who] = timed(cmd, env, d / f"{who}.log")
            print(f"[{label}] {method} {who}: {row[who]}", flush=True)
        row["time_ratio"] = round(row["ours"]["wall_s"] / row["mergekit"]["wall_s"], 3)
        row["cpu_ratio"] = round(row["ours"]["cpu_s"] / row["mergekit"]["cpu_s"], 3)
        row["rss_ratio"] = round(row["ours"]["peak_rss_mib"] / row["mergekit"]["peak_rss_mib"], 3)
        row["order"] = [w for w, _ in order]
        row["compare"] = compare(d / "ours", d / "mergekit", Path(models["base"]) if not exact else None, exact)
        print(f"[{label}] {method}: {json.dumps(row['compare'])}", flush=True)
        if not args.keep:
            shutil.rmtree(d / "ours", ignore_errors=True)
            shutil.rmtree(d / "mergekit", ignore_errors=True)
        results[method] = row
        save()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mergekit", default="/tmp/mkvenv/bin/mergekit-yaml", help="mergekit-yaml of the bench venv")
    p.add_argument("--work", default="/tmp/merge_bench", help="inputs and outputs (several GB for --big)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods for SmolLM2")
    p.add_argument("--big-methods", default="linear,ties", help="methods for the ~1B model ('' to skip it)")
    p.add_argument("--first", choices=["ours", "mergekit"], default="ours",
                   help="tool that runs first for the first method (then the order alternates)")
    p.add_argument("--keep", action="store_true", help="keep merged outputs")
    p.add_argument("--out", default=str(ROOT / "bench/results/merge_vs_mergekit.json"))
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    version = subprocess.run([str(Path(args.mergekit).parent / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('mergekit'))"],
                             capture_output=True, text=True).stdout.strip()
    result = {"machine": f"{os.cpu_count()} CPU cores, shared with other developers (timings noisy; ratios "
                         "compare runs taken back to back in this one command)",
              "load_average_at_start": os.getloadavg(), "mergekit_version": version,
              "torch": torch.__version__, "suites": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        result["load_average_now"] = os.getloadavg()
        write_json_atomic(out, result, indent=2)  # a run cut mid-write keeps the previous rows

    # the ~1B suite first: it carries the time target, and a run cut short keeps its rows
    big = [m for m in args.big_methods.split(",") if m]
    if big:
        t0 = time.perf_counter()
        models, n = build_big(work)
        print(f"big model: {n / 1e9:.2f}B params, built in {time.perf_counter() - t0:.0f}s", flush=True)
        suite = result["suites"]["synthetic_1b"] = {"params": n, "dtype": "bfloat16", "config": BIG,
                                                    "build_seconds": round(time.perf_counter() - t0, 1),
                                                    "results": {}}
        run_suite("big", models, big, "bfloat16", work, args, suite["results"], save)
    methods = [m for m in args.methods.split(",") if m]
    if methods:
        models = build_smollm2(work)
        from app.merge.io import ModelFiles

        n = sum(torch.Size(m.shape).numel() for m in ModelFiles.open("base", models["base"]).tensors.values())
        suite = result["suites"]["smollm2_135m"] = {"params": n, "dtype": "float32", "results": {}}
        run_suite("smollm2", models, methods, "float32", work, args, suite["results"], save)
    save()
    print(json.dumps({s: {m: {k: r[k] for k in ("time_ratio", "cpu_ratio", "rss_ratio")}
                          for m, r in v["results"].items()}
                      for s, v in result["suites"].items()}))


if __name__ == "__main__":
    main()
