"""Fixtures shared by the integration modules: a local Ray per module, in a temp dir short enough for Ray."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def ray_dir():
    """A fresh directory under /tmp for a module's Ray temp_dir. Ray's socket paths (<temp_dir>/session_<date>_<pid>/
    sockets/plasma_store) must fit in 107 bytes, and pytest's tmp paths do not leave room under pytest-xdist
    (/tmp/pytest-of-<user>/pytest-<n>/popen-gw<k>/<name>0/...): the first parallel run failed every module that
    put Ray there."""
    d = tempfile.mkdtemp(prefix="fw-ray-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory, ray_dir):
    """One local Ray (2 CPUs, no dashboard, namespace flywheel) for the module; yields a tmp dir for its files."""
    import ray

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    tmp = tmp_path_factory.mktemp("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=ray_dir, namespace="flywheel")
    yield Path(tmp)
    ray.shutdown()
