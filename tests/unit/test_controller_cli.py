"""`jobs.flywheel start` refuses bad configs and inputs before Ray starts (exit 2, one line)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(args, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "FLYWHEEL_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "jobs.flywheel", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_bad_controller_section_and_missing_source(tmp_path):
    r = _run(["start", "jobs/configs/flywheel.yaml", "--set", "controller.triggers.policy=sometimes",
              "--set", "controller.poll_seconds=-1"], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "controller.triggers.policy" in r.stderr and "sometimes" in r.stderr
    assert "controller.poll_seconds" in r.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: classify\npool:\n  sources: [{path: data/nope/missing.tsv}]\ncontroller: {poll_seconds: 1}\n")
    r = _run(["start", str(cfg), "--max-iterations", "1"], tmp_path)
    assert r.returncode == 2 and "data/nope/missing.tsv" in r.stderr
    assert not (tmp_path / "home" / "mlflow.db").exists()  # nothing started, nothing written
    r = _run(["start", "jobs/configs/flywheel.yaml", "--max-iterations", "0"], tmp_path)
    assert r.returncode == 2 and "--max-iterations must be >= 1" in r.stderr
