"""The package's layers: every module imports only from its own layer or the ones below it, with no circle.

    images, examples, threads, hub  <  models  <  pipeline  <  training  <  evaluation  <  app  <  cli
"""
import ast
import functools
import os

import pytest

from conftest import REPO

PACKAGE = os.path.join(REPO, "imagen_app")
LEVEL = {"images": 0, "examples": 0, "threads": 0, "hub": 0, "models": 1, "pipeline": 2, "training": 3, "evaluation": 4, "app": 5, "cli": 6,
         "__init__": 7, "__main__": 7}


@functools.lru_cache(maxsize=None)
def modules():
    """{'pipeline.settings': path, ...} for every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), PACKAGE)[:-3].replace(os.sep, ".")
                found[rel] = os.path.join(folder, f)
    return found


def imports_of(name: str, path: str):
    """The package modules that `name` imports (relative or absolute, at any depth of the file)."""
    package = name.split(".")[:-1]
    with open(path) as f:
        tree = ast.parse(f.read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.startswith("imagen_app"):
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:  # `from . import deepfloyd_if` names a module
                full = ".".join(target + [alias.name])
                out.add(full if full in modules() else ".".join(target))
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("imagen_app.")}
    return {m for m in out if m and m in modules() or m in ("models", "pipeline", "training", "evaluation", "app")}


def layer_of(module: str) -> str:
    return module.split(".")[0]


@functools.lru_cache(maxsize=None)
def graph():
    return {name: imports_of(name, path) for name, path in modules().items()}


def test_every_module_is_in_a_layer():
    assert {layer_of(m) for m in modules()} <= set(LEVEL)


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_point_only_down(module):
    upward = [t for t in graph()[module] if LEVEL[layer_of(t)] > LEVEL[layer_of(module)]]
    assert not upward, f"{module} imports from a higher layer: {upward}"


def test_no_import_circle():
    g = graph()
    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", "import circle: " + " -> ".join(path + [m])
        state[m] = "open"
        for t in g.get(m, ()):
            visit(t, path + [m])
        state[m] = "done"

    for m in g:
        visit(m, [])


def test_the_checks_see_an_upward_import(tmp_path, monkeypatch):
    """The layer check itself: a models module importing the pipeline is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("from ..pipeline.pipeline import ImagenPipeline\n")
    found = imports_of("models.bad", str(bad))
    assert found == {"pipeline.pipeline"} and LEVEL[layer_of("pipeline.pipeline")] > LEVEL["models"]
