"""Fixtures shared by the integration modules: a local Ray per module (in tests/conftest.py's ray_dir)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory, ray_dir):
    """One local Ray (2 CPUs, no dashboard, namespace flywheel) for the module; yields a tmp dir for its files."""
    import ray

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    tmp = tmp_path_factory.mktemp("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=ray_dir, namespace="flywheel")
    yield Path(tmp)
    ray.shutdown()
