"""The package's layering: no import cycle, no lower layer importing a higher
one, no module reading another module's private names, and every module
importable on its own.

The layers, lowest first (DESIGN.md: layers -> models -> zoo/apps ->
training/cli, TF-only modules at the edge). A module may import modules of
its own rank or lower, never higher, and the import graph (module-level and
function-level imports alike) has no cycle. `tfflows/__init__.py`, the
facade, is the top and may import anything.
"""

import ast
import os
import subprocess
import sys

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tfflows")

# Longest matching prefix wins.
RANKS = {
    "tfflows.version": 0, "tfflows.errors": 0, "tfflows.transforms": 0, "tfflows.weights_file": 0, "tfflows.images": 0,
    "tfflows.serving": 0, "tfflows.optimizers": 0, "tfflows.tf_optimizers": 0, "tfflows.ode_tf": 0,
    "tfflows.ode_jax": 0,
    "tfflows.layers.base": 1,
    "tfflows.layers": 2, "tfflows.distributions": 2, "tfflows.datasets": 2,
    "tfflows.models": 3,
    "tfflows.checkpoint": 4, "tfflows.training": 4, "tfflows.distribute": 4, "tfflows.bijectors": 4,
    "tfflows.export": 4, "tfflows.zoo.data": 4, "tfflows.sample_quality": 4,
    "tfflows.zoo.presets": 0,
    "tfflows.zoo": 5, "tfflows.apps": 5, "tfflows.vi": 5, "tfflows.vae": 5,
    "tfflows.recipe": 6, "tfflows.cli": 6,
    "tfflows": 99,
}


def _rank(module):
    best = max((p for p in RANKS if module == p or module.startswith(p + ".")), key=len)
    return RANKS[best]


def _modules():
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return out


MODULES = _modules()


def _imports(module, path):
    """Every tfflows module `module` imports (anywhere in the file), with line numbers."""
    tree = ast.parse(open(path).read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "tfflows"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] != "tfflows":
                continue
            for a in node.names:  # `from tfflows import layers` imports the submodule
                sub = f"{base}.{a.name}"
                found.append((sub if sub in MODULES else base, node.lineno))
    return found


def test_the_rank_table_covers_every_module():
    assert all(_rank(m) < 99 for m in MODULES if m != "tfflows"), \
        [m for m in MODULES if m != "tfflows" and _rank(m) == 99]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "tfflows"))
def test_no_module_imports_a_higher_layer(module):
    bad = [(name, line) for name, line in _imports(module, MODULES[module])
           if _rank(name) > _rank(module)]
    assert not bad, f"{module} (rank {_rank(module)}) imports higher layers: " + ", ".join(
        f"{n} (rank {_rank(n)}) at line {line}" for n, line in bad)


def test_the_import_graph_has_no_cycle():
    graph = {m: {n for n, _ in _imports(m, p) if n in MODULES and n != m and n != "tfflows"}
             for m, p in MODULES.items() if m != "tfflows"}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_reads_another_modules_private_names(module):
    tree = ast.parse(open(MODULES[module]).read())
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tfflows"):
            bad += [f"from {node.module} import {a.name}" for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")]
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            own = isinstance(owner, ast.Name) and owner.id in ("self", "cls") or (
                isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super")
            if not own:
                bad.append(f"line {node.lineno}: .{node.attr}")
    assert not bad, f"{module} reads private names of other objects: {bad}"


_IMPORT_EACH = """
import importlib, sys, traceback
failed = []
for module in sys.argv[1:]:
    for name in [m for m in sys.modules if m == "tfflows" or m.startswith("tfflows.")]:
        del sys.modules[name]
    try:
        importlib.import_module(module)
    except Exception:
        failed.append(module + ": " + traceback.format_exc()[-1500:])
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_on_its_own():
    # One interpreter, every tfflows module dropped from sys.modules before the
    # next import: each module is imported with no other tfflows module loaded
    # (what "on its own" means for the package's import order), while Keras
    # and TensorFlow, loaded once, stay cached. Keras on JAX: a module that
    # needs TensorFlow imports it itself.
    proc = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *sorted(MODULES)], capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="jax", JAX_PLATFORMS="cpu"),
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
