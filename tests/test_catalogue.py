"""The probe catalogue is one list, and the package has no import circle."""

import ast
from pathlib import Path

import mechmon
from mechmon.probes import PROBES

PACKAGE = Path(mechmon.__file__).parent


def test_the_type_checking_imports_name_the_catalogue_and_every_entry_is_a_public_registered_probe():
    tree = ast.parse((PACKAGE / "probes" / "__init__.py").read_text())
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    imported = {a.name: n.module.rsplit(".", 1)[-1] for n in guarded.body for a in n.names}
    assert imported == PROBES, "the TYPE_CHECKING block of mechmon/probes/__init__.py must import each PROBES entry"
    names = [getattr(mechmon, cls).name for cls in PROBES]
    assert sorted(names) == mechmon.list_probes() and len(set(names)) == len(names)
    assert set(PROBES) <= set(mechmon.__all__)


def _imports(path: Path) -> set[str]:
    """The mechmon modules a file imports, at module level or inside functions (both run)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mechmon"):
            for alias in node.names:  # `from mechmon.x import y`: the module x.y if there is one, else x
                sub = f"{node.module}.{alias.name}"
                found.add(sub if _path(sub) is not None else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mechmon")}
    return found


def _path(module: str) -> Path | None:
    base = PACKAGE.parent.joinpath(*module.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def test_no_module_of_the_package_imports_one_that_imports_it_back():
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in PACKAGE.rglob("*.py")}  # fmt: skip
    # a package's __init__ re-exporting its own modules is not a circle: the edges from a package to its children
    graph = {m: {i for i in _imports(p) if i in modules} for m, p in modules.items()}
    circles, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            circles.append(path[path.index(module) :] + [module])
            return
        if module in done:
            return
        for nxt in sorted(graph[module]):
            visit(nxt, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert not circles, "\n".join(" -> ".join(c) for c in circles)
