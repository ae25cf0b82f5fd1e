"""tools/check_dist.py on hand-made wheels and sdists: what it accepts and what it reports.
(The nox sessions run it on the real distributions built with ``python -m build``.)"""

from __future__ import annotations

import importlib.util
import io
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "check_dist.py"

PYPROJECT = """\
[project]
name = "vfw-dev-demo"
version = "1.2.0"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["vfw-core>=0.1,<0.2"]

[project.optional-dependencies]
test = ["pytest>=7"]

[project.entry-points."vfw.plugins"]
dev-demo = "vfw_dev_demo"

[project.entry-points."vfw.types"]
demo = "vfw_dev_demo.demo"

[tool.setuptools.packages.find]
where = ["src"]
"""

README = "# vfw-dev-demo\n\nA demo.\n\nIt has types.\n\nInstall it.\n\nTest it.\n"
SOURCES = {"vfw_dev_demo/__init__.py": 'VFW_API = "1.0"\n', "vfw_dev_demo/demo.py": "X = 1\n"}


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vfw_check_dist", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make(tmp: Path, *, metadata_extra: str = "", requires: tuple[str, ...] = (
        "vfw-core<0.2,>=0.1", 'pytest>=7; extra == "test"'),
         entry_points: str = "[vfw.plugins]\ndev-demo = vfw_dev_demo\n\n"
                             "[vfw.types]\ndemo = vfw_dev_demo.demo\n",
         sources: dict[str, str] | None = None, readme: str = README) -> tuple[Path, Path]:
    """A project directory and a build directory holding one wheel and one sdist."""
    project, build = tmp / "project", tmp / "build"
    project.mkdir()
    build.mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT)
    (project / "README.md").write_text(readme)
    sources = SOURCES if sources is None else sources
    meta = ("Metadata-Version: 2.4\nName: vfw-dev-demo\nVersion: 1.2.0\n"
            "Requires-Python: >=3.10\n"
            + "".join(f"Requires-Dist: {r}\n" for r in requires)
            + "Provides-Extra: test\nDescription-Content-Type: text/markdown\n"
            + metadata_extra + "\n" + readme)
    with zipfile.ZipFile(build / "vfw_dev_demo-1.2.0-py3-none-any.whl", "w") as whl:
        for name, text in sources.items():
            whl.writestr(name, text)
        whl.writestr("vfw_dev_demo-1.2.0.dist-info/METADATA", meta)
        whl.writestr("vfw_dev_demo-1.2.0.dist-info/entry_points.txt", entry_points)
    with tarfile.open(build / "vfw_dev_demo-1.2.0.tar.gz", "w:gz") as sdist:
        files = {"pyproject.toml": PYPROJECT, "README.md": readme, "PKG-INFO": meta,
                 **{f"src/{k}": v for k, v in SOURCES.items()}}
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"vfw_dev_demo-1.2.0/{name}")
            info.size = len(data)
            sdist.addfile(info, io.BytesIO(data))
    return project, build


def test_a_correct_distribution_passes(tmp_path: Path) -> None:
    assert _tool().check(*make(tmp_path)) == []


@pytest.mark.parametrize("kwargs, expect", [
    ({"requires": ("vfw-core>=0.1",)}, "Requires-Dist"),
    ({"entry_points": "[vfw.types]\ndemo = vfw_dev_demo.demo\n"}, "no [vfw.plugins] entry point"),
    ({"entry_points": "[vfw.plugins]\ndev-demo = vfw_dev_demo\n\n[vfw.types]\n"
                      "demo = vfw_dev_demo.demo\nother = vfw_dev_demo.other\n"},
     "entry points differ"),
    ({"sources": {"vfw_dev_demo/__init__.py": 'VFW_API = "1.0"\n'}},
     "names module 'vfw_dev_demo.demo', which the wheel lacks"),
    ({"sources": {"vfw_dev_demo/__init__.py": "\n", "vfw_dev_demo/demo.py": ""}},
     "does not set VFW_API"),
    ({"readme": "# placeholder\n"}, "placeholder"),
])
def test_problems_are_reported_one_line_each(tmp_path: Path, kwargs: dict[str, object],
                                            expect: str) -> None:
    problems = _tool().check(*make(tmp_path, **kwargs))  # type: ignore[arg-type]
    assert any(expect in p for p in problems), problems
    assert all(p.startswith("vfw-dev-demo: ") and "\n" not in p for p in problems)


def test_a_plugin_needs_an_upper_bound_on_vfw_core(tmp_path: Path) -> None:
    project, build = make(tmp_path, requires=("vfw-core>=0.1", 'pytest>=7; extra == "test"'))
    (project / "pyproject.toml").write_text(
        PYPROJECT.replace('"vfw-core>=0.1,<0.2"', '"vfw-core>=0.1"'))
    assert any("no upper bound" in p for p in _tool().check(project, build))


def test_main_exits_1_on_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project, build = make(tmp_path, readme="# x\n")
    assert _tool().main([str(project), str(build)]) == 1
    assert "placeholder" in capsys.readouterr().err
