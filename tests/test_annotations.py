"""Public signatures are annotated (ARCHITECTURE.md, "Style") in the modules listed in FULLY_ANNOTATED.

Public: a function, method or property whose name does not start with "_", plus every `__init__`; methods of
a class whose name starts with "_" (or that sits inside such a class) are private. Fully annotated: every
parameter (positional-only, keyword-only, *args and **kwargs; not a method's `self` or `cls`) and the return.
Functions nested inside functions are not part of the interface and are not checked.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dmlscale"

# Paths under dmlscale/ (a module file, or a folder meaning every module below it) whose public signatures
# are complete: the whole library, and of the application every part but train/.
FULLY_ANNOTATED = [
    "cli.py",
    "components.py",
    "data",
    "demo.py",
    "demo_choices.py",
    "demo_cli.py",
    "distances.py",
    "distributed",
    "eval",
    "indices.py",
    "inputs.py",
    "kernels",
    "losses",
    "memory.py",
    "miners",
    "models",
    "monitor",
    "param_checks.py",
    "records.py",
    "regularizers",
    "samplers",
]


def _is_public(name: str) -> bool:
    return not name.startswith("_") or name == "__init__"


def _is_staticmethod(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in function.decorator_list)


def _missing_annotations(function: ast.FunctionDef | ast.AsyncFunctionDef, *, is_method: bool) -> bool:
    args = function.args
    positional = args.posonlyargs + args.args
    if is_method and not _is_staticmethod(function):
        positional = positional[1:]  # self / cls
    elif is_method and function.name in ("forward", "backward") and positional and positional[0].arg == "ctx":
        positional = positional[1:]  # an autograd Function's context, which torch passes
    parameters = positional + args.kwonlyargs + [v for v in (args.vararg, args.kwarg) if v is not None]
    return function.returns is None or any(p.annotation is None for p in parameters)


def _public_functions(body: list[ast.stmt], prefix: str, in_class: bool
                      ) -> Iterator[tuple[ast.FunctionDef | ast.AsyncFunctionDef, str, bool]]:
    """(function, qualified name, is a method) for the public functions defined directly in `body`, in
    public classes, and in module or class level blocks (`if`, `try`, `with`), never inside functions."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if _is_public(node.name):
                yield node, prefix + node.name, in_class
        elif isinstance(node, ast.ClassDef):
            if not node.name.startswith("_"):
                yield from _public_functions(node.body, f"{prefix}{node.name}.", True)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for block in ("body", "orelse", "finalbody"):
                yield from _public_functions(getattr(node, block, []), prefix, in_class)
            for handler in getattr(node, "handlers", []):
                yield from _public_functions(handler.body, prefix, in_class)


def unannotated(source: str, path: str) -> list[str]:
    """`path:line name` of every public function in `source` that lacks an annotation."""
    tree = ast.parse(source, filename=path)
    return [f"{path}:{function.lineno} {name}"
            for function, name, is_method in _public_functions(tree.body, "", False)
            if _missing_annotations(function, is_method=is_method)]


def files_of(entry: str) -> list[Path]:
    path = PACKAGE / entry
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


def test_every_listed_path_exists():
    assert [entry for entry in FULLY_ANNOTATED if not (PACKAGE / entry).exists()] == []


def test_public_signatures_are_annotated():
    root = PACKAGE.parent
    missing = [line for entry in FULLY_ANNOTATED for path in files_of(entry)
               for line in unannotated(path.read_text(), str(path.relative_to(root)))]
    assert not missing, "public functions without full annotations:\n" + "\n".join(missing)


SYNTHETIC = '''
def public(x, y: int) -> int:
    return x + y

def _private(x):
    return x
'''


def test_checker_reports_the_unannotated_public_function_only():
    assert unannotated(SYNTHETIC, "m.py") == ["m.py:2 public"]


@pytest.mark.parametrize("source, expected", [
    ("def f(x: int):\n    pass\n", ["m.py:1 f"]),  # no return annotation
    ("def f(*args, **kwargs: int) -> None:\n    pass\n", ["m.py:1 f"]),
    ("def f(*, key) -> None:\n    pass\n", ["m.py:1 f"]),
    ("def f(x: int, /, *args: int, key: str = '', **kwargs: int) -> None:\n    pass\n", []),
    ("class C:\n    def __init__(self, x: int):\n        pass\n", ["m.py:2 C.__init__"]),
    ("class C:\n    def m(self, x: int) -> int:\n        return x\n    @classmethod\n"
     "    def c(cls) -> None:\n        pass\n    def _p(self, x):\n        pass\n", []),
    ("class C:\n    @staticmethod\n    def s(x) -> None:\n        pass\n", ["m.py:3 C.s"]),
    ("class F:\n    @staticmethod\n    def forward(ctx, x: int) -> int:\n        pass\n", []),
    ("class F:\n    @staticmethod\n    def forward(ctx, x) -> int:\n        pass\n", ["m.py:3 F.forward"]),
    ("class _C:\n    def m(self, x):\n        pass\n    class Inner:\n        def n(self, y):\n            pass\n", []),
    ("def f() -> None:\n    def inner(x):\n        pass\n", []),
    ("try:\n    import x\nexcept ImportError:\n    def g(y):\n        pass\n", ["m.py:4 g"]),
])
def test_checker_cases(source, expected):
    assert unannotated(source, "m.py") == expected
