"""The wheel ships every package: a family folder missing from pyproject's list installs
fine in editable mode (the test setup) and is absent from `pip install .`."""

from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_directory_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    for name, directory in config["package-dir"].items():
        for init in (ROOT / directory).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / directory)
            package = ".".join((name, *relative.parts))
            assert package in listed, f"{package} ({init.parent}) is not in pyproject's packages"
