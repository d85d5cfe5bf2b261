"""A restarted Controller frees what its dead predecessor's Ray Train run holds: `release_orphaned_training_pgs`
removes every placement group created by a TrainController that an earlier worker owned, placed or still
pending, and touches nothing else.

The actors here are real Ray actors on a local cluster; the one called ``TrainController`` stands in for Ray
Train's (the function matches on class name and owner, as it must for Ray's), so the test needs no training.
"""

from __future__ import annotations

import pytest

from tests.integration.test_controller import _wait

pytestmark = pytest.mark.integration


def _pg_states() -> dict[str, str]:
    from ray._private.state import state as gstate
    from ray.core.generated import gcs_pb2

    P = gcs_pb2.PlacementGroupTableData
    return {pg.placement_group_id.hex(): P.PlacementGroupState.Name(pg.state)
            for pg in map(P.FromString, gstate._connect_and_get_accessor().get_placement_group_table())}


class TrainController:  # the class name of Ray Train's controller actor, made an actor in the test
    def __init__(self):
        import ray
        from ray.util.placement_group import placement_group

        # one group placed, one that can never be placed (it waits, pending, for CPUs)
        self.placed = placement_group([{"CPU": 1}])
        ray.get(self.placed.ready(), timeout=60)
        self.pending = placement_group([{"CPU": 64}])

    def ids(self):
        return [self.placed.id.hex(), self.pending.id.hex()]


class Owner:  # stands in for the Controller actor that started the training run
    def start(self):
        import ray

        self.tc = ray.remote(num_cpus=0)(TrainController).remote()
        return ray.get(self.tc.ids.remote()), ray.get_runtime_context().get_worker_id()


def test_orphaned_train_controllers_groups_freed(ray_local):
    import ray
    from ray.util.placement_group import placement_group

    from actors.controller import release_orphaned_training_pgs

    owner = ray.remote(num_cpus=0)(Owner).remote()
    (placed, pending), owner_wid = ray.get(owner.start.remote(), timeout=120)
    bystander = placement_group([{"CPU": 0.5}])  # the driver's own group: not an orphan's
    ray.get(bystander.ready(), timeout=60)
    assert _pg_states()[placed] == "CREATED" and _pg_states()[pending] == "PENDING"

    assert release_orphaned_training_pgs(set()) == []
    assert release_orphaned_training_pgs({"ff" * 28}) == []  # a worker that owns nothing

    # the owner's worker id given as an earlier incarnation's: both groups of its TrainController go
    out = release_orphaned_training_pgs({owner_wid})
    assert sorted(out) == sorted([placed, pending]), out
    states = _pg_states()
    assert states[placed] == "REMOVED" and states[pending] == "REMOVED"
    assert states[bystander.id.hex()] == "CREATED"
    _wait(lambda: ray.available_resources().get("CPU", 0) >= 1.5 - 1e-9, 30, "the freed CPUs (2 less the bystander's)")

    # a later pass (the watch thread's) finds nothing left to free
    assert release_orphaned_training_pgs({owner_wid}) == []
    ray.util.remove_placement_group(bystander)

