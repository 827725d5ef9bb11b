"""The command-line applications (iaunet_d2.apps): the scripts in the repository and the
console scripts run them, and the library never imports them."""
import ast
import importlib
import importlib.metadata
import importlib.util
import os

import pytest

import iaunet_d2
from train_utils import REPO_ROOT

# script -> (application module, the names the script hands on)
WRAPPERS = {
    "train_net.py": ("train", ["cli", "main", "parse_args", "build_parser", "check_before_launch",
                               "SetupError"]),
    "tools/analyze_model.py": ("analyze_model", ["main"]),
    "tools/benchmark.py": ("benchmark", ["main"]),
    "tools/compare.py": ("compare", ["main"]),
    "tools/convergence.py": ("convergence", ["main"]),
    "tools/memory_soak.py": ("memory_soak", ["main"]),
    "datasets/labels_to_coco.py": ("convert_labels", ["main"]),
    "datasets/evican2.py": ("convert_evican2", ["main"]),
    "datasets/livecell_crop.py": ("convert_livecell_crop", ["main"]),
    "datasets/prepare_realcells.py": ("prepare_realcells", ["main"]),
}

CONSOLE_SCRIPTS = {
    "iaunet-train": "iaunet_d2.apps.train:cli",
    "iaunet-predict": "iaunet_d2.predict:main",
    "iaunet-convert-labels": "iaunet_d2.apps.convert_labels:main",
    "iaunet-convert-evican2": "iaunet_d2.apps.convert_evican2:main",
    "iaunet-convert-livecell-crop": "iaunet_d2.apps.convert_livecell_crop:main",
    "iaunet-analyze": "iaunet_d2.apps.analyze_model:main",
    "iaunet-benchmark": "iaunet_d2.apps.benchmark:main",
    "iaunet-compare": "iaunet_d2.apps.compare:main",
    "iaunet-convergence": "iaunet_d2.apps.convergence:main",
    "iaunet-prepare-realcells": "iaunet_d2.apps.prepare_realcells:main",
    "iaunet-memory-soak": "iaunet_d2.apps.memory_soak:main",
}


@pytest.mark.parametrize("script", sorted(WRAPPERS))
def test_scripts_hand_on_the_applications(script):
    spec = importlib.util.spec_from_file_location("_wrapper", os.path.join(REPO_ROOT, script))
    wrapper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wrapper)
    app_name, names = WRAPPERS[script]
    app = importlib.import_module(f"iaunet_d2.apps.{app_name}")
    for name in names:
        assert getattr(wrapper, name) is getattr(app, name), name


def test_console_scripts_are_installed_and_load():
    """Fails on an install older than setup.py's entry points: re-run pip install -e ."""
    installed = {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")
                 if ep.name.startswith("iaunet-")}
    assert {name: ep.value for name, ep in installed.items()} == CONSOLE_SCRIPTS
    for ep in installed.values():
        assert callable(ep.load()), ep.name


def _imported_modules(path, package):
    """Absolute names of every module ``path`` (a module of ``package``) imports."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[:len(parts) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def test_the_library_never_imports_the_applications():
    root = os.path.dirname(os.path.abspath(iaunet_d2.__file__))
    offenders = []
    for folder, _, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        if rel.split(os.sep)[0] == "apps":
            continue
        package = ".".join(["iaunet_d2"] + ([] if rel == "." else rel.split(os.sep)))
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                offenders += [f"{os.path.relpath(path, root)}: {m}" for m in _imported_modules(path, package)
                              if m == "iaunet_d2.apps" or m.startswith("iaunet_d2.apps.")]
    assert not offenders
