"""Lineage of registered model versions, kept as ``flywheel.*`` tags on each version.

Every model version the flywheel registers carries tags saying which data and labels trained
it, which run produced it and which model(s) it started from. Walking the parent links answers
"what went into the model now serving?"; filtering on ``flywheel.data_version`` answers "which
models saw this (possibly bad) data?". The functions here are pure: they build tag dicts and
read them through a lookup function, so the MLflow client stays in ``actors/``.

Tags (all values are strings, as the MLflow registry requires):

=============================  ============================================================
``flywheel.lineage_schema``    layout version of these tags (``"1"``)
``flywheel.data_version``      pool version the training set was drawn from
``flywheel.label_version``     canonical JSON of {guideline_version, annotators, counts, ...}
``flywheel.guideline_version`` copy of the guideline version, for registry searches
``flywheel.run_id``            MLflow run that produced the weights
``flywheel.parent_models``     JSON list of ``models:/<name>/<version>`` URIs (``[]``: a root;
                               several: a merge)
``flywheel.tuning_study``      tuning study name (only when tuned)
``flywheel.merge_recipe``      canonical JSON of the merge recipe (only when merged)
=============================  ============================================================
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

PREFIX = "flywheel."
SCHEMA = "1"
MAX_TAG_VALUE = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH in mlflow 3.x
_LABEL_KEYS = ("guideline_version", "annotators", "counts")

TagLookup = Callable[[str, str], "dict[str, str] | None"]


class LineageError(ValueError):
    """Malformed lineage input, or a cycle in the parent links."""


def _canonical(value: Any) -> str:
    # sort_keys + compact separators: the same content always gives the same tag string.
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def model_uri(model: str, version: str | int) -> str:
    """``models:/<model>/<version>``, the registry URI MLflow itself accepts."""
    if not model or not str(version):
        raise LineageError(f"model and version must be non-empty, got model={model!r} version={version!r}")
    return f"models:/{model}/{version}"


def parse_model_uri(uri: str) -> tuple[str, str]:
    """Inverse of ``model_uri``: ``"models:/clf/3"`` -> ``("clf", "3")``.

    The version is after the last ``/`` so model names that contain ``/`` still parse.
    """
    if not isinstance(uri, str) or not uri.startswith("models:/") or "/" not in uri[len("models:/") :]:
        raise LineageError(f"parent model {uri!r} is not of the form 'models:/<name>/<version>'")
    model, version = uri[len("models:/") :].rsplit("/", 1)
    if not model or not version:
        raise LineageError(f"parent model {uri!r} is not of the form 'models:/<name>/<version>'")
    return model, version


def lineage_tags(
    data_version: str,
    label_version: dict[str, Any],
    run_id: str,
    parent_model: str | Sequence[str] | None,
    tuning_study: str | None = None,
    merge_recipe: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Tags to set on a newly registered model version.

    Args:
        data_version: Pool version of the training data (e.g. ``"v7"``).
        label_version: Dict with at least ``guideline_version``, ``annotators`` (e.g. names or
            a count) and ``counts`` (e.g. labels per class); extra keys are kept.
        run_id: MLflow run id of the training (or merge) run.
        parent_model: ``models:/<name>/<version>`` of the starting model, a list of them for a
            merge, or None for a model trained from the base weights.
        tuning_study: Name of the hyper-parameter study, when the run came from one.
        merge_recipe: The merge configuration, when the model is a merge.

    Returns:
        ``{"flywheel.<key>": str}``; see the module docstring for the keys.

    Raises:
        LineageError: Missing label keys, empty ids, malformed parent URIs, or a value longer
            than MLflow's 8000-character tag limit.
    """
    if not data_version or not run_id:
        raise LineageError(f"data_version and run_id must be non-empty, got {data_version!r}, {run_id!r}")
    if not isinstance(label_version, dict):
        raise LineageError(f"label_version must be a dict with keys {list(_LABEL_KEYS)}, got {label_version!r}")
    missing = [k for k in _LABEL_KEYS if k not in label_version]
    if missing:
        raise LineageError(f"label_version is missing {missing}; it needs {list(_LABEL_KEYS)}")
    parents = [] if parent_model is None else [parent_model] if isinstance(parent_model, str) else list(parent_model)
    for uri in parents:
        parse_model_uri(uri)
    tags = {
        "lineage_schema": SCHEMA,
        "data_version": str(data_version),
        "label_version": _canonical(label_version),
        "guideline_version": str(label_version["guideline_version"]),
        "run_id": str(run_id),
        "parent_models": _canonical(parents),
    }
    if tuning_study is not None:
        tags["tuning_study"] = str(tuning_study)
    if merge_recipe is not None:
        tags["merge_recipe"] = _canonical(merge_recipe)
    for key, value in tags.items():
        if len(value) > MAX_TAG_VALUE:
            raise LineageError(f"tag {PREFIX}{key} is {len(value)} characters; MLflow allows {MAX_TAG_VALUE}")
    return {PREFIX + k: v for k, v in tags.items()}


def _parents(tags: dict[str, str], where: str) -> list[tuple[str, str]]:
    raw = tags.get(PREFIX + "parent_models", "[]")
    try:
        uris = json.loads(raw)
    except ValueError:
        raise LineageError(f"{where}: tag {PREFIX}parent_models is not JSON: {raw!r}") from None
    if not isinstance(uris, list):
        raise LineageError(f"{where}: tag {PREFIX}parent_models must be a JSON list, got {raw!r}")
    return [parse_model_uri(u) for u in uris]


def lineage_chain(model: str, version: str | int, get_version_tags: TagLookup, max_depth: int = 10_000) -> dict[str, Any]:
    """Walk parent links from one model version back to its roots.

    Args:
        model: Registered model name.
        version: Its version.
        get_version_tags: ``(model, version) -> tags`` (e.g. a thin wrapper over
            ``MlflowClient.get_model_version(...).tags``); returns None or raises KeyError for a
            version that no longer exists. Versions are passed as strings.
        max_depth: Most versions in one chain before giving up (guards against runaway lookups).

    Returns:
        ``{"model", "version", "run_id", "data_version", "label_version" (dict or None),
        "parents": [same shape, ...]}``; a parent that no longer exists appears as
        ``{"model", "version", "missing": True, "parents": []}``. A version shared by two
        branches of a merge appears under both.

    Raises:
        KeyError: The starting version does not exist.
        LineageError: A cycle in the parent links (the message shows it), bad tags, or a chain
            deeper than ``max_depth``.
    """

    def lookup(m: str, v: str) -> dict[str, str] | None:
        try:
            return get_version_tags(m, v)
        except KeyError:
            return None

    def node(m: str, v: str, tags: dict[str, str]) -> dict[str, Any]:
        label = tags.get(PREFIX + "label_version")
        try:
            label = json.loads(label) if label is not None else None
        except ValueError:
            raise LineageError(f"{model_uri(m, v)}: tag {PREFIX}label_version is not JSON: {label!r}") from None
        return {
            "model": m,
            "version": v,
            "run_id": tags.get(PREFIX + "run_id"),
            "data_version": tags.get(PREFIX + "data_version"),
            "label_version": label,
            # how the version's canary rollout ended (promoted / rolled_back / pending), where it had one
            **({"canary": tags[PREFIX + "canary_outcome"]} if PREFIX + "canary_outcome" in tags else {}),
            "parents": [],
        }

    version = str(version)
    tags = lookup(model, version)
    if tags is None:
        raise KeyError(f"model version {model_uri(model, version)} not found")
    root = node(model, version, tags)
    # Depth-first with an explicit stack, not recursion: a flywheel retraining daily builds
    # chains longer than Python's recursion limit. `path` is the chain from the root (for cycles).
    stack = [(root, (model_uri(model, version),), iter(_parents(tags, model_uri(model, version))))]
    while stack:
        parent_node, path, todo = stack[-1]
        nxt = next(todo, None)
        if nxt is None:
            stack.pop()
            continue
        m, v = nxt
        uri = model_uri(m, v)
        if uri in path:
            raise LineageError(f"cycle in model lineage: {' -> '.join([*path[path.index(uri) :], uri])}")
        if len(path) >= max_depth:
            raise LineageError(f"lineage of {path[0]} is deeper than max_depth={max_depth}")
        tags = lookup(m, v)
        if tags is None:
            parent_node["parents"].append({"model": m, "version": v, "missing": True, "parents": []})
            continue
        child = node(m, v, tags)
        parent_node["parents"].append(child)
        stack.append((child, (*path, uri), iter(_parents(tags, uri))))
    return root


def models_for_data_version(all_versions: list[dict[str, Any]], data_version: str) -> list[dict[str, Any]]:
    """Model versions trained on ``data_version`` (e.g. to find what a bad data batch reached).

    Args:
        all_versions: ``[{"model": str, "version": str | int, "tags": dict[str, str]}, ...]``.
        data_version: Pool version to look for.

    Returns:
        The matching entries, sorted by model name then numeric version.
    """
    for i, row in enumerate(all_versions):
        if not isinstance(row, dict) or not {"model", "version", "tags"} <= row.keys():
            raise LineageError(f"all_versions[{i}] must be a dict with keys model, version, tags; got {row!r}")
    hits = [r for r in all_versions if r["tags"].get(PREFIX + "data_version") == data_version]
    # MLflow versions are integers stored as strings: sort "10" after "9".
    def key(r: dict[str, Any]) -> tuple[str, int, str]:
        v = str(r["version"])
        return r["model"], int(v) if v.isdigit() else -1, v

    return sorted(hits, key=key)


def parse_model_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``(model, version, alias)`` from a reference as users type it.

    Accepted: ``name/3``, ``name@champion``, ``models:/name/3``, ``models:/name@champion``, and a
    bare ``name`` (meaning its ``champion``). Exactly one of version and alias is set.

    Raises:
        LineageError: Empty name, version or alias, or a version that is not a positive integer.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise LineageError(f"model reference must be a non-empty string, got {ref!r}")
    body = ref.strip()[len("models:/") :] if ref.strip().startswith("models:/") else ref.strip()
    if "@" in body:
        model, alias = body.rsplit("@", 1)
        if not model or not alias:
            raise LineageError(f"model reference {ref!r}: expected NAME@ALIAS")
        return model, None, alias
    if "/" in body:
        model, version = body.rsplit("/", 1)
        if not model or not version.isdigit() or int(version) < 1:
            raise LineageError(f"model reference {ref!r}: expected NAME/VERSION with VERSION a positive integer")
        return model, version, None
    return body, None, "champion"
