"""The broker configuration modules import one another downwards only: broker_dir (file
names, reading a directory back) <- bridge <- broker_config (a region's broker, the command
line) <- central_broker. Each is imported in a fresh interpreter, so what it pulls in shows."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

LAYERS = ["broker_dir", "bridge", "broker_config", "central_broker"]


def loaded_by(module: str) -> set[str]:
    probe = (f"import json, sys; import recarga.core.{module}; "
             "print(json.dumps([m for m in sys.modules if m.startswith('recarga.core.')]))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return {m.removeprefix("recarga.core.") for m in json.loads(out.stdout)}


@pytest.mark.parametrize("module", LAYERS)
def test_a_broker_module_imports_only_the_layers_below_it(module: str):
    loaded = loaded_by(module)
    above = LAYERS[LAYERS.index(module) + 1:]
    below = LAYERS[:LAYERS.index(module)]
    assert not loaded & set(above), f"recarga.core.{module} imports {sorted(loaded & set(above))}"
    assert set(below) <= loaded  # each builds on the one below it
