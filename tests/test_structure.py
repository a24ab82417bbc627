"""The shape of the code: no import cycles among planc/ and runtime/ modules, no module reaching for
another's private names, the runtime standing without the compiler, and each vocabulary list
(source formats, TP styles, kernel ops, ...) written once, in runtime/vocab.py."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import runtime.vocab as V
from planc import schema as S

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("planc", "runtime")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__)."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in a module, at any depth
    (imports inside functions count: they run too), relative imports resolved."""
    path, is_pkg = MODULES[name]
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            out.append((target, [a.name for a in node.names], node.lineno))
    return out


def _graph() -> dict[str, set[str]]:
    """module -> the planc/runtime modules it imports (`from pkg import sub` imports pkg.sub)."""
    graph = {}
    for name in MODULES:
        deps = set()
        for target, names, _ in _imports(name):
            if target in MODULES:
                deps.add(target)
            deps |= {f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES}
        graph[name] = deps - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected component (Tarjan)."""
    index, low, stack, on_stack, comps = {}, {}, [], set(), []

    def visit(v):
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
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in comps:  # the shortest way from the component's first module back to itself
        start = min(comp)
        came_from, queue = {start: None}, [start]
        for v in queue:
            if start in graph[v]:
                path = [v]
                while came_from[path[-1]] is not None:
                    path.append(came_from[path[-1]])
                cycles.append(path[::-1] + [start])
                break
            for w in sorted(graph[v] & comp):
                if w not in came_from:
                    came_from[w] = v
                    queue.append(w)
    return cycles


def test_cycle_finder_names_a_cycle():
    g = {"a": {"b", "d"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"b"}, "f": {"a"}}
    assert _cycles(g) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_graph_sees_relative_and_function_level_imports():
    g = _graph()
    assert "planc.frontend" in g["planc.cli"]  # `from .frontend import check_plan` inside cmd_check
    assert "runtime.vocab" in g["runtime.data.sources"]  # `from ..vocab import ...`
    assert "planc.checks.mesh" in g["planc.checks"]  # `from . import checkpoint, data, ...` in passes()


def _private_uses(name: str) -> list[str]:
    """`from planc.x import _y`, or `x._y` on a planc/runtime module bound by an import."""
    path, _ = MODULES[name]
    bad, aliases = [], set()
    for target, names, line in _imports(name):
        for n in names:
            if f"{target}.{n}" in MODULES:
                aliases.add(n)
            elif target in MODULES and n.startswith("_") and not n.startswith("__"):
                bad.append(f"{path.relative_to(REPO)}:{line}: imports {target}.{n}")
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.asname and a.name in MODULES}
        elif isinstance(node, ast.ImportFrom):
            aliases |= {a.asname for a in node.names if a.asname}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            bad.append(f"{path.relative_to(REPO)}:{node.lineno}: uses {node.value.id}.{node.attr}")
    return bad


def test_no_module_imports_a_private_name_of_another():
    bad = [b for name in MODULES for b in _private_uses(name)]
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_the_runtime_does_not_import_the_compiler():
    bad = [f"{n} imports {t}" for n in MODULES if n.startswith("runtime")
           for t, _, _ in _imports(n) if t == "planc" or t.startswith("planc.")]
    assert not bad, bad


def test_the_vocabulary_and_the_schema_import_without_torch():
    code = ("import sys, runtime.vocab, planc.schema\n"
            "heavy = sorted(m for m in ('torch', 'numpy', 'transformers') if m in sys.modules)\n"
            "assert not heavy, heavy")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def _choices(block: str, key: str, stmt: str | None = None):
    spec = S.BLOCKS[block]
    keys = spec.keys if stmt is None else (spec.stmts[stmt].body or spec.stmts[stmt].options)
    return keys[key].choices


def test_the_schema_offers_what_the_runtime_implements():
    assert _choices("model", "dtype") == V.DTYPES
    assert _choices("model", "attention") == V.ATTENTIONS
    assert _choices("mesh", "device") == V.DEVICES
    assert S.PARALLELIZE.stmts["tp"].styles == V.TP_STYLES
    assert _choices("data", "format", "source") == V.SOURCE_FORMATS
    assert _choices("data", "kind", "source") == V.SOURCE_KINDS
    assert _choices("data", "pack") == V.PACKS
    assert _choices("data", "chat_template") == V.ANY_CHAT_TEMPLATE
    assert _choices("data", "truncation") == V.TRUNCATIONS
    assert _choices("data", "on_bad_record") == V.BAD_RECORD_POLICIES
    assert _choices("train", "schedule") == V.SCHEDULES
    assert _choices("train", "param", "mixed_precision") == _choices("train", "reduce", "mixed_precision") == V.DTYPES
    assert tuple(S.KERNELS.keys) == V.KERNEL_OPS
    assert all(k.choices == V.KERNEL_BACKENDS + ("off",) for k in S.KERNELS.keys.values())


def test_the_runtime_implements_its_vocabulary():
    import runtime.model
    from runtime.data.chat import template_for

    assert tuple(runtime.model.DTYPES) == V.DTYPES + V.PROOF_DTYPES  # the one list that also needs torch's dtypes

    class Tok:
        chat_template = "{{ messages }}"

    assert all(template_for(Tok(), name) for name in V.CHAT_TEMPLATES)
    from runtime.data.multimodal.template import template_for as vl_template_for

    assert all(vl_template_for(Tok(), name) for name in V.VL_CHAT_TEMPLATES)


_VOCAB = {name: value for name, value in vars(V).items() if isinstance(value, tuple)}
# literals of a vocabulary list that are not yet replaced because another change owns the file
_KNOWN: set = set()  # (file, vocabulary) pairs allowed to spell a list out


def test_each_vocabulary_list_is_written_once():
    """No tuple/list/set literal of planc/, runtime/ or tests/ spells out a list of runtime/vocab.py."""
    found = []
    for path in sorted(p for d in (*PACKAGES, "tests") for p in (REPO / d).rglob("*.py")):
        rel = str(path.relative_to(REPO))
        if rel == "runtime/vocab.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.Tuple, ast.List, ast.Set)) or len(node.elts) < 2:
                continue
            if not all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                continue
            words = {e.value for e in node.elts}
            for name, value in _VOCAB.items():
                if words == set(value) and (rel, name) not in _KNOWN:
                    found.append(f"{rel}:{node.lineno}: {sorted(words)} is runtime.vocab.{name}")
    assert not found, "\n".join(found)


def test_every_rule_the_code_reports_is_registered():
    """`Diagnostic("rule", ...)`, `ctx.error("rule", ...)`, `ctx.warn(...)`, `self.err(...)`: each
    rule name written in planc/ is in planc/rules.py (so in docs/rules.md, tests/test_docs.py)."""
    from planc.rules import all_rules

    rules, found = all_rules(), []
    for path in sorted((REPO / "planc").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                continue
            f = node.func
            called = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if called == "Diagnostic" or (called in ("error", "warn", "err") and isinstance(f, ast.Attribute)):
                found.append((f"{path.relative_to(REPO)}:{node.lineno}", node.args[0].value))
    assert len(found) > 100  # the scan sees the passes' ctx.error/ctx.warn calls
    unknown = [f"{where}: {rule}" for where, rule in found if rule not in rules]
    assert not unknown, "rules reported but not registered:\n" + "\n".join(unknown)
