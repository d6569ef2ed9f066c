"""Lower layers never import higher ones: the simulator and the pure measurements know nothing of the
deblender, the scoring harness or the pipelines (read from the sources, imports inside functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "lsst" / "meas" / "extensions" / "vae"
# Each part, and the parts above it that it must not import.
FORBIDDEN = {
    "measure": {"sim", "model", "deblend", "compare", "evaluate", "pipe", "cli"},
    "sim": {"model", "deblend", "compare", "evaluate", "pipe", "cli"},
    "deblend": {"compare", "evaluate", "pipe", "cli"},
    "compare": {"evaluate", "pipe", "cli"},
    "evaluate": {"pipe", "cli"},
}


def _imported_parts(path: Path) -> set[str]:
    """The package's top-level parts a module imports (absolute or relative)."""
    depth = len(path.relative_to(PACKAGE).parts) - 1
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb to the package root, then the first name is the part
                up = node.level - 1
                if up < depth:
                    continue  # within the same part
                if up == depth and node.module:
                    parts.add(node.module.split(".")[0])
                elif up == depth:
                    parts.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("lsst.meas.extensions.vae."):
                parts.add(node.module.split(".")[4])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("lsst.meas.extensions.vae."):
                    parts.add(alias.name.split(".")[4])
    return parts


def test_lower_layers_do_not_import_higher_ones():
    problems = []
    for part, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / part).rglob("*.py")):
            bad = _imported_parts(path) & forbidden
            if bad:
                problems.append(f"{path.relative_to(PACKAGE)} imports {sorted(bad)}")
    assert not problems, problems


def test_the_layer_check_sees_imports():
    # The scoring harness imports the deblender and the simulator (so the check reads what is there).
    assert {"deblend", "sim", "measure"} <= _imported_parts(PACKAGE / "evaluate" / "central.py")
