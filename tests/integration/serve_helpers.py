"""Shared pieces of the Serve ensemble tests: a tiny endpoint config, a bounded load generator, a bad challenger.

Members are pico models (tiny-bert backbone, logistic heads on a few hundred SST-2 rows) so building,
registering and deploying them takes seconds on 2 CPUs. Everything binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp: Path, name: str, port: int, extra: str = "") -> Path:
    """A two-member cascade endpoint on 700 SST-2 rows (val about 70), explicit costs so the order is fixed."""
    loop_cfg = tmp / "loop.yaml"
    loop_cfg.write_text(f"""
name: {name}-loop
task: classify
pool:
  sources: [{{path: {ROOT}/data/sst2/alps_test.tsv, fields: {{text: sentence, label: label}}}}]
""")
    cfg = tmp / "serve.yaml"
    cfg.write_text(f"""
name: {name}
store: {tmp}/store
data:
  sources:
    - {{path: {ROOT}/data/sst2/alps_dev_first3000.tsv, fields: {{text: sentence, label: label}},
       label_map: {{"0": negative, "1": positive}}, limit: 700}}
  labels: [negative, positive]
members:
  - {{name: cheap, source: "models:/{name}-cheap@champion", cost: 1.0, num_cpus: 0.2,
     build: {{backbone: tiny-bert, train_rows: 200, C: 1.0, max_length: 32}}}}
  - {{name: big, source: "models:/{name}-big@champion", cost: 5.0, num_cpus: 0.2,
     batch: {{max_batch_size: 8, wait_ms: 5}}, build: {{backbone: tiny-bert, train_rows: 300, C: 0.1, max_length: 32}}}}
policy: {{name: cascade, params: {{target_accuracy: 0.55}}}}
http: {{port: {port}, auth_token_env: FLYWHEEL_TEST_SERVE_TOKEN, ingress_cpus: 0.2, max_text_chars: 200,
        max_batch: 8}}
traffic: {{sample_rate: 1.0, pool_name: {name}-loop, pool_config: {loop_cfg}, flush_rows: 1000, flush_s: 3600}}
experiment: {name}-serve
{extra}
""")
    return cfg


class Load:
    """`clients` threads posting /predict in a loop until `stop()` (pausing `pause_s` between requests).

    Bounded: each thread stops after `max_requests` or when stopped; 127.0.0.1 only.
    """

    def __init__(self, url: str, clients: int = 4, max_requests: int = 5000, headers: dict | None = None,
                 pause_s: float = 0.05):
        # the pause leaves CPU for the replicas being started: 4 clients still send up to ~80 requests/s
        self.url, self.headers, self.max_requests, self.pause_s = url, headers or {}, max_requests, pause_s
        self.outcomes: Counter = Counter()
        self.versions: Counter = Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, i: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60, headers=self.headers) as c:
            for n in range(self.max_requests):
                if self._stop.is_set():
                    return
                body = {"text": f"client {i} request {n}: a film that is {'good' if n % 2 else 'dull'}"}
                try:
                    r = c.post("/predict", json=body, headers={"x-request-id": f"{i}-{n}"})
                    key = r.status_code
                    if r.status_code == 200:
                        with self._lock:
                            self.versions[r.json()["predictions"][0]["model_version"]] += 1
                    else:
                        self.errors.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as e:
                    key = type(e).__name__
                    self.errors.append(repr(e))
                with self._lock:
                    self.outcomes[key] += 1
                time.sleep(self.pause_s)

    def start(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> Counter:
        self._stop.set()
        for t in self.threads:
            t.join(timeout=120)
        return self.outcomes


def register_flipped_challenger(tracking_uri: str, store: Path, reg_name: str, alias: str = "challenger") -> str:
    """Register a copy of `reg_name@champion` whose head rows are swapped: it always answers the other label."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file, save_file

    from app.tracking import ensure_experiment, register_model_dir
    from jobs.serve_build import _local_dir

    client = MlflowClient(tracking_uri)
    champ = client.get_model_version_by_alias(reg_name, "champion")
    src = _local_dir(client, champ)
    dst = store / f"flipped-{time.time_ns()}"  # a module may register flipped versions more than once
    shutil.copytree(src, dst)
    head = load_file(str(dst / "head.safetensors"))
    save_file({k: v.flip(0).contiguous() for k, v in head.items()}, str(dst / "head.safetensors"))
    meta = json.loads((dst / "flywheel_model.json").read_text())
    (dst / "flywheel_model.json").write_text(json.dumps({**meta, "note": "labels deliberately flipped"}))
    mlflow.set_tracking_uri(tracking_uri)
    exp = ensure_experiment(client, "flipped", store)
    with mlflow.start_run(experiment_id=exp, run_name="flipped") as run:
        mlflow.log_artifacts(str(dst), "model")
        version = register_model_dir(client, reg_name, run.info.run_id, run.info.artifact_uri, "model",
                                     {"flywheel.task": "classify"})
    client.set_registered_model_alias(reg_name, alias, version)
    return version


def wait_for(pred, timeout: float, every: float = 0.5):
    """Poll `pred()` until truthy (returns its value) or fail after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")


CANARY = """canary:
  plan: {steps: [50, 100], window_requests: 20, min_samples: 10, min_agreement: 0.9, p99_ratio_max: 100,
         max_error_rate: 0.2}
"""


@contextlib.contextmanager
def running_endpoint(tmp: Path, name: str, extra: str = CANARY):
    """Private 2-CPU Ray + `up` of the pico endpoint; yields {url, cfg, store, uri}; removes everything after."""
    import ray
    from ray import serve

    from app.serving.config import load_serve_config
    from app.tracking import tracking_uri
    from jobs.serve_up import down, up

    port = free_port()
    cfg = load_serve_config(write_config(tmp, name, port, extra))
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="flywheel", log_to_driver=False)
    try:
        store = tmp / "store"
        uri = tracking_uri(None, store)
        st = up(cfg, store, uri, prog=lambda m: None)
        yield {"url": f"http://127.0.0.1:{port}", "cfg": cfg, "store": store, "uri": uri, "status": st[name]}
        down(cfg.name, cfg.namespace)
    finally:
        serve.shutdown()
        ray.shutdown()


def status_of(name: str) -> dict:
    """`jobs.serve status` of one endpoint."""
    from jobs.serve_up import status

    return status([name])[name]


def serve_apps() -> set[str]:
    """Names of the Serve applications on the cluster."""
    from ray import serve

    return set(serve.status().applications)
