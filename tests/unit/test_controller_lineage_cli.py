"""`python -m jobs.lineage` against a real (SQLite) MLflow registry: chain, data-version search, errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.controller.lineage import LineageError, lineage_tags, parse_model_ref

ROOT = Path(__file__).resolve().parents[2]
LABELS = {"guideline_version": 1, "annotators": {"oracle": 40}, "counts": {"human": 40}}


@pytest.mark.parametrize("ref,want", [
    ("clf/3", ("clf", "3", None)), ("clf@champion", ("clf", None, "champion")),
    ("models:/clf/12", ("clf", "12", None)), ("models:/team/clf@prod", ("team/clf", None, "prod")),
    ("clf", ("clf", None, "champion")),
])
def test_parse_model_ref(ref, want):
    assert parse_model_ref(ref) == want


@pytest.mark.parametrize("ref", ["", "clf/0", "clf/x", "/3", "clf@", "@prod"])
def test_parse_model_ref_rejects(ref):
    with pytest.raises(LineageError):
        parse_model_ref(ref)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    home = tmp_path_factory.mktemp("reg")
    c = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    c.create_registered_model("clf")
    # v1 from the base model on data v2; v2 from v1 on data v3; v3 retrained from v2 on data v3 again
    for parent, data, run in [(None, "2", "r1"), ("models:/clf/1", "3", "r2"), ("models:/clf/2", "3", "r3")]:
        c.create_model_version("clf", source=str(home), tags=lineage_tags(data, LABELS, run, parent))
    c.set_registered_model_alias("clf", "champion", "3")
    return home


class _Result:
    def __init__(self, code, out, err):
        self.returncode, self.stdout, self.stderr = code, out, err


def _cli(home, *args, capsys=None):
    """In-process (importing mlflow once keeps this file fast); the last test also runs a real subprocess."""
    if capsys is None:
        r = subprocess.run([sys.executable, "-m", "jobs.lineage", "--store", str(home), *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        return _Result(r.returncode, r.stdout, r.stderr)
    from jobs.lineage import main

    capsys.readouterr()
    code = main(["--store", str(home), *args])
    out = capsys.readouterr()
    return _Result(code, out.out, out.err)


def test_chain_of_champion_back_to_root(registry, capsys):
    r = _cli(registry, "clf@champion", "--json", capsys=capsys)
    assert r.returncode == 0, r.stderr
    node = json.loads(r.stdout)
    path = []
    while True:
        path.append((node["version"], node["data_version"], node["run_id"]))
        if not node["parents"]:
            break
        node = node["parents"][0]
    assert path == [("3", "3", "r3"), ("2", "3", "r2"), ("1", "2", "r1")]
    assert node["label_version"] == LABELS


def test_models_for_data_version(registry, capsys):
    r = _cli(registry, "--data-version", "3", "--json", capsys=capsys)
    assert r.returncode == 0, r.stderr
    assert [x["version"] for x in json.loads(r.stdout)] == ["2", "3"]
    assert json.loads(_cli(registry, "--data-version", "9", "--json", capsys=capsys).stdout) == []


def test_errors_are_one_line_exit_2(registry, tmp_path, capsys):
    r = _cli(registry, "clf/7", capsys=capsys)
    assert r.returncode == 2 and "models:/clf/7 not found" in r.stderr and "Traceback" not in r.stderr
    r = _cli(tmp_path / "empty", "clf")
    assert r.returncode == 2 and "no registry at" in r.stderr and not (tmp_path / "empty" / "mlflow.db").exists()
