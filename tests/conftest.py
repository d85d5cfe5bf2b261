"""Shared test settings: offline model loading, small thread pools, markers."""

import os
import shutil
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# DeepSpeed JIT-builds its ops into ~/.cache/torch_extensions; two checkouts with different builds replaced
# each other's there and a test waited on the rebuild. One build directory per virtual environment.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))
# A raylet waits for its node's dashboard agent to publish its ports and aborts (node_manager.cc "Timed out
# waiting for file .../metrics_agent_port_...") after agent_register_timeout_ms; on 2 busy CPUs a joining node's
# agent took longer than that to start and the node died (the scale-up test, under load). Every raylet a test
# starts (ray.init, Cluster, `ray start`) inherits this.
os.environ.setdefault("RAY_agent_register_timeout_ms", "180000")
# ray.cluster_utils.Cluster writes the head's address to <RAY_TMPDIR or TMPDIR or /tmp>/ray/ray_current_cluster
# whatever temp_dir its head gets (Ray 2.60), and fails with FileNotFoundError on a machine where Ray never ran.
os.makedirs(os.path.join(os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp", "ray"), exist_ok=True)


import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _mlflow_uri_stays_in_its_module():
    """mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI (for subprocesses): a module that points MLflow
    at its own store must not send later modules' runs and CLI subprocesses there."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(before)  # None unsets both the global and the variable
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="module")
def ray_dir():
    """A fresh directory under /tmp for a module's Ray temp_dir. Ray's socket paths (<temp_dir>/session_<date>_<pid>/
    sockets/plasma_store) must fit in 107 bytes, and pytest's tmp paths do not leave room under pytest-xdist
    (/tmp/pytest-of-<user>/pytest-<n>/popen-gw<k>/<name>0/...): the first parallel run failed every module that
    put Ray there."""
    d = tempfile.mkdtemp(prefix="fw-ray-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)
