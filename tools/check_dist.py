"""Check a distribution's built wheel and sdist against its pyproject.toml.

Usage: ``python tools/check_dist.py PROJECT_DIR BUILD_DIR`` where BUILD_DIR holds what
``python -m build --outdir BUILD_DIR PROJECT_DIR`` made (one wheel, one sdist).

It reads the wheel's ``METADATA`` and ``entry_points.txt`` (what pip and vfw's plugin
discovery will see once installed) and checks: name and version; the Python requirement;
the dependencies (and, for a vfw plugin, that vfw-core is required with an upper bound, since
the plugin targets one API); every entry point; that each module an entry point names is in
the wheel; the package data; the README as the long description (and not a placeholder); and
that the sdist carries pyproject.toml, the README and the sources. Exit status 1 with one line
per problem.
"""

from __future__ import annotations

import argparse
import configparser
import email.parser
import fnmatch
import re
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with the tomli backport
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]


def _norm_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _norm_req(req: str) -> str:
    """A requirement with its name normalised and its specifiers sorted (wheel metadata may
    reorder them)."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*)(;.*)?$", req)
    if m is None:
        return req.strip()
    specs = ",".join(sorted(s.strip().replace(" ", "") for s in m.group(3).split(",")
                            if s.strip()))
    marker = (m.group(4) or "").replace(" ", "")
    return f"{_norm_name(m.group(1))}{m.group(2) or ''}{specs}{marker}"


def _one(build_dir: Path, pattern: str) -> Path:
    found = sorted(build_dir.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"{build_dir}: expected one {pattern}, found {len(found)}")
    return found[0]


def check(project: Path, build_dir: Path) -> list[str]:
    """Every problem found, as one line each."""
    meta_toml: dict[str, Any] = tomllib.loads((project / "pyproject.toml").read_text())
    proj = meta_toml["project"]
    name, version = proj["name"], proj["version"]
    problems: list[str] = []

    def fail(what: str) -> None:
        problems.append(f"{name}: {what}")

    wheel_path = _one(build_dir, "*.whl")
    sdist_path = _one(build_dir, "*.tar.gz")
    with zipfile.ZipFile(wheel_path) as whl:
        files = set(whl.namelist())
        info = next((f.split("/")[0] for f in files
                     if f.endswith(".dist-info/METADATA")), None)
        if info is None:
            return [f"{name}: {wheel_path.name} has no METADATA"]
        metadata = email.parser.Parser().parsestr(whl.read(f"{info}/METADATA").decode())
        ep_text = whl.read(f"{info}/entry_points.txt").decode() \
            if f"{info}/entry_points.txt" in files else ""

    # -- identity and requirements ----------------------------------------------------------
    if _norm_name(metadata["Name"] or "") != _norm_name(name):
        fail(f"wheel Name {metadata['Name']!r}, pyproject says {name!r}")
    if metadata["Version"] != version:
        fail(f"wheel Version {metadata['Version']!r}, pyproject says {version!r}")
    if metadata["Requires-Python"] != proj.get("requires-python"):
        fail(f"Requires-Python {metadata['Requires-Python']!r}, pyproject says"
             f" {proj.get('requires-python')!r}")
    if not metadata["Requires-Python"]:
        fail("no Requires-Python")
    wanted = {_norm_req(r) for r in proj.get("dependencies", [])}
    for extra, reqs in proj.get("optional-dependencies", {}).items():
        wanted |= {_norm_req(f'{r}; extra == "{extra}"') for r in reqs}
    got = {_norm_req(r) for r in metadata.get_all("Requires-Dist") or []}
    if got != wanted:
        fail(f"Requires-Dist {sorted(got)} differs from pyproject {sorted(wanted)}")
    runtime = [_norm_req(r) for r in proj.get("dependencies", [])]
    if _norm_name(name) != "vfw-core":
        core = [r for r in runtime if r.startswith("vfw-core") and not r[8:9].isalnum()]
        if not core:
            fail("a vfw plugin must depend on vfw-core")
        elif "<" not in core[0]:
            fail(f"vfw-core requirement {core[0]!r} has no upper bound (the plugin targets one"
                 f" API version)")

    # -- entry points -----------------------------------------------------------------------
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep names' case
    parser.read_string(ep_text)
    got_eps = {(g, k, v.strip()) for g in parser.sections() for k, v in parser[g].items()}
    want_eps = {(g, k, v) for g, eps in proj.get("entry-points", {}).items()
                for k, v in eps.items()}
    want_eps |= {("console_scripts", k, v) for k, v in proj.get("scripts", {}).items()}
    if got_eps != want_eps:
        fail(f"entry points differ: missing {sorted(want_eps - got_eps)},"
             f" unexpected {sorted(got_eps - want_eps)}")
    if not any(g == "vfw.plugins" for g, _k, _v in got_eps):
        fail("no [vfw.plugins] entry point: vfw will not load it")
    for group, key, value in sorted(got_eps):
        module = value.split(":")[0].strip()
        path = module.replace(".", "/")
        if f"{path}.py" not in files and f"{path}/__init__.py" not in files:
            fail(f"entry point {group} {key} names module {module!r}, which the wheel lacks")
    for group, _key, value in sorted(got_eps):
        if group == "vfw.plugins":
            path = value.split(":")[0].strip().replace(".", "/")
            with zipfile.ZipFile(wheel_path) as whl:
                for candidate in (f"{path}.py", f"{path}/__init__.py"):
                    if candidate in files and not re.search(
                            r'^VFW_API\s*=\s*"\d+\.\d+"', whl.read(candidate).decode(), re.M):
                        fail(f"plugin module {candidate} does not set VFW_API = \"MAJOR.MINOR\"")

    # -- package data -----------------------------------------------------------------------
    pkg_data = meta_toml.get("tool", {}).get("setuptools", {}).get("package-data", {})
    for package, patterns in pkg_data.items():
        for pattern in patterns:
            full = f"{package.replace('.', '/')}/{pattern}"
            if not any(fnmatch.fnmatch(f, full) for f in files):
                fail(f"package data {full} is not in the wheel")

    # -- README -----------------------------------------------------------------------------
    readme = proj.get("readme")
    if not readme:
        fail("no readme in pyproject")
    elif not (project / readme).is_file():
        fail(f"{readme} does not exist")
    else:
        text = (project / readme).read_text()
        body = metadata.get_payload()
        if not isinstance(body, str) or body.strip() != text.strip():
            fail(f"the wheel's description is not {readme}")
        if metadata["Description-Content-Type"] != "text/markdown":
            fail(f"Description-Content-Type is {metadata['Description-Content-Type']!r}")
        if len([ln for ln in text.splitlines() if ln.strip()]) < 5:
            fail(f"{readme} is a placeholder (under five lines)")

    # -- sdist ------------------------------------------------------------------------------
    with tarfile.open(sdist_path) as sdist:
        members = {m.split("/", 1)[1] for m in sdist.getnames() if "/" in m}
    for needed in ("pyproject.toml", "PKG-INFO", *([readme] if readme else [])):
        if needed not in members:
            fail(f"sdist lacks {needed}")
    wheel_sources = {f for f in files if f.endswith(".py") and ".dist-info/" not in f}
    where = meta_toml.get("tool", {}).get("setuptools", {}).get("packages", {}).get(
        "find", {}).get("where", ["."])[0]
    prefix = "" if where in (".", "") else where.rstrip("/") + "/"
    missing = sorted(f for f in wheel_sources if prefix + f not in members)
    if missing:
        fail(f"sdist lacks sources {missing[:5]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("project", type=Path, help="the directory holding pyproject.toml")
    ap.add_argument("build_dir", type=Path, help="where python -m build put wheel and sdist")
    args = ap.parse_args(argv)
    problems = check(args.project, args.build_dir)
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print(f"{args.project}: wheel and sdist metadata OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
