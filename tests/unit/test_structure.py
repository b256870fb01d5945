"""Issue 10, structure: the call-time core (``dustel.callpath``) imports no
shell and no engine library; the FastAGI shell, the outbound-ESL shell and
the controller import the core (and ``dustel.wire``), never each other;
gevent and asyncio's engine libraries stay in their own processes.  Read
from the source (every ``import``, module-level or inside a function)."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "dustel"
ENGINE_LIBS = {"gevent", "greenswitch", "panoramisk"}


def imports(path: Path) -> set[str]:
    """Absolute names of what a module imports (relative imports resolved)."""
    mod = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
    package = mod.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{a.name}" for a in node.names)
    return out


def modules(sub: str) -> list[Path]:
    return sorted((PKG / sub).glob("*.py"))


def hits(names: set[str], prefixes: set[str]) -> set[str]:
    return {n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)}


def test_the_core_imports_no_shell_and_no_engine_library() -> None:
    assert modules("callpath"), "dustel/callpath is the call-time core"
    for path in modules("callpath"):
        bad = hits(imports(path), ENGINE_LIBS | {"asyncio", "dustel.agi", "dustel.controller", "dustel.wire",
                                                 "dustel.queue", "dustel.fax", "dustel.commands"})
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_shells_and_the_controller_never_import_each_other() -> None:
    shells = {"fastagi.py": {"dustel.agi.esl_outbound", "dustel.agi.esl_main", "dustel.controller", "gevent",
                             "greenswitch"},
              "esl_outbound.py": {"dustel.agi.fastagi", "dustel.controller", "panoramisk"},
              "freeswitch.py": {"dustel.agi.fastagi", "dustel.agi.esl_outbound", "dustel.controller"} | ENGINE_LIBS,
              # the dialplan fetch server: asyncio with the FastAGI server's machinery (aio), no engine library
              "xmlcurl.py": {"dustel.agi.fastagi", "dustel.agi.esl_outbound", "dustel.agi.esl_main",
                             "dustel.controller"} | ENGINE_LIBS,
              "aio.py": {"dustel.agi.fastagi", "dustel.agi.esl_outbound", "dustel.agi.xmlcurl",
                         "dustel.controller"} | ENGINE_LIBS,
              "workers.py": {"dustel.agi.fastagi", "dustel.agi.esl_outbound", "dustel.agi.xmlcurl", "asyncio",
                             "dustel.controller"} | ENGINE_LIBS}
    for name, banned in shells.items():
        bad = hits(imports(PKG / "agi" / name), banned)
        assert not bad, f"agi/{name} imports {sorted(bad)}"
    for path in modules("controller"):
        bad = hits(imports(path), {"dustel.agi"})
        assert not bad, f"controller/{path.name} imports {sorted(bad)}"
    # the modules both kinds of process load keep the engine libraries out of their top level
    for sub in ("queue", "wire", "callpath"):
        for path in modules(sub):
            top = set()
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.Import):
                    top.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    top.add(node.module.split(".")[0])
            allowed = {"greenswitch", "gevent"} if path.name == "esl_reader.py" else set()
            assert not (top & ENGINE_LIBS) - allowed, f"{sub}/{path.name} imports {sorted(top & ENGINE_LIBS)}"


def test_the_portal_is_an_asyncio_process_without_gevent() -> None:
    """Issue 28: the Kundencenter (uvicorn, asyncio) imports no gevent,
    greenswitch or panoramisk — not in its own modules, and not through
    anything it loads (checked in a fresh interpreter)."""
    import subprocess
    import sys
    paths = sorted((PKG / "portal").rglob("*.py"))
    assert paths, "dustel/portal is the Kundencenter"
    for path in paths:
        bad = hits(imports(path), ENGINE_LIBS | {"dustel.agi", "dustel.controller"})
        assert not bad, f"portal/{path.name} imports {sorted(bad)}"
    code = ("import sys, dustel.portal.app, dustel.commands.portal_cmd; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('gevent', 'greenswitch', 'panoramisk')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
