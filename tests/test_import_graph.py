"""camelid's import graph, read from the source with ast: no cycle, and no private name imported across files.

Every import counts, at module level or inside a function (a function-level import only delays a
cycle to the first call). `import a.b.c` and `from a.b import c` depend on the module a.b.c (or on
a.b when c is a name in it); they also run the __init__ of every package above it that the
importer is not itself inside, so those count too: a package whose __init__ re-exports a module
that imports back through the package is a cycle. A module's own enclosing packages are not
counted (Python has initialised them before the module runs). Imports under `if TYPE_CHECKING:`
never run and are left out.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "camelid"


def _modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under root (a package is its __init__.py)."""
    mods = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _is_package(mods: dict[str, Path], name: str) -> bool:
    return mods[name].name == "__init__.py"


def _imports(mods: dict[str, Path], name: str) -> list[tuple[str, list[str], int]]:
    """(target module, names imported from it, line) for every import statement of module `name`."""
    tree = ast.parse(mods[name].read_text(), str(mods[name]))
    base = name if _is_package(mods, name) else name.rpartition(".")[0]
    found = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.split(".")[:len(base.split(".")) - node.level + 1]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module
            found.append((target, [a.name for a in node.names], node.lineno))
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node of the tree except those under `if TYPE_CHECKING:` (typing only, never executed)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(mods: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """Module -> the camelid modules whose import it triggers (see the module docstring)."""
    mods = mods or _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name in mods:
        own = set(_ancestors(name))
        for target, names, _ in _imports(mods, name):
            targets = {f"{target}.{n}" for n in names if f"{target}.{n}" in mods}
            if target in mods and (not names or len(targets) < len(names)):
                targets.add(target)  # names defined in the module itself (or a plain `import`)
            for t in list(targets):
                targets |= {a for a in _ancestors(t) if a in mods and a not in own}
            graph[name] |= {t for t in targets if t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def private_imports(mods: dict[str, Path] | None = None) -> list[str]:
    """`from camelid.x import _y` anywhere in camelid/, as 'file:line: module._y'."""
    mods = mods or _modules()
    bad = []
    for name in mods:
        for target, names, line in _imports(mods, name):
            if not target.startswith("camelid"):
                continue
            for n in names:
                if n.startswith("_") and not (n.startswith("__") and n.endswith("__")):
                    path = mods[name]
                    shown = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE.parent) else path
                    bad.append(f"{shown}:{line}: {target}.{n}")
    return bad


def test_camelid_has_no_import_cycle():
    found = cycles(import_graph())
    assert found == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_private_name_is_imported_across_files():
    found = [re.sub(r":\d+:", ":", f) for f in private_imports()]
    assert found == [], "private names imported from another file:\n" + "\n".join(found)


def test_formats_and_quant_depend_one_way():
    # file formats read and write quantized blocks (quant's registry and encoders); quant knows no file format
    graph = import_graph()
    back = sorted(f"{m} -> {t}" for m, ts in graph.items() if m.startswith("camelid.quant")
                  for t in ts if t.startswith("camelid.formats"))
    assert not back, "camelid.quant imports camelid.formats:\n" + "\n".join(back)


def test_kernel_files_never_import_each_other():
    # a kernel family imports only the shared layout/activation helpers and camelid.cpu
    graph = import_graph()
    shared = {"camelid.quant.kernels", "camelid.quant.kernels.layout", "camelid.quant.kernels.activations"}
    bad = sorted(f"{m} -> {t}" for m, ts in graph.items()
                 if m.startswith("camelid.quant.kernels.") and m not in shared
                 for t in ts if t.startswith("camelid.quant.kernels.") and t not in shared)
    assert not bad, "\n".join(bad)


def test_the_graph_sees_cycles_through_a_package_init(tmp_path):
    # pkg/__init__ re-exports pkg.a; pkg.a imports pkg.b; pkg.b imports a name from pkg: a cycle
    root = tmp_path / "camelid"
    (root / "pkg").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "pkg" / "__init__.py").write_text("from camelid.pkg.a import f\n")
    (root / "pkg" / "a.py").write_text("def f():\n    from .b import g\n    return g()\n")
    (root / "pkg" / "b.py").write_text("from camelid.pkg import f as _f\n\ndef g():\n    return 1\n")
    (root / "other.py").write_text("from camelid.pkg.b import g\n")
    graph = import_graph(_modules(root))
    assert graph["camelid.other"] == {"camelid.pkg.b", "camelid.pkg"}
    assert cycles(graph) == [["camelid.pkg", "camelid.pkg.a", "camelid.pkg.b"]]
    assert private_imports(_modules(root)) == []  # `f as _f` imports the public name f
