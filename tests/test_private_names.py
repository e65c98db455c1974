"""No code reaches another package's private (``_x``) names: a package's face is its public names.

Checked statically over every module of cocoon_node, netsim, bench and tests (``just lint`` runs this file
beside the import contracts): ``from M import _x``, imports of private modules (``M._mod``) and attribute
reads ``mod._x`` through an imported module, wherever the name is defined outside the importer's package.

A package is a concern: ``cocoon_node.<pkg>`` (a sub-package of the node, with its own sub-packages), a
module at the top of cocoon_node (``cocoon_node.cli``), ``netsim``, ``bench`` or ``tests.<dir>``. One
allowance, for white-box tests: ``tests/<pkg>/`` may reach the privates of the package it tests
(``cocoon_node.<pkg>``, ``netsim`` for ``tests/netsim``, the suite's own ``tests/conftest.py`` for
``tests/meta``), never those of a third package or of another test directory. A line that must reach one
anyway says why in a ``# private-name-ok: <reason>`` comment on it or on the line above (one today:
bench_wire's path for the commit before typed messages, which had no public name for what it measures).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("cocoon_node", "netsim", "bench", "tests")
WAIVER = "# private-name-ok:"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _package(dotted: str) -> str:
    """The concern that owns module ``dotted`` (see the module docstring)."""
    parts = dotted.split(".")
    if parts[0] in ("cocoon_node", "tests") and len(parts) > 1:
        head = ".".join(parts[:2])
        return head if (ROOT / parts[0] / parts[1]).is_dir() or parts[0] == "cocoon_node" else parts[0]
    return parts[0]


def _may_reach(importer: str, owner: str) -> bool:
    mine = _package(importer)
    if mine == owner:
        return True
    parts = importer.split(".")
    if parts[0] == "tests" and len(parts) > 2:  # tests/<pkg>/...: white-box tests of <pkg>
        tested = {"netsim": "netsim", "meta": "tests"}.get(parts[1], f"cocoon_node.{parts[1]}")
        return owner == tested
    return False


def _resolve(importer: str, is_package: bool, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([module] if module else [])])


def _ours(dotted: str) -> bool:
    return dotted.split(".")[0] in SCANNED


def violations_in(path: Path) -> list[str]:
    """``path:line: what`` for each private name of another package that ``path`` reaches."""
    return violations(_module_name(path), path.name == "__init__.py", path.read_text(), str(path.relative_to(ROOT)))


def violations(importer: str, is_package: bool, source: str, label: str) -> list[str]:
    """``label:line: what`` for each private name of another package that module ``importer`` reaches."""
    tree = ast.parse(source, filename=label)
    lines = source.splitlines()
    waived = {i + 1 for i, line in enumerate(lines) if WAIVER in line}
    waived |= {i + 1 for i in waived}  # a waiver on its own line covers the next one
    out: list[str] = []
    module_aliases: dict[str, str] = {}  # local name -> module it is bound to

    def flag(node: ast.AST, what: str, owner_module: str) -> None:
        if getattr(node, "lineno", 0) in waived:
            return
        if _ours(owner_module) and not _may_reach(importer, _package(owner_module)):
            out.append(f"{label}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if any(_private(p) for p in alias.name.split(".")):
                    flag(node, f"import {alias.name}", alias.name)
                if alias.asname:
                    module_aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            src = _resolve(importer, is_package, node.module, node.level)
            if any(_private(p) for p in src.split(".")):
                flag(node, f"from {src} import ...", src)
            for alias in node.names:
                if _private(alias.name):
                    flag(node, f"from {src} import {alias.name}", src)
                full = f"{src}.{alias.name}"
                if _ours(full) and _is_module(full):
                    module_aliases[alias.asname or alias.name] = full
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name):
            target = module_aliases.get(node.value.id)
            if target is not None:
                flag(node, f"{node.value.id}._{node.attr.lstrip('_')} ({target})", target)
    return out


def test_no_code_reaches_another_packages_private_names() -> None:
    found = [v for top in SCANNED for path in sorted((ROOT / top).rglob("*.py")) for v in violations_in(path)]
    assert found == [], "private names of another package:\n" + "\n".join(found)


def test_the_check_sees_each_kind_of_private_reach() -> None:
    """The checker itself: each way of reaching a private name is caught, the allowed ones are not."""
    source = (
        "from cocoon_node.payments.chain.ton import _fmt, stack_int\n"
        "from cocoon_node.attestation import _snp_chain\n"
        "from cocoon_node import cluster\n"
        "cluster._drain = stack_int\n"
        "from netsim.rogue import _config\n"  # netsim's own: allowed
        "from ._x import y\n"  # netsim._x: netsim's own
        "from cocoon_node.mesh.host import _only_shutdown_races  # private-name-ok: a reason\n"
    )
    found = violations("netsim.probe", False, source, "probe.py")
    assert [f.split(": ", 1)[1] for f in found] == [
        "from cocoon_node.payments.chain.ton import _fmt",
        "from cocoon_node.attestation import _snp_chain",
        "cluster._drain (cocoon_node.cluster)",
    ]
    assert _may_reach("tests.attestation.test_snp_policy", "cocoon_node.attestation")
    assert not _may_reach("tests.netsim.test_rogue", "tests.payments")
    assert not _may_reach("tests.netsim.test_rogue", "cocoon_node.payments")
