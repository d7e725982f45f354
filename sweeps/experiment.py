"""The experiment folder on its storage: the spec as run, a manifest of stages, the Ray Tune
state of each stage and the results dataset. Local folders and pyarrow filesystem URIs; files are
read and written (atomically) by the store."""

from __future__ import annotations

import json
import os

from metasweep.analysis.store import read_text, write_text  # the store owns files and their atomic writes

from .errors import UserError


def experiment_uri(storage: str, experiment: str) -> str:
    """The experiment's folder under a storage: a local folder (its parent must exist) or a pyarrow
    filesystem URI, whose query (e.g. `?endpoint_override=HOST:PORT&scheme=http`) is kept at the end."""
    if "://" in storage:
        base, sep, query = storage.partition("?")
        return f"{base.rstrip('/')}/{experiment}{sep}{query}"
    storage = os.path.abspath(storage)
    parent = os.path.dirname(storage)
    if not os.path.isdir(storage):
        if os.path.exists(storage):
            raise UserError(f"storage {storage}: exists and is not a folder")
        if not os.path.isdir(parent):
            raise UserError(f"storage {storage}: folder does not exist and neither does its parent {parent}; "
                            "create it or pass --storage DIR")
    return os.path.join(storage, experiment)


def located(uri: str) -> str:
    """An experiment given on the command line: a URI as it is, a local path made absolute."""
    return uri if "://" in uri else os.path.abspath(uri)


def read_manifest(uri: str) -> dict:
    text = read_text(uri, "manifest.json")
    return json.loads(text) if text else {"cells": {}, "best": {}, "inputs": {}}


def write_manifest(uri: str, manifest: dict) -> None:
    write_text(uri, "manifest.json", json.dumps(manifest, indent=2, sort_keys=True))


def is_local(uri: str) -> bool:
    return "://" not in uri
