"""`ray job submit --working-dir . -- python -m jobs.flywheel start ...` twice against a `ray start --head` cluster
on 127.0.0.1 with token authentication: the second job finds the first's detached actors (namespace
`flywheel`) and its pool version instead of starting over.

The head is the venv's `ray start --head --block` in a session of its own, with its own --temp-dir, free ports
and a token of its own (`RAY_AUTH_MODE=token`, `RAY_AUTH_TOKEN`); it is stopped by its process group, never
`ray stop`. One tiny iteration (tiny-bert, 12 labels, one plain-torch worker, no Serve).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).parent / "ray"
pytestmark = pytest.mark.integration


def _config(tmp: Path) -> Path:
    (tmp / "cfg.yaml").write_text(f"""
name: jobtest
task: classify
store: {tmp / 'home'}
pool:
  sources:
    - {{path: {ROOT}/data/sst2/alps_dev_first3000.tsv, fields: {{text: sentence, label: label}}, label_role: gold,
        label_map: {{"0": negative, "1": positive}}, limit: 120}}
  labels: [negative, positive]
model: {{name: tiny-bert, max_length: 32}}
selection: {{strategy: entropy, budget: 12, rounds: 1, concurrency: 1}}
labeler: {{threshold: 0.5, qc_fraction: 0.0}}
trainer: {{engine: torch, num_workers: 1, cpus_per_worker: 1.0, epochs: 1, micro_batch_size: 4, report_every: 1}}
eval: {{max_items: 10, latency_samples: 3, gate: {{min_gain: -1.0, latency_tolerance: 1000, target: 0.0}}}}
serve: {{enabled: false}}
tracking: {{experiment: jobtest, registered_model: jobtest-model}}
ray: {{dashboard: false}}
controller:
  poll_seconds: 1
  # the first start fires (never trained); after it nothing new arrives and the wait is long: the second
  # start finds an idle controller and must not iterate again
  triggers: {{min_new_items: 10, max_wait_hours: 1000, degradation_threshold: null, policy: seed}}
""")
    return tmp / "cfg.yaml"


@pytest.fixture(scope="module")
def head(ray_dir):
    tmp = Path(ray_dir)  # short: Ray's socket paths have a length limit
    gcs, dash, client, agent, agent_grpc, metrics, rtenv, nm, om = free_ports(9)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    log = (tmp / "head.log").open("w")
    proc = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
         "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
         "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(rtenv),
         "--node-manager-port", str(nm), "--object-manager-port", str(om), "--num-cpus", "2",
         "--include-dashboard", "true", "--temp-dir", str(tmp / "ray"), "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=tmp)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 180
        while subprocess.run([str(RAY), "job", "list", "--address", url], env=env, capture_output=True,
                             timeout=60).returncode != 0:
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"head did not come up: {(tmp / 'head.log').read_text()[-3000:]}")
            time.sleep(2)
        yield {"url": url, "env": env, "tmp": tmp}
    finally:
        try:  # our own session: GCS, raylet, dashboard and workers go with the group
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)  # `ray start --block` can take long to wind down; SIGKILL the group then
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()


def _submit(head, *args: str) -> str:
    r = subprocess.run([str(RAY), "job", "submit", "--address", head["url"], "--working-dir", ".", "--",
                        sys.executable, "-m", "jobs.flywheel", *args],
                       cwd=ROOT, env=head["env"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-4000:], r.stderr[-3000:])
    return r.stdout


def _statuses(out: str) -> list[dict]:
    found = []
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{") and '"pool_version"' in line:
            found.append(json.loads(line))
    return found


def _actors(head) -> dict[str, tuple[str, str]]:
    """name -> (actor id, state) of the named actors in namespace flywheel (Ray's state API CLI)."""
    r = subprocess.run([str(RAY), "list", "actors", "--address", head["url"], "--format", "json", "--limit", "1000",
                        "--detail"], env=head["env"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return {a["name"]: (a["actor_id"], a["state"]) for a in json.loads(r.stdout)
            if a.get("name") and a.get("ray_namespace") == "flywheel"}


def test_second_job_finds_first_jobs_actors_and_pool(head):
    cfg = str(_config(head["tmp"]))
    first = _statuses(_submit(head, "start", cfg, "--max-iterations", "1"))
    assert first, "the first job printed no status"
    done = first[-1]
    assert done["state"] == "stopped" and done["iteration"] == 1 and done["iteration_status"] == "idle", done
    assert done["completed_stages"][-1] == "deploy" and done["pool_version"] >= 1
    actors = _actors(head)
    assert {"Controller", "DataPool:jobtest", "Labeler:jobtest"} <= set(actors)
    assert all(actors[n][1] == "ALIVE" for n in ("Controller", "DataPool:jobtest", "Labeler:jobtest"))

    second = _statuses(_submit(head, "start", cfg, "--detach"))
    s = second[-1]
    # the same controller (its iteration and decision), the same pool version: nothing was reset or redone
    assert s["iteration"] == 1 and s["pool_version"] == done["pool_version"], s
    assert s["last_decision"] == done["last_decision"] and s["restarted"] is False
    after = _actors(head)
    for n in ("Controller", "DataPool:jobtest", "Labeler:jobtest"):
        assert after[n] == actors[n]  # same actor ids, still alive: found, not created again
    time.sleep(3)  # a few trigger checks: nothing new arrived, so no second iteration starts
    third = _statuses(_submit(head, "status"))[-1]
    assert third["iteration"] == 1 and third["state"] == "running" and third["current_stage"] is None, third
