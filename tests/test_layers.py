"""The package's layers import only downwards, and no two modules import each other in a circle.

Read from the source with ``ast``, so imports inside functions (the ones that hide a cycle from
``import`` itself) count as much as those at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import dyt_lab

PACKAGE = Path(dyt_lab.__file__).parent
# Lowest first. Layers on one rank (data, training) must not import each other either.
LAYERS = {
    "dyt_lab": 0, "dyt_lab.errors": 0,
    "dyt_lab.config_keys": 0.5,  # the one flattener: a nested config as short dotted keys
    "dyt_lab.parse_errors": 0.5,  # reads jsonargparse's and YAML's messages into ConfigError lines
    "dyt_lab.predictions": 0.5,  # the per-image test predictions file: written in training, read by the report
    "dyt_lab.norms": 1,
    "dyt_lab.models": 2,
    "dyt_lab.data": 3, "dyt_lab.training": 3,
    "dyt_lab.runs": 4,  # the LightningCLI class and load_run: what probes and studies build runs with
    "dyt_lab.diagnostics": 5,
    # dyt_lab.study by role, lowest first: the report never imports the engine, nor a trial's process either
    "dyt_lab.study": 6,
    "dyt_lab.study.attributes": 6.0,  # the names a study's records are stored under
    "dyt_lab.study.optuna_internals": 6.0,  # the Optuna internals the study relies on, each with its reason
    "dyt_lab.study.definition": 6.1,  # what a study is: study file, search space, design, storage, samplers
    "dyt_lab.study.trial": 6.2,  # what runs inside a trial's own fit process
    "dyt_lab.study.report": 6.3,  # `dyt-lab study report`: tables, statistics, plots
    "dyt_lab.study.engine": 6.4,  # how a study runs: runner, workers, objective, launch, liveness, check
    "dyt_lab.study.cli": 6.5,
    "dyt_lab.cli": 7,
    "dyt_lab.__main__": 8,  # `python -m dyt_lab`: the one line that calls cli.main
}


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module under ``root`` (a package folder)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file, each resolved to a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1 folders
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports the module pkg.sub; `from pkg import name` imports pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a non-module c: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    names = module_names(root)
    return {name: imports_of(name, path, set(names)) for name, path in names.items()}


def layer_of(module: str) -> str:
    """The entry of ``LAYERS`` a module belongs to: its longest dotted prefix there."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in LAYERS:
            return ".".join(parts[:end])
    raise KeyError(f"{module} belongs to no layer: add its package to LAYERS")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a imports b' for each import from a higher layer, or across two layers of one rank."""
    bad = []
    for module, targets in sorted(graph.items()):
        own = layer_of(module)
        for target in sorted(targets):
            other = layer_of(target)
            if other != own and LAYERS[other] >= LAYERS[own] and other != "dyt_lab":
                bad.append(f"{module} ({own}, layer {LAYERS[own]}) imports {target} ({other}, layer {LAYERS[other]})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles, one per group of modules that reach each other (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_belongs_to_a_layer():
    for module in import_graph(PACKAGE):
        layer_of(module)


def test_no_module_imports_from_a_higher_layer():
    bad = upward_imports(import_graph(PACKAGE))
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


def test_no_import_cycles():
    found = cycles(import_graph(PACKAGE))
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(group) for group in found)


def reach(graph: dict[str, set[str]], module: str) -> set[str]:
    """Every project module ``module`` imports, directly or through others."""
    seen, todo = set(), [module]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def under(modules: set[str], *packages: str) -> set[str]:
    return {m for m in modules if any(m == p or m.startswith(p + ".") for p in packages)}


def test_the_report_never_reaches_the_engine():
    graph = import_graph(PACKAGE)
    for module in under(set(graph), "dyt_lab.study.report"):
        engine = under(reach(graph, module), "dyt_lab.study.engine", "dyt_lab.runs", "dyt_lab.training")
        assert not engine, f"{module} imports {sorted(engine)}: a report reads the storage, it runs nothing"


def test_a_trials_process_imports_only_what_it_needs():
    """The pruning callback runs inside a trial's fit: it reaches the study's definition and the Optuna
    internals module, never the engine that started it, nor the report."""
    graph = import_graph(PACKAGE)
    allowed = ("dyt_lab.errors", "dyt_lab.study.trial", "dyt_lab.study.definition", "dyt_lab.study.optuna_internals",
               "dyt_lab.study.attributes", "dyt_lab.config_keys")
    for module in under(set(graph), "dyt_lab.study.trial"):
        extra = reach(graph, module) - under(reach(graph, module), *allowed) - {"dyt_lab", "dyt_lab.parse_errors"}
        assert not extra, f"{module} imports {sorted(extra)}"


def test_the_checks_catch_the_cycles_they_exist_for(tmp_path):
    # The shapes issue 11 removed: an entry point imported from below, and two sibling modules
    # importing each other, one of them from inside a function.
    files = {
        "__init__.py": "",
        "cli.py": "def main():\n    from dyt_lab.study.runner import run\n",
        "study/__init__.py": "",
        "study/runner.py": "from dyt_lab.study import validate\n",
        "study/validate.py": "def f():\n    from dyt_lab.cli import make_parser\n",
        "norms/__init__.py": "",
        "norms/functional.py": "def g():\n    from . import fused\n",
        "norms/fused.py": "from dyt_lab.norms.functional import per_channel\n",
    }
    for name, text in files.items():
        (tmp_path / "dyt_lab" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "dyt_lab" / name).write_text(text)
    graph = import_graph(tmp_path / "dyt_lab")
    assert cycles(graph) == [["dyt_lab.cli", "dyt_lab.study.runner", "dyt_lab.study.validate"],
                             ["dyt_lab.norms.functional", "dyt_lab.norms.fused"]]
    assert upward_imports(graph) == [
        "dyt_lab.study.validate (dyt_lab.study, layer 6) imports dyt_lab.cli (dyt_lab.cli, layer 7)"]
