"""The package's imports only point down its layers (docs/code-map.md): every `import hpa_tf...` of every
module, lazy ones inside functions included, parsed from the source."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hpa_tf"
# Lowest first; a module may import its own layer and the layers below it.
LAYERS = [
    {"errors", "labels", "atomic", "parallel", "metrics", "schedules", "output"},
    {"config"},
    {"layout"},
    {"data", "embeddings", "viz"},
    {"models", "losses"},
    {"training"},
    {"inference"},
    {"curation"},
    {"export", "bioimage"},
    {"cli"},
]


def layer_of(module: str) -> int:
    """The layer of a dotted module name inside the package (hpa_tf.data.io -> the data layer)."""
    top = module.split(".")[1] if module.count(".") else ""
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise KeyError(f"{module} is in no layer: add it to LAYERS and to the code map (docs/code-map.md)")


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, module) of every hpa_tf module `path` imports, at any depth of its code, sorted."""
    found = []
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("hpa_tf.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importing module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("hpa_tf.") or target == "hpa_tf":
                # `from hpa_tf import viz` imports the module hpa_tf.viz
                names = [f"{target}.{a.name}" for a in node.names] if target == "hpa_tf" else [target]
                found += [(node.lineno, name) for name in names]
    return sorted(found)


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_module_is_in_a_layer():
    for path in modules():
        layer_of(module_name(path))


def test_imports_only_point_down():
    upward = []
    for path in modules():
        own = layer_of(module_name(path))
        for line, target in imported(path):
            if layer_of(target) > own:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


def test_the_check_finds_an_upward_import(tmp_path):
    """The parser sees a lazy import inside a function, a relative one and `from hpa_tf import x`."""
    root = tmp_path / "hpa_tf"
    (root / "data").mkdir(parents=True)
    source = root / "data" / "thing.py"
    source.write_text("def f():\n    from hpa_tf.inference import submission\n\nfrom ..training import loop\n"
                      "from hpa_tf import export\n")
    assert module_name(source, root) == "hpa_tf.data.thing"
    found = imported(source, root)
    assert found == [(2, "hpa_tf.inference"), (4, "hpa_tf.training"), (5, "hpa_tf.export")]
    assert all(layer_of(m) > layer_of("hpa_tf.data.thing") for _, m in found)
    with pytest.raises(KeyError, match="in no layer"):
        layer_of("hpa_tf.nowhere")


def code_map() -> str:
    """The "Code map" section of the documentation (docs/code-map.md)."""
    page = (PACKAGE.parent / "docs" / "code-map.md").read_text()
    return page.split("\n## Code map\n", 1)[1].split("\n## ", 1)[0]


def test_the_code_map_names_every_module_and_only_modules():
    """Every module is in the map (itself or its package, e.g. data.synthetic for its plan, render, ...),
    and every dotted name in the map's module column exists."""
    rows = [line.split("|") for line in code_map().splitlines() if line.startswith("| ")]  # header first
    named = {name for row in rows[1:] for name in re.findall(r"`([a-z_.]+)`", row[2])}
    for name in named:
        path = PACKAGE.joinpath(*name.split("."))
        assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), name
    for path in (p for p in modules() if p.name != "__init__.py"):  # a package: by its modules
        dotted = module_name(path).removeprefix("hpa_tf.")
        parents = [".".join(dotted.split(".")[:n]) for n in range(1, dotted.count(".") + 2)]
        assert any(p in named for p in parents), f"{dotted} is not in the code map (docs/code-map.md)"
