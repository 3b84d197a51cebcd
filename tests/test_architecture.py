"""The import graph keeps the architecture (ARCHITECTURE.md, "Boundaries"): no import cycles, the library
never imports the application, and only dmlscale/distributed/ touches torch.distributed. Every import
counts, also one inside a function, so a cycle cannot hide behind a lazy import."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dmlscale"
APPLICATION = ("train", "monitor", "cli", "demo", "demo_cli", "demo_choices")  # config, trainer, engine, checkpoint, CLI commands, monitor
COMMUNICATION = "torch.distributed"
COMMUNICATION_HOME = "distributed"


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: Path) -> list[str]:
    """Every module name `module` imports (absolute), wherever the import statement stands."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            names.append(prefix)
            names += [f"{prefix}.{alias.name}" for alias in node.names]
    return names


def import_graph(package: Path) -> tuple[dict[str, set[str]], dict[str, list[str]]]:
    """(module -> the package's modules it imports, module -> every name it imports)."""
    modules = module_files(package)
    graph, raw = {}, {}
    for module, path in modules.items():
        raw[module] = imports_of(module, path)
        graph[module] = {name for name in raw[module] if name in modules and name != module}
    return graph, raw


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def is_application(module: str) -> bool:
    """`pkg.train.engine`, `pkg.cli`: the first name below the package is an application part."""
    parts = module.split(".")
    return len(parts) > 1 and parts[1] in APPLICATION


def violations(package: Path) -> dict[str, list]:
    graph, raw = import_graph(package)
    library_to_application = sorted(
        (module, target) for module, targets in graph.items() if not is_application(module)
        for target in targets if is_application(target))
    communication = sorted(
        (module, name) for module, names in raw.items() if module.split(".")[1:2] != [COMMUNICATION_HOME]
        for name in names if name == COMMUNICATION or name.startswith(COMMUNICATION + "."))
    return {"cycles": cycles(graph), "library_to_application": library_to_application,
            "communication_outside_distributed": communication}


def test_the_package_has_no_cycle_no_library_to_application_import_and_one_home_for_torch_distributed():
    found = violations(PACKAGE)
    assert found == {"cycles": [], "library_to_application": [], "communication_outside_distributed": []}, found


def test_the_check_finds_each_kind_of_violation(tmp_path):
    """The check above is not vacuous: a small package with one violation of each kind is caught."""
    package = tmp_path / "pkg"
    for name, text in {
        "__init__.py": "",
        "losses/__init__.py": "",
        "losses/a.py": "from pkg.losses import b\n",
        "losses/b.py": "def f():\n    from pkg.losses.a import f  # a lazy import still closes the cycle\n",
        "models/__init__.py": "",
        "models/m.py": "def g():\n    from pkg.train import engine\n",
        "train/__init__.py": "",
        "train/engine.py": "import torch.distributed as dist\nfrom ..models import m\n",
        "distributed/__init__.py": "",
        "distributed/env.py": "import torch.distributed as dist\n",
    }.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    found = violations(package)
    # the model <-> engine cycle is the one the tree had (models/clip.py lazily importing train/engine.py)
    assert found["cycles"] == [["pkg.losses.a", "pkg.losses.b"], ["pkg.models.m", "pkg.train.engine"]]
    assert found["library_to_application"] == [("pkg.models.m", "pkg.train"), ("pkg.models.m", "pkg.train.engine")]
    assert found["communication_outside_distributed"] == [("pkg.train.engine", "torch.distributed")]
