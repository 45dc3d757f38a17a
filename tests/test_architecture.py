"""The import picture of quax_faust/, spark_batch/ and dashboard/ points one way: edges -> core.

Every module is parsed with ast, none is imported (fast, no broker). An import counts wherever it is
written: at the top, inside a function (a lazy import still is a dependency, and often hides a
cycle), or under ``if TYPE_CHECKING:`` (left out of the cycle check only: it never runs).

The tiers (module-name prefix -> tier, rank; a tier imports only lower ranks, or the same rank one
way, as MAY_IMPORT lists):

    0  core          quax_faust.core: wire, dsp, accumulators, daq, synth, errors; pure
    1  settings      quax_faust.settings: imports nothing of ours
    1  connection    quax_faust.connection: settings only; quax_faust.record_crc (the consumers' CRC check),
                     quax_faust.fetch_reads (the consumers' socket reads)
    1  client        quax_faust.client (HTTP client of the workers' views): settings only
    1  ops_files     quax_faust.ops_files (where ops/ is, checkout or wheel): nothing of ours
    1  search        quax_faust.search: core only (no Faust, no Kafka, no settings object)
    2  exports       quax_faust.exports (run exports: h5, npz, csv; load_run; campaign files): core, search,
                     settings, client
    2  stream        quax_faust.stream (Faust app, views, ...): core, search, settings, connection
    3  campaign      quax_faust.campaign (the live campaign: a consumer of the spectra topic, its web
                     service): core, search, settings, connection, client
    3  ingest        quax_faust.ingest (producer): core, stream, settings, connection
    4  tools         quax_faust.tools (cli, launch, bench): any of quax_faust; nothing imports it
    5  spark_batch   quax_faust.core.wire/errors/run_meta, search, exports, settings, connection, client only
    5  dashboard     client, settings, search, core only

The last four tests import the runtime modules (all of quax_faust but tools/), the app first, in
one fresh interpreter, and check that each imports, and that importing changes nothing: not the
environment, not Faust's classes (the patches of stream/faust_fixes.py are applied by install(),
called by the worker command, never by an import), and that no module of ours reads the
environment while it is imported (settings are read by a command, then passed down).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOTS = ("quax_faust", "spark_batch", "dashboard")
MAX_LINES = 350
FAUST_FIXES = "quax_faust.stream.faust_fixes"
APP = "quax_faust.stream.app"

TIER_OF_PREFIX = {
    "quax_faust.core": "core",
    "quax_faust.settings": "settings",
    "quax_faust.connection": "connection",
    "quax_faust.record_crc": "connection",
    "quax_faust.fetch_reads": "connection",
    "quax_faust.client": "client",
    "quax_faust.ops_files": "ops_files",
    "quax_faust.search": "search",
    "quax_faust.search_settings": "search_settings",
    "quax_faust.exports": "exports",
    "quax_faust.stream": "stream",
    "quax_faust.campaign": "campaign",
    "quax_faust.ingest": "ingest",
    "quax_faust.tools": "tools",
    "spark_batch": "spark_batch",
    "dashboard": "dashboard",
}
RANK = {"core": 0, "settings": 1, "connection": 1, "client": 1, "ops_files": 1, "search": 1,
        "search_settings": 2, "exports": 2, "stream": 3, "campaign": 4, "ingest": 4, "tools": 5, "spark_batch": 6, "dashboard": 6}
QUAX_TIERS = frozenset(t for prefix, t in TIER_OF_PREFIX.items() if prefix.startswith("quax_faust."))
MAY_IMPORT: dict[str, frozenset[str]] = {  # besides itself; a tier name, or a module and what is below it
    "core": frozenset(),
    "settings": frozenset(),
    "connection": frozenset({"settings"}),
    "client": frozenset({"settings"}),
    "ops_files": frozenset(),
    "search": frozenset({"core"}),
    "search_settings": frozenset({"search", "settings"}),  # the one bridge: SearchConfig from Settings
    "exports": frozenset({"core", "search", "settings", "client"}),  # run and campaign files (no Kafka)
    "stream": frozenset({"core", "search", "search_settings", "settings", "connection"}),
    "ingest": frozenset({"core", "stream", "settings", "connection"}),
    "campaign": frozenset({"core", "search", "settings", "connection", "client"}),
    "tools": QUAX_TIERS,
    "spark_batch": frozenset({"quax_faust.core.wire", "quax_faust.core.errors", "quax_faust.core.run_meta",
                              "search", "exports", "settings", "connection", "client"}),
    "dashboard": frozenset({"client", "settings", "search", "search_settings", "core"}),
}
KAFKA_AND_FAUST = frozenset({"faust", "mode", "aiokafka", "confluent_kafka", "kafka", "pyspark"})
MUST_NOT_IMPORT = {  # tier -> libraries and modules (with what is below them) it never imports
    "core": KAFKA_AND_FAUST | {"prometheus_client", "quax_faust.settings"},
    "search": KAFKA_AND_FAUST | {"quax_faust.settings"},
}


# ---------------------------------------------------------------------------------------------
# The module graph, from the source

@dataclass(frozen=True)
class Import:
    importer: str  # module name
    path: str  # file, relative to the repo
    line: int
    target: str  # a module of ours (longest existing module), or the name as written if not ours
    written: str  # the import as written, for the messages
    ours: bool
    exists: bool  # ours, and the module named exists
    problem: str | None  # ours, and it names no module or a name its module does not define
    type_only: bool  # under `if TYPE_CHECKING:`

    def __str__(self) -> str:
        return f"{self.path}:{self.line} `{self.written}`"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the three packages: name -> file."""
    found = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[module_name(path)] = path
    return found


@cache
def top_level_names(module: str) -> frozenset[str] | None:
    """Names a module binds, anywhere in it (lenient); None if it may bind any (`import *`, `__getattr__`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(modules()[module].read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return None if "__getattr__" in names else frozenset(names)


def defines(module: str, name: str) -> bool:
    names = top_level_names(module)
    return names is None or name in names


def tier_of(module: str) -> str | None:
    matches = [p for p in TIER_OF_PREFIX if module == p or module.startswith(p + ".")]
    return TIER_OF_PREFIX[max(matches, key=len)] if matches else None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _ours(name: str) -> bool:
    return name.split(".")[0] in ROOTS


def _resolve(name: str) -> str:
    """The longest existing module of ours that `name` is or is inside (the package, for a module
    that does not exist)."""
    parts = name.split(".")
    return next((m for k in range(len(parts), 0, -1) if (m := ".".join(parts[:k])) in modules()), name)


@cache
def imports_of(module: str) -> tuple[Import, ...]:
    path = modules()[module]
    rel = str(path.relative_to(REPO))
    tree = ast.parse(path.read_text(), filename=rel)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def add(node, target: str, written: str, type_only: bool, name: str | None = None) -> None:
        """An import of module `target` (and of `name` from it, for `from target import name`)."""
        if not _ours(target):
            found.append(Import(module, rel, node.lineno, target, written, False, False, None, type_only))
            return
        resolved = _resolve(target)
        problem = None
        if resolved != target:
            problem = f"no module {target}"
        elif name is not None and not defines(target, name):
            problem = f"{target} defines no {name} (and there is no module {target}.{name})"
        found.append(Import(module, rel, node.lineno, resolved, written, True, resolved == target, problem,
                            type_only))

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_only)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node, alias.name, f"import {alias.name}", type_only)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            written = f"from {'.' * node.level}{node.module or ''} import "
            if source == "__future__":
                return
            known = modules()
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if _ours(source) and sub in known:  # from quax_faust.core import wire
                    add(node, sub, written + alias.name, type_only)
                else:  # from quax_faust.core.wire import SliceBatch: SliceBatch must be there
                    add(node, source, written + alias.name, type_only, None if alias.name == "*" else alias.name)
        for child in ast.iter_child_nodes(node):
            visit(child, type_only)

    visit(tree, False)
    return tuple(found)


def all_imports() -> list[Import]:
    return [imp for module in modules() for imp in imports_of(module)]


def _allowed(importer_tier: str, target: str) -> bool:
    target_tier = tier_of(target)
    if target_tier == importer_tier:
        return True
    for allowed in MAY_IMPORT[importer_tier]:
        if allowed == target_tier or target == allowed or target.startswith(allowed + "."):
            return True
    return False


def _report(problems: list[str], headline: str) -> str:
    return headline + "\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------------------------------------
# The rules

def test_the_tier_table_itself_points_one_way():
    """Every allowed import goes to a lower rank, or to the same rank one way only."""
    assert set(RANK) == set(MAY_IMPORT) == set(TIER_OF_PREFIX.values())
    problems = []
    for tier, allowed in MAY_IMPORT.items():
        for target in allowed:
            target_tier = target if target in RANK else tier_of(target)
            if target_tier is None:
                problems.append(f"{tier} may import {target}, which has no tier")
            elif RANK[target_tier] > RANK[tier]:
                problems.append(f"{tier} (rank {RANK[tier]}) may import {target} (rank {RANK[target_tier]})")
            elif RANK[target_tier] == RANK[tier] and target_tier != tier and tier in MAY_IMPORT[target_tier]:
                problems.append(f"{tier} and {target_tier} may import each other")
    assert not problems, _report(problems, "MAY_IMPORT does not point one way:")


def test_every_module_has_a_tier():
    loose = [f"{module} ({path.relative_to(REPO)})" for module, path in modules().items()
             if module not in ROOTS and tier_of(module) is None]
    assert not loose, _report(loose, "modules in no tier: put them in a tier's folder, or give them a "
                                     "row in TIER_OF_PREFIX, RANK and MAY_IMPORT of tests/test_architecture.py:")


def test_every_import_of_ours_names_an_existing_module():
    """A module split or renamed leaves no import of the old name behind."""
    stale = [f"{imp}: {imp.problem}" for imp in all_imports() if imp.problem]
    assert not stale, _report(stale, "imports of modules or names that do not exist (left by a split or rename?):")


def test_each_tier_imports_only_the_tiers_below_it():  # (a)
    problems = []
    for imp in all_imports():
        tier = tier_of(imp.importer)
        if not imp.exists or tier is None or imp.target in ROOTS:
            continue
        if not _allowed(tier, imp.target):
            target_tier = tier_of(imp.target)
            allowed = ", ".join(sorted(MAY_IMPORT[tier])) or "nothing of ours"
            problems.append(f"{imp}: {tier} (rank {RANK[tier]}) imports {imp.target} "
                            f"({target_tier}, rank {RANK.get(target_tier, '?')}); {tier} may import {allowed}")
    assert not problems, _report(problems, "imports against the tiers:")


def test_nothing_outside_tools_imports_tools():  # (b)
    problems = [f"{imp}: {imp.importer} is not in quax_faust/tools/ (the harness: nothing at run time imports it)"
                for imp in all_imports()
                if imp.ours and tier_of(imp.target) == "tools" and tier_of(imp.importer) != "tools"]
    assert not problems, _report(problems, "imports of the harness (quax_faust.tools) from outside it:")


def test_quax_faust_imports_neither_spark_batch_nor_dashboard():  # (c)
    problems = [f"{imp}: {imp.importer} imports {imp.target} (spark_batch and dashboard import quax_faust: "
                f"a cycle between the packages)"
                for imp in all_imports()
                if imp.importer.split(".")[0] == "quax_faust" and imp.target.split(".")[0] in ("spark_batch", "dashboard")]
    assert not problems, _report(problems, "quax_faust importing the packages built on it:")


def test_core_and_search_import_no_kafka_faust_or_settings():  # (d)
    problems = []
    for imp in all_imports():
        tier = tier_of(imp.importer)
        for banned in MUST_NOT_IMPORT.get(tier, ()):
            if imp.target == banned or imp.target.startswith(banned + "."):
                problems.append(f"{imp}: {tier} imports {banned}")
    assert not problems, _report(problems, "core must be pure and search Kafka-free and settings-free "
                                           "(pass them the few numbers they need):")


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module, or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
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
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_strongly_connected_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _strongly_connected(graph) == [["a", "b", "c"], ["e"]]


def test_no_import_cycles():  # (e)
    graph: dict[str, set[str]] = {m: set() for m in modules()}
    where: dict[tuple[str, str], Import] = {}
    for imp in all_imports():
        # A package's __init__ is imported on the way to its modules: not an edge of the design.
        if imp.exists and not imp.type_only and imp.target != imp.importer \
                and modules()[imp.target].name != "__init__.py":
            graph[imp.importer].add(imp.target)
            where.setdefault((imp.importer, imp.target), imp)
    cycles = []
    for component in _strongly_connected(graph):
        edges = [str(where[(a, b)]) for a in component for b in sorted(graph[a]) if b in component]
        cycles.append(" <-> ".join(component) + "\n    " + "\n    ".join(edges))
    assert not cycles, _report(cycles, "import cycles (modules that import each other, directly or round):")


def _reason_for_length(doc: str) -> bool:
    """The module docstring says it is "over 350 lines", in a sentence that also says why."""
    flat = " ".join(doc.split())
    for sentence in re.findall(r"[^.]*over 350 lines[^.]*", flat, flags=re.IGNORECASE):
        if len(sentence.split()) >= 3 + 4:
            return True
    return False


def test_modules_fit_in_350_lines_or_say_why():  # (f)
    problems = []
    for module, path in modules().items():
        if module.split(".")[0] != "quax_faust":
            continue
        source = path.read_text()
        lines = len(source.splitlines())
        if lines > MAX_LINES and not _reason_for_length(ast.get_docstring(ast.parse(source)) or ""):
            problems.append(f"{path.relative_to(REPO)}: {lines} lines")
    assert not problems, _report(problems, f"modules over {MAX_LINES} lines whose docstring does not say "
                                           f"\"over {MAX_LINES} lines\" and why (split them by what they hold):")


def test_reason_for_length():
    assert _reason_for_length("Decoders.\n\nIt is over 350 lines: one format, one reader, one set of checks.")
    assert not _reason_for_length("Decoders. Over 350 lines.")
    assert not _reason_for_length("Decoders, long because they are.")


# ---------------------------------------------------------------------------------------------
# Importing has no side effects (a fresh interpreter)

def patched_by_install() -> list[tuple[str, str, str]]:
    """(library module, class, attribute) that faust_fixes.install() assigns, read from its source."""
    path = modules()[FAUST_FIXES]
    tree = ast.parse(path.read_text())
    origin = {alias.asname or alias.name: node.module for node in tree.body if isinstance(node, ast.ImportFrom)
              and node.module and not _ours(node.module) for alias in node.names}
    install = next((node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "install"), None)
    assert install is not None, f"{path.relative_to(REPO)} has no install(): update this test"
    targets = []
    for node in ast.walk(install):
        for target in getattr(node, "targets", ()):
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id in origin:
                targets.append((origin[target.value.id], target.value.id, target.attr))
    assert targets, f"{path.relative_to(REPO)}: install() assigns no attribute of an imported class; update this test"
    return targets


def runtime_modules() -> list[str]:
    names = sorted(m for m, p in modules().items()
                   if m.startswith("quax_faust.") and p.name != "__init__.py" and tier_of(m) not in (None, "tools"))
    return sorted(names, key=lambda m: m != APP)  # the app first: what importing it alone does


# Run with `python -c` in a fresh interpreter; reads {"modules", "patched", "repo", "fixes", "roots"} from the
# first line of stdin (not argv: importing faust reads sys.argv), prints one line "RESULT <json>".
PROBE = r'''
import importlib, json, os, sys, traceback
from collections.abc import MutableMapping
spec = json.loads(sys.stdin.readline())
REPO = spec["repo"]
OURS = tuple(os.path.join(REPO, root) + os.sep for root in spec["roots"])  # not .venv/
sys.path.insert(0, REPO)
real = os.environ
reads = []

PASS_THROUGH = {"os.py", "_collections_abc.py", "<frozen os>", "<frozen _collections_abc>"}  # getenv, get

class Recording(MutableMapping):
    """os.environ, noting each read made directly by a file of ours."""
    def _note(self, key):
        frame = sys._getframe(2)
        while frame and os.path.basename(frame.f_code.co_filename) in PASS_THROUGH:
            frame = frame.f_back
        if frame and frame.f_code.co_filename.startswith(OURS) and current:
            top = frame  # the statement of ours run at import time that led to the read
            while top and not (top.f_code.co_name == "<module>" and top.f_code.co_filename.startswith(OURS)):
                top = top.f_back
            at = f"{os.path.relpath(top.f_code.co_filename, REPO)}:{top.f_lineno}" if top else "?"
            reads.append([current[-1], at, f"{os.path.relpath(frame.f_code.co_filename, REPO)}:{frame.f_lineno}", key])
    def __getitem__(self, key):
        self._note(key)
        return real[key]
    def __contains__(self, key):
        self._note(key)
        return key in real
    def __setitem__(self, key, value): real[key] = value
    def __delitem__(self, key): del real[key]
    def __iter__(self): return iter(real)
    def __len__(self): return len(real)
    def copy(self): return dict(real)

def patched():
    out = {}
    for module, cls, attr in spec["patched"]:
        klass = getattr(sys.modules[module], cls, None) if module in sys.modules else None
        if klass is None:
            continue  # not even imported: not patched
        fn = klass.__dict__.get(attr)
        code = getattr(fn, "__code__", None)
        home = os.path.dirname(sys.modules[klass.__module__].__file__)
        if code is None or not code.co_filename.startswith(home + os.sep):
            out[f"{cls}.{attr}"] = getattr(code, "co_filename", repr(fn))
    return out

current = []
result = {"env": [], "patched": [], "failed": [], "reads": reads}
os.environ = Recording()
for name in spec["modules"]:
    before = dict(real)
    current.append(name)
    try:
        importlib.import_module(name)
    except BaseException:
        result["failed"].append([name, traceback.format_exc(limit=4)])
    current.pop()
    after = dict(real)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        result["env"].append([name, {k: [before.get(k), after.get(k)] for k in changed}])
    now = patched()
    if now and not result["patched"]:
        result["patched"] = [name, now]
os.environ = real
# The check can see a patch: install() makes it (if this Faust is the one the patches are for).
try:
    importlib.import_module(spec["fixes"]).install()
    result["install_detected"] = sorted(patched())
except BaseException as exc:
    result["install_detected"] = f"install() raised {exc!r}"
print("RESULT " + json.dumps(result))
'''


@pytest.fixture(scope="module")
def import_probe() -> dict:
    spec = {"modules": runtime_modules(), "patched": patched_by_install(), "repo": str(REPO), "fixes": FAUST_FIXES,
            "roots": ROOTS}
    done = subprocess.run([sys.executable, "-c", PROBE], input=json.dumps(spec) + "\n", capture_output=True,
                          text=True, cwd=REPO, timeout=240)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, f"the import probe failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(line[len("RESULT "):])
    result["modules"] = spec["modules"]
    result["patched_by_install"] = spec["patched"]
    return result


def test_runtime_modules_import(import_probe):
    failed = [f"{name}:\n{tb}" for name, tb in import_probe["failed"]]
    assert not failed, _report(failed, "runtime modules that fail to import:")


def test_importing_runtime_modules_changes_no_environment(import_probe):
    changed = [f"import {name}: {', '.join(f'{k}: {v[0]!r} -> {v[1]!r}' for k, v in diff.items())}"
               for name, diff in import_probe["env"]]
    assert not changed, _report(changed, "importing changed os.environ (settings go through the Settings "
                                         "object, never through the environment between our modules):")


def test_importing_the_app_patches_no_faust_class(import_probe):
    detected = import_probe["install_detected"]
    expected = sorted(f"{cls}.{attr}" for _, cls, attr in import_probe["patched_by_install"])
    if import_probe["patched"]:
        name, now = import_probe["patched"]
        pytest.fail(f"import {name} (in this order: {', '.join(import_probe['modules'])}) patched Faust; "
                    f"only faust_fixes.install() may, called by the worker command:\n  "
                    + "\n  ".join(f"{k} is now from {v}" for k, v in sorted(now.items())))
    # The probe can see a patch at all: after install() every attribute it assigns is ours.
    assert detected == expected, f"after install() the probe saw {detected}, expected {expected}"


def test_runtime_modules_read_no_environment_at_import(import_probe):
    where: dict[tuple[str, str, str], list[str]] = {}
    for name, at, reader, key in import_probe["reads"]:
        where.setdefault((name, at, reader), []).append(key)
    reads = [f"import {name}: {at} runs at import; {reader} reads {', '.join(dict.fromkeys(keys))}"
             for (name, at, reader), keys in where.items()]
    assert not reads, _report(reads, "modules reading the environment while imported (read it once, in "
                                     "Settings.from_env() called by a command, not at import):")
