"""Imports go one way, down the layers of docs/ARCHITECTURE.md.

``LAYERS`` is the one definition of the order: a module may import its own layer and the layers
before it, never one after it. Every module of shapley_kernels and loupe_core must belong to a
layer. The imports are read from the source (ast), module-level and function-level alike, and
``from pkg import name`` counts as importing the submodule ``pkg.name`` where there is one;
importing ``a.b.c`` also runs the package ``a.b`` (its ``__init__``), so that counts too. The
root package ``loupe_core`` runs before any submodule and must therefore import nothing at load
time (its API is re-exported lazily). A second, runtime check imports the layers in order in a
fresh interpreter and finds no module of a later layer loaded.

Function-level imports of the project's own modules are allowed only where ``LAZY_IMPORTS``
gives the reason; a new one fails here until it is moved to the top of its module or listed.
"""
import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shapley_kernels", "loupe_core")

# (layer, module patterns): "pkg.*" is the package and everything under it, otherwise one module.
LAYERS = (
    ("shapley_kernels", ("shapley_kernels.*",)),        # the estimator library: knows no LOUPE
    ("errors", ("loupe_core.errors",)),                  # the exception types (imports nothing of the project)
    ("progress", ("loupe_core.progress",)),              # progress bars / lines (tqdm only)
    ("schema", ("loupe_core.schema",)),                  # typed strict dataclass loading (stdlib only)
    ("data", ("loupe_core.data.*",)),                    # datasets, loaders, tokenizer, phrases
    ("global_batch", ("loupe_core.global_batch",)),      # DDP-invariant rows, seeds, gathers (torch only)
    ("model", ("loupe_core.model.*",)),                  # towers, region head, LoupeModel (features), ModelConfig
    ("objective", ("loupe_core.objective.*",)),          # losses, labels, UNSIL, LossConfig, LoupeObjective
    ("config", ("loupe_core.config",)),                  # RunConfig: model/loss sections + data, train, eval
    ("train", ("loupe_core.train.*",)),                  # the generic loop, checkpoints, DDP, logs
    ("eval", ("loupe_core.eval.*",)),                    # zero-shot tasks, diagnostics
    ("viz", ("loupe_core.viz.*",)),                      # pictures and the HTML report
    ("api", ("loupe_core.api", "loupe_core")),           # the public model API (root: lazy re-export)
    ("pipeline", ("loupe_core.pipeline",)),              # data + model + train + eval + report of a run
    ("commands", ("loupe_core.commands.*", "loupe_core.cli", "loupe_core.__main__")),  # the `loupe` command
)

# (importing module, imported module): why the import is inside a function.
LAZY_IMPORTS = {
    ("shapley_kernels.token_level.towers", "shapley_kernels.token_level._triton_attention"):
        "optional dependency: the Triton kernel module imports triton at load time",
    ("loupe_core.config", "loupe_core.model.config"):
        "RunConfig's model and loss sections are resolved on first use, so that loading config "
        "(config files, --list-configs) does not load the model layer and torch",
    ("loupe_core.config", "loupe_core.objective.config"):
        "as loupe_core.model.config: the loss section, resolved on first use",
    ("loupe_core", "loupe_core.api"):
        "PEP 562 lazy re-export: the root package runs before every submodule, so an eager import "
        "would make each lower layer load the API layer",
    # issue 32 (part A): `loupe --help`, `loupe --version` and `list_models()` load no torch
    ("loupe_core", "loupe_core.config"):
        "list_models() is the config names alone: resolving it loads config, not the API layer and torch",
    **{("loupe_core.commands." + command, module): "a command loads what it runs when it runs, so that "
       "building the parser (`loupe --help`, `loupe --version`) loads no torch"
       for command, modules in {
           "pretrain": ("loupe_core.pipeline",),
           "eval": ("loupe_core.eval", "loupe_core.pipeline", "loupe_core.train.distributed", "loupe_core.viz",
                    "loupe_core.data.shapesworld_hard", "loupe_core.eval.hard_splits"),
           "data": ("loupe_core.data.shards", "loupe_core.data.webdataset_loader", "loupe_core.data.shapesworld",
                    "loupe_core.data.csv_loader", "loupe_core.data.tokenizer", "loupe_core.data.shapesworld_hard"),
       }.items() for module in modules},
}

# Upward arrows still in the code (importing module, imported module): none left.
UPWARD = {}

# Not imported by the runtime check: running it is running the command.
SCRIPTS = {"loupe_core.__main__"}

HEAVY = ("matplotlib", "nltk", "textblob", "pycocotools", "tensorboard", "webdataset")


def _modules() -> dict:
    """{module name: (path, is_package)} of every module of PACKAGES."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            out[".".join(parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def layer_of(module: str):
    """Index into LAYERS of a project module (None: no layer claims it)."""
    for index, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if pattern.endswith(".*"):
                if module == pattern[:-2] or module.startswith(pattern[:-1]):
                    return index
            elif module == pattern:
                return index
    return None


def _inside_functions(tree) -> set:
    nested = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            nested.update(id(sub) for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom)))
    return nested


def _with_packages(module: str) -> list:
    """``module`` and the packages Python runs to import it (the roots excepted: see the docstring)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))] + [module]


def imports(module: str) -> list:
    """[(imported project module, lazy, named)] of ``module``, from its source (named False: a
    package run on the way to the module named)."""
    path, is_pkg = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    lazy_nodes = _inside_functions(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                out += [(t, id(node) in lazy_nodes, t == target) for t in _with_packages(target) if t != module]
    return out


def arrows():
    """[(module, imported, lazy, named)] over the whole project, each pair once: lazy if every
    import of it is inside a function, named if some import names it."""
    seen = {}
    for module in MODULES:
        for target, lazy, named in imports(module):
            was_lazy, was_named = seen.get((module, target), (True, False))
            seen[(module, target)] = (was_lazy and lazy, was_named or named)
    return [(m, t, lazy, named) for (m, t), (lazy, named) in sorted(seen.items())]


def test_every_module_has_a_layer():
    assert [m for m in MODULES if layer_of(m) is None] == []
    assert all(t in MODULES for _, t, _, _ in arrows()), "an import names a module that does not exist"


def test_imports_go_down_the_layers():
    names = [name for name, _ in LAYERS]
    upward = {(m, t): f"{names[layer_of(m)]} -> {names[layer_of(t)]}"
              for m, t, _, _ in arrows() if None not in (layer_of(m), layer_of(t)) and layer_of(t) > layer_of(m)}
    assert upward == UPWARD, "\n".join(f"{m} -> {t} ({layers})" for (m, t), layers in upward.items())


def test_function_level_project_imports_have_a_reason():
    lazy = {(m, t) for m, t, is_lazy, named in arrows() if is_lazy and named}
    assert sorted(lazy - set(LAZY_IMPORTS)) == [], "new function-level import: move it up or give the reason"
    assert sorted(set(LAZY_IMPORTS) - lazy) == [], "stale LAZY_IMPORTS entry: drop it"


def test_the_root_package_imports_nothing_at_load_time():
    assert [t for t, lazy, _ in imports("loupe_core") if not lazy] == []


def _fresh_python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_loading_a_layer_loads_nothing_above_it():
    by_layer = [[m for m in MODULES if layer_of(m) == i and m not in SCRIPTS] for i in range(len(LAYERS))]
    code = f"""
import importlib, json, sys
by_layer, packages = {by_layer!r}, {PACKAGES!r}
order = {({m: layer_of(m) for m in MODULES if m not in PACKAGES and layer_of(m) is not None})!r}  # roots: docstring
found = []
for index, modules in enumerate(by_layer):
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # an optional dependency (triton) that is not installed
            if (exc.name or "").split(".")[0] in packages:
                raise
    above = sorted(m for m in sys.modules if order.get(m, -1) > index)
    found += [[index, m] for m in above]
print(json.dumps(found))
"""
    names = [name for name, _ in LAYERS]
    found = [f"loading {names[i]} loaded {m}" for i, m in json.loads(_fresh_python(code).splitlines()[-1])]
    assert found == []


def test_shapley_kernels_loads_no_loupe_and_no_heavy_dependency():
    code = ("import sys, shapley_kernels; print(sorted({m.split('.')[0] for m in sys.modules} & "
            f"{set(HEAVY) | {'loupe_core'}!r}))")
    assert _fresh_python(code).split() == ["[]"]


def test_the_loupe_command_loads_optional_dependencies_only_where_used():
    """pictures, detection (COCO), TensorBoard, shards and phrases import their libraries when used:
    ``import loupe_core.cli`` (every layer) works without the [viz]/[eval] extras installed."""
    code = ("import sys, loupe_core.cli; print(sorted({m.split('.')[0] for m in sys.modules} & "
            f"{set(HEAVY) | {'sklearn', 'tokenizers'}!r}))")
    assert _fresh_python(code).split() == ["[]"]
