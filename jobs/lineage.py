"""What a registered model was built from, and which models a data version reached.

    python -m jobs.lineage MODEL_REF [--json]        # MODEL_REF: name/3, name@champion, models:/name/3, name
    python -m jobs.lineage --data-version V [--model NAME] [--json]

Reads the ``flywheel.*`` lineage tags of the MLflow registry (``app.controller.lineage``). The
registry is ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else the SQLite file of the run store
(``--store``, ``$FLYWHEEL_HOME`` or ``.flywheel``), as the loop writes it.
"""

from __future__ import annotations

import argparse
import json
import sys


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m jobs.lineage", description=__doc__.split("\n")[0])
    p.add_argument("model_ref", nargs="?", help="name/VERSION, name@ALIAS, models:/..., or a name (its champion)")
    p.add_argument("--data-version", help="list the model versions trained on this pool version")
    p.add_argument("--model", help="with --data-version: only this registered model")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    p.add_argument("--store", default=".flywheel", help="run store holding mlflow.db (FLYWHEEL_HOME overrides)")
    a = p.parse_args(argv)
    if (a.model_ref is None) == (a.data_version is None):
        p.error("give exactly one of MODEL_REF or --data-version")
    return a


def _client(args):
    from mlflow.tracking import MlflowClient

    import os
    from pathlib import Path

    from app.tracking import tracking_uri

    if not (args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        db = Path(os.environ.get("FLYWHEEL_HOME") or args.store).expanduser().resolve() / "mlflow.db"
        if not db.exists():  # reading must not create an empty registry
            raise FileNotFoundError(f"no registry at {db}: pass --store, --tracking-uri or set FLYWHEEL_HOME")
    return MlflowClient(tracking_uri(args.tracking_uri, Path(os.environ.get("FLYWHEEL_HOME") or args.store).expanduser()))


def chain(client, ref: str) -> dict:
    """``lineage_chain`` of a model reference against an MLflow registry client."""
    from mlflow.exceptions import MlflowException

    from app.controller.lineage import lineage_chain, parse_model_ref

    model, version, alias = parse_model_ref(ref)
    if alias is not None:
        try:
            version = str(client.get_model_version_by_alias(model, alias).version)
        except MlflowException:
            raise KeyError(f"no version of model {model!r} carries alias {alias!r}") from None

    def tags(m: str, v: str):
        try:
            return dict(client.get_model_version(m, v).tags)
        except MlflowException:
            return None

    return lineage_chain(model, version, tags)


def by_data_version(client, data_version: str, model: str | None = None) -> list[dict]:
    """Model versions whose ``flywheel.data_version`` tag is ``data_version`` (for deletion requests)."""
    from app.controller.lineage import models_for_data_version

    names = [model] if model else [m.name for m in client.search_registered_models()]
    rows = [{"model": mv.name, "version": str(mv.version), "tags": dict(mv.tags), "run_id": mv.run_id}
            for n in names for mv in client.search_model_versions(f"name = '{n}'")]
    hits = models_for_data_version(rows, str(data_version))
    return [{"model": r["model"], "version": r["version"], "run_id": r["run_id"],
             "label_version": r["tags"].get("flywheel.label_version")} for r in hits]


def _tree(node: dict, depth: int = 0) -> list[str]:
    pad = "  " * depth
    if node.get("missing"):
        return [f"{pad}{node['model']} v{node['version']} (no longer in the registry)"]
    lines = [f"{pad}{node['model']} v{node['version']}: data v{node['data_version']}, run {node['run_id']}, "
             f"labels {json.dumps(node['label_version'])}"]
    for p in node["parents"]:
        lines += _tree(p, depth + 1)
    return lines


def main(argv=None) -> int:
    args = _parse(argv)
    from app.controller.lineage import LineageError
    from jobs.common import set_offline_env

    set_offline_env()
    try:
        client = _client(args)
    except FileNotFoundError as e:
        print(f"lineage error: {e}", file=sys.stderr)
        return 2
    try:
        if args.data_version is not None:
            out = by_data_version(client, args.data_version, args.model)
            print(json.dumps(out, indent=1) if args.json else
                  "\n".join(f"{r['model']} v{r['version']} (run {r['run_id']})" for r in out) or
                  f"no model version was trained on data version {args.data_version}")
        else:
            out = chain(client, args.model_ref)
            print(json.dumps(out, indent=1) if args.json else "\n".join(_tree(out)))
    except (KeyError, LineageError) as e:
        print(f"lineage error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
