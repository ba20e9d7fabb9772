"""House rules on imports: no circle between project modules, and one direction per package.

The import graph holds every import of every project module, at the top of the file or
inside a function (read with ast), except those under ``if TYPE_CHECKING:``, which only
annotate and never run.

Directions:
- ``link`` (the robot <-> learner messages and sockets) imports no project package;
- ``learner`` imports ``link`` only: nothing of ``robot``, ``sim`` or ``calibration``;
- ``sim`` and ``calibration`` import of ``robot`` only :data:`ROBOT_SHARED`, never the
  robot process itself (runner, control, recorder, session logs, timing, real devices);
- ``robot`` imports ``sim`` only in its sim rig (:data:`ROBOT_SIM_RIG`);
- nothing imports ``madi``, the command on top.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("link", "learner", "robot", "sim", "calibration", "madi")

#: The robot modules that ``sim`` and ``calibration`` may import. What the sim mirrors: the
#: config, the kinematics, the task (target and reward), the observation and action mapping,
#: the safety limits, the distraction sets on the monitor, the scripted servo policy. What
#: calibration drives: the device interface (``robot.backends``: ``make_rig``, ``Rig``) and
#: the calibration file the config applies.
ROBOT_SHARED = {
    "robot", "robot.config", "robot.kinematics", "robot.task", "robot.observation",
    "robot.safety", "robot.distractions", "robot.servo", "robot.backends",
    "robot.backends.base", "robot.calibration_file",
}

#: The one robot module that imports the sim: the sim rig behind the device interface.
ROBOT_SIM_RIG = "robot.backends.sim"

#: Package -> the project packages it must not import.
FORBIDDEN = {
    "link": {"learner", "robot", "sim", "calibration", "madi"},
    "learner": {"robot", "sim", "calibration", "madi"},
    "robot": {"calibration", "madi"},
    "sim": {"learner", "calibration", "madi"},
    "calibration": {"learner", "sim", "madi"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for package in PACKAGES if (ROOT / package).is_dir()
           for p in sorted((ROOT / package).rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    return skipped


def imported_modules(path: Path) -> set[str]:
    """The project modules ``path`` imports (``from pkg import submodule`` included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = _type_checking_nodes(tree)
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                names.add(sub if sub in MODULES else node.module)
    return {n for n in names if n.split(".")[0] in PACKAGES}


GRAPH = {name: imported_modules(path) for name, path in MODULES.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component of ``graph``."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                cycles.append(_cycle_in(graph, component, v))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def _cycle_in(graph: dict[str, set[str]], component: set[str], start: str) -> list[str]:
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in component)
        back = [w for w in nxt if w == start]
        if back:
            return [*path, start]
        step = next((w for w in nxt if w not in seen), None)
        if step is None:  # every successor is on the path: close the loop there
            w = nxt[0]
            return [*path[path.index(w):], w]
        path.append(step)
        seen.add(step)


def test_graph_sees_function_local_imports():
    assert "robot.backends.sim" in GRAPH["robot.backends"]


def test_cycle_finder_names_the_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]


def test_every_package_is_in_the_graph():
    assert {m.split(".")[0] for m in GRAPH} == set(PACKAGES)


def test_no_import_cycle():
    cycles = find_cycles(GRAPH)
    assert cycles == [], "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_import_direction():
    offenders = []
    for module, imported in sorted(GRAPH.items()):
        package = module.split(".")[0]
        for target in sorted(imported):
            if target.split(".")[0] in FORBIDDEN.get(package, ()):
                offenders.append(f"{module} imports {target}")
            elif (package in ("sim", "calibration") and target.split(".")[0] == "robot"
                  and target not in ROBOT_SHARED):
                offenders.append(f"{module} imports {target}, not one of ROBOT_SHARED")
            elif package == "robot" and target.split(".")[0] == "sim" and \
                    module != ROBOT_SIM_RIG:
                offenders.append(f"{module} imports {target}; only {ROBOT_SIM_RIG} may")
    assert offenders == []
