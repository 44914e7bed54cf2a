"""The package's layers point down: evaluation, data, models and porting never import training;
porting never imports the public inference API (detector); the maths never imports anything
above it. Walks every module's imports with ``ast`` (function-level imports included)."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "ssd_jax"

# (modules under ..., may not import ...)
RULES = [
    ("ssd_jax.evaluation", "ssd_jax.training"),
    ("ssd_jax.data", "ssd_jax.training"),
    ("ssd_jax.models", "ssd_jax.training"),
    ("ssd_jax.porting", "ssd_jax.training"),
    ("ssd_jax.porting", "ssd_jax.detector"),
    ("ssd_jax.data", "ssd_jax.evaluation"),
    ("ssd_jax.models", "ssd_jax.data"),
    ("ssd_jax.models", "ssd_jax.evaluation"),
    ("ssd_jax.models", "ssd_jax.porting"),
    ("ssd_jax.models", "ssd_jax.detector"),
]
# The maths: pure functions that depend on nothing above them.
MATHS = (
    "ssd_jax.anchors",
    "ssd_jax.box_coder",
    "ssd_jax.box_ops",
    "ssd_jax.assigner",
    "ssd_jax.losses",
    "ssd_jax.postprocess",
)


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: pathlib.Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1]
                    + ([base] if base else [])
                )
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("lower, upper", RULES)
def test_lower_layers_do_not_import_upper_ones(lower, upper):
    offenders = {
        m: sorted(i for i in imps if under(i, upper))
        for m, imps in MODULES.items()
        if under(m, lower)
    }
    offenders = {m: i for m, i in offenders.items() if i}
    assert not offenders, offenders


def test_the_maths_imports_only_the_maths():
    for m in MATHS:
        others = {
            i
            for i in MODULES[m]
            if under(i, "ssd_jax") and i != "ssd_jax" and not any(under(i, a) for a in MATHS)
        }
        assert not others, (m, others)


def test_the_rules_see_the_modules():
    """The walk finds the package (a rule over an empty set would pass vacuously)."""
    assert {
        "ssd_jax.evaluation.evaluate",
        "ssd_jax.porting.identify",
        "ssd_jax.models.ssd",
        "ssd_jax.data.pipeline",
        "ssd_jax.training.loop",
    } <= set(MODULES)
    assert "ssd_jax.training.step" in MODULES["ssd_jax.training.loop"]
