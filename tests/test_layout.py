"""The package's shape, checked on its source: record.py alone names the run folder's files,
training code imports no presentation code, the results layer (rnnbench/results/) imports
torch only inside functions, and no module takes another's private names."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "rnnbench"
MODULES = {
    ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")
}
# (`run_key`, the key file's name, is also a record field: not checked.)
FOLDER_FILES = {"result.json", "metrics.csv", "steps.csv", "gradflow.csv", "last.ckpt", "best.ckpt"}
# The layers: the networks (nn/) and running them (run/) make the training code.
NN = sorted(m for m in MODULES if m.startswith("rnnbench.nn."))
RUN = sorted(m for m in MODULES if m.startswith("rnnbench.run."))
TRAINING = [*NN, *RUN, "rnnbench.tasks"]
PRESENTATION = {
    "rnnbench.results.report",
    "rnnbench.results.plots",
    "rnnbench.results.table",
    "rnnbench.results.reproduce",
}
PRESENTATION |= {"rnnbench.gradflow_experiment", "matplotlib"}


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in `path`, at any depth (lazy imports too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return found


def code_strings(path: Path) -> list[str]:
    """String constants of `path` that are not docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


@pytest.mark.parametrize("module", sorted(set(MODULES) - {"rnnbench.results.record"}))
def test_only_record_names_the_run_folder_files(module):
    named = {s for s in code_strings(MODULES[module]) if s.strip("/") in FOLDER_FILES}
    named |= {s for s in code_strings(MODULES[module]) for f in FOLDER_FILES if s.endswith("/" + f)}
    assert not named, f"{module} names {named}: use rnnbench.results.record's constants"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_another_modules_private_names(module):
    private = [
        (source, name)
        for source, names in imports(MODULES[module])
        if source.startswith("rnnbench")
        for name in names
        if name.startswith("_")
    ]
    assert not private, f"{module} imports {private}"


def is_presentation(module: str) -> bool:
    """matplotlib, a PRESENTATION module, or any module of a PRESENTATION package
    (rnnbench.results.reproduce.rows)."""
    return module.split(".")[0] == "matplotlib" or any(
        module == p or module.startswith(p + ".") for p in PRESENTATION
    )


@pytest.mark.parametrize("module", TRAINING)
def test_training_modules_import_no_presentation_code(module):
    pulled = {
        target
        for m, names in imports(MODULES[module])
        for target in (m, *(f"{m}.{n}" for n in names))  # `from rnnbench.results import reproduce`
        if is_presentation(target)
    }
    assert not pulled, f"{module} imports {pulled}"


def test_the_presentation_check_reaches_into_packages():
    assert is_presentation("rnnbench.results.reproduce.rows") and is_presentation(
        "rnnbench.results.reproduce"
    )
    assert is_presentation("matplotlib.pyplot")
    assert not is_presentation("rnnbench.results.reproducer")
    assert (
        "rnnbench.results.reproduce.command" in MODULES
    )  # the rules' module lists hold subpackages'


def literal_cell_lists(path: Path) -> list[list[str]]:
    """Every tuple, list, set or dict literal of `path` holding two or more cell names."""
    from rnnbench.cellspec import CELLS

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
        if not isinstance(node, ast.Tuple | ast.List | ast.Set | ast.Dict) or items is None:
            continue
        names = [e.value for e in items if isinstance(e, ast.Constant) and e.value in CELLS]
        if len(names) >= 2:
            found.append(names)
    return found


@pytest.mark.parametrize("module", sorted(set(MODULES) - {"rnnbench.cellspec"}))
def test_the_cells_are_listed_in_cellspec_alone(module):
    """One registry of cells (rnnbench.cellspec): no other module writes a list of them."""
    assert not literal_cell_lists(MODULES[module]), f"{module}: use rnnbench.cellspec"


def test_the_registry_check_finds_a_list(tmp_path):
    """The check above can fail: it finds lists of cells where there are some."""
    probe = tmp_path / "probe.py"
    probe.write_text('COLOURS = {"rnn": 1, "gru": 2}\nORDER = ("lstm", "gru")\nONE = ("gru",)\n')
    assert literal_cell_lists(probe) == [["rnn", "gru"], ["lstm", "gru"]]


CLIPPING_CALLS = {"clip_grad_norm_", "clip_grad_value_", "_foreach_mul_", "_foreach_norm"}


def clipping_code(path: Path) -> list[str]:
    """Where `path` clips gradients itself: torch's clipping helpers, the foreach kernels of a
    norm or scaling, or a clamp(θ / (‖g‖ + ε), max=...) factor."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "attr", getattr(node.func, "id", ""))
        if name in CLIPPING_CALLS:
            found.append(f"line {node.lineno}: {name}")
        elif name == "clamp" and any(k.arg == "max" for k in node.keywords):
            if node.args and isinstance(node.args[0], ast.BinOp):
                if isinstance(node.args[0].op, ast.Div):
                    found.append(f"line {node.lineno}: clamp(a / b, max=...)")
    return found


@pytest.mark.parametrize("module", sorted(set(MODULES) - {"rnnbench.nn.clipping"}))
def test_gradients_are_clipped_in_rnnbench_clipping_alone(module):
    """One implementation of g <- min(1, θ/‖g‖) g: rnnbench.nn.clipping.clip_global_norm_."""
    assert not clipping_code(MODULES[module]), f"{module} clips: call clip_global_norm_"


def test_the_clipping_check_finds_clipping():
    assert len(clipping_code(MODULES["rnnbench.nn.clipping"])) == 3


LIFECYCLE_CALLS = {"fit", "interrupt_on_stop_signals", "hold_stop_signals"}
# The modules that may make those calls besides rnnbench.run.runner, and why.
NOT_A_LIFECYCLE = {
    "rnnbench.run.lifecycle": "defines the stop-signal handlers the runner installs",
    "rnnbench.gradflow_experiment": "fits the figure's models: no run, no record",
}


def lifecycle_calls(path: Path) -> list[str]:
    """Where `path` fits a Trainer or takes over the stop signals: what a run lifecycle does."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in LIFECYCLE_CALLS:
                found.append(f"line {node.lineno}: {name}")
    return found


@pytest.mark.parametrize(
    "module",
    sorted(
        m
        for m in MODULES
        if m != "rnnbench.run.runner"
        and not m.startswith("rnnbench.bench")  # times steps: no run, no record
        and m not in NOT_A_LIFECYCLE
    ),
)
def test_runs_are_trained_by_the_one_lifecycle_alone(module):
    """Lone runs, packs and trials are strategies of rnnbench.run.runner.train_and_record: no other
    module fits a run's Trainer or handles the stop signals its records depend on."""
    assert not lifecycle_calls(MODULES[module]), (
        f"{module}: give runner.train_and_record a strategy"
    )


def test_the_lifecycle_check_finds_a_lifecycle():
    assert len(lifecycle_calls(MODULES["rnnbench.run.runner"])) == 3


def rnnbench_imports(module: str) -> set[str]:
    """The rnnbench modules and packages `module` imports, at any depth of its code."""
    return {
        target
        for m, names in imports(MODULES[module])
        for target in (m, *(f"{m}.{n}" for n in names))
        if target.startswith("rnnbench.")
    }


@pytest.mark.parametrize("module", NN)
def test_the_networks_import_nothing_of_running_or_results(module):
    """nn/ is plain torch over the shared contracts (errors, schema, tasks): a model can be
    read, built and tested without the run lifecycle, its callbacks or the records."""
    above = {
        t for t in rnnbench_imports(module) if t.startswith(("rnnbench.run", "rnnbench.results"))
    }
    assert not above, f"{module} imports {above}"


def test_the_layer_check_sees_imports():
    assert "rnnbench.nn.cells" in rnnbench_imports("rnnbench.nn.model")
    assert "rnnbench.run.runner" in rnnbench_imports("rnnbench.run.train")
    assert len(NN) >= 7 and len(RUN) >= 20


def import_graph() -> dict[str, set[str]]:
    """rnnbench module -> the rnnbench modules it imports (at any depth of its code)."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        targets = set()
        for source, names in imports(path):
            if source in MODULES:
                targets.add(source)
            for name in names:  # `from rnnbench.results import table`
                if f"{source}.{name}" in MODULES:
                    targets.add(f"{source}.{name}")
                elif f"{source}.__init__" in MODULES:  # a name a package's __init__.py holds
                    targets.add(f"{source}.__init__")
        graph[module] = targets - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every module that can reach itself, with the path that leads back."""
    found = []
    for start in graph:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    found.append([*path, start])
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    return found


def test_no_import_cycle():
    """No module imports, at any depth, a module that imports it back (lazy imports too)."""
    assert not cycles(import_graph()), cycles(import_graph())[:3]


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert not cycles({"a": {"b"}, "b": {"c"}, "d": {"a"}})


def unexplained_lazy_imports(path: Path) -> list[int]:
    """Lines of imports inside a function with no `# lazy:` comment (on the line, or on the
    comment lines just above a block of them) saying why they are not at the top."""
    lines = path.read_text().splitlines()
    found = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import | ast.ImportFrom):
                above = node.lineno - 2  # up over the block of imports (and blank lines)
                while above >= 0 and (
                    not lines[above].strip()
                    or lines[above].strip().startswith(("import ", "from "))
                ):
                    above -= 1
                said = "# lazy:" in lines[node.lineno - 1] or (
                    above >= 0 and lines[above].strip().startswith("# lazy:")
                )
                if not said:
                    found.append(node.lineno)
    return sorted(set(found))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_an_import_inside_a_function_says_why(module):
    """Imports go at the top, except where one keeps a heavy library (torch, W&B) out of a
    command that does not need it, said in a `# lazy:` comment."""
    assert not unexplained_lazy_imports(MODULES[module]), (
        f"{module}: lines {unexplained_lazy_imports(MODULES[module])}"
    )


def test_the_lazy_import_check_finds_one(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f():\n    import json\n\n\ndef g():\n    # lazy: why\n    import os\n\n    import re\n"
    )
    assert unexplained_lazy_imports(probe) == [2]


# The results layer and the command line's front: they read records, never train.
TORCH_FREE = (
    "rnnbench.run.cli",
    "rnnbench.config",
    "rnnbench.results.record",
    "rnnbench.results.table",
    "rnnbench.results.report",
    "rnnbench.results.summary",
    "rnnbench.run.sweep",
    "rnnbench.cellspec",
    "rnnbench.results.studies",
    "rnnbench.results.reproduce.command",
)


def test_results_modules_load_without_torch():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in TORCH_FREE)
        + "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


TORCH_PACKAGES = {"torch", "pytorch_lightning", "lightning", "torchmetrics"}


def top_level_imports(path: Path) -> list[str]:
    """The modules `path` imports when it is imported: its imports outside function bodies and
    `if TYPE_CHECKING:` blocks (`from a import b` gives a and a.b, either may be the module)."""
    found, todo = [], list(ast.parse(path.read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        todo += ast.iter_child_nodes(node)
    return found


def torch_at_import(module: str) -> list[str]:
    """The chain of rnnbench modules by which importing `module` imports torch (or Lightning),
    following module-level imports only (parent packages' __init__.py included); [] if none."""
    stack, seen = [(module, [module])], {module}
    while stack:
        name, chain = stack.pop()
        path = MODULES.get(name) or MODULES.get(f"{name}.__init__")
        if path is None:
            continue
        for target in top_level_imports(path):
            if target.split(".")[0] in TORCH_PACKAGES:
                return [*chain, target]
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # rnnbench, rnnbench.results, ... run too
                step = ".".join(parts[:i])
                if parts[0] == "rnnbench" and step not in seen:
                    seen.add(step)
                    stack.append((step, [*chain, step]))
    return []


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if m.startswith("rnnbench.results.") and m.count(".") > 1)
)
def test_results_modules_import_torch_only_inside_functions(module):
    """The results layer reads records: torch loads inside the functions that need it (a `#
    lazy:` import), never when a results module is imported, so tables and pages start fast."""
    chain = torch_at_import(module)
    assert not chain, f"{module} imports torch when imported: {' -> '.join(chain)}"


def test_the_torch_check_finds_torch(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os\nif TYPE_CHECKING:\n    import torch\n\n\ndef f():\n    import torch\n"
    )
    assert top_level_imports(probe) == ["os"]
    probe.write_text("try:\n    from torch import nn\nexcept ImportError:\n    pass\n")
    assert "torch" in top_level_imports(probe)
    assert torch_at_import("rnnbench.run.train")[-1] == "torch"  # a module that trains
    assert "rnnbench.results.record" in MODULES and "rnnbench.record" not in MODULES


def test_the_readme_contents_list_every_section_and_each_link_lands():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    body, in_code = [], False
    for line in readme.splitlines():
        in_code ^= line.startswith("```")
        if not in_code and re.match(r"^#{2,3} ", line) and line != "## Contents":
            body.append(line.split(" ", 1)[1].strip())

    def anchor(title: str) -> str:  # GitHub's: lower case, punctuation dropped, spaces to -
        return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")

    contents = readme.split("## Contents\n", 1)[1].split("\n\n", 1)[0]
    listed = re.findall(r"\[(.+?)\]\(#([^)]+)\)", contents)
    assert [title for title, _ in listed] == body
    assert all(link == anchor(title) for title, link in listed)
