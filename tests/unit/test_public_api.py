"""The public API is lazy: ``import mechlab`` loads no heavy dependency, and every public name is what
it says once every submodule has been imported (a submodule never shadows a function)."""

import importlib
import pkgutil
import subprocess
import sys
import types

import mechlab

HEAVY = ("torch", "transformers", "transformer_lens", "matplotlib", "datasets")


def test_importing_mechlab_and_building_the_cli_parser_loads_no_heavy_dependency() -> None:
    code = (
        "import sys, mechlab, mechlab.cli; mechlab.cli.build_parser(); "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_public_name_resolves_and_no_submodule_shadows_one() -> None:
    for info in pkgutil.walk_packages(mechlab.__path__, "mechlab."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    modules = {"figures"}  # mechlab.figures is the plotting module by design
    for name in mechlab.__all__:
        value = getattr(mechlab, name)
        assert isinstance(value, types.ModuleType) == (name in modules), name
    assert callable(mechlab.capture) and callable(mechlab.explain)
    assert set(mechlab.__all__) <= set(dir(mechlab))
