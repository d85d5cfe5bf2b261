"""Fixtures shared by the integration modules: a local Ray per module (in tests/conftest.py's ray_dir)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory, ray_dir):
    """One local Ray (2 CPUs, no dashboard, namespace flywheel) for the module; yields a tmp dir for its files."""
    import ray

    tmp = tmp_path_factory.mktemp("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=ray_dir, namespace="flywheel")
    yield Path(tmp)
    ray.shutdown()
