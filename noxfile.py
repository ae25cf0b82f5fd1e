"""nox sessions: the full suite, each combination a user may install, lint and type check.

`nox` runs them all (what CI runs); `nox -s tests` the full suite only. Selective-install
sessions install the distributions as a user would (non-editable, from their directories) and
run the same test suites; tests marked ``requires``/``requires_absent`` select themselves.
Each of them (and ``everything``: all five plus the examples/vfw-dev-edu plugin) then builds a
wheel and an sdist of every distribution it installed and checks their metadata with
tools/check_dist.py.
"""

from __future__ import annotations

import shutil

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "core_only", "core_tcg", "core_kvm", "everything", "lint",
                        "typecheck"]
nox.options.reuse_existing_virtualenvs = False

CORE = "./vfw-core"
KVM = "./plugins/vfw-accel-kvm"
TCG = "./plugins/vfw-accel-tcg"
PC = "./plugins/vfw-board-pc"
VIRTIO = "./plugins/vfw-dev-virtio"
#: The third-party plugin example (depends on vfw-core only).
EDU = "./examples/vfw-dev-edu"
TEST_DEPS = ("pytest>=7", "hypothesis>=6")
# Environment that tests read: strictness (skips become failures) passes through from CI.
PASSTHROUGH = ("VFW_TESTS_STRICT", "HYPOTHESIS_PROFILE")


def _pytest(session: nox.Session, *paths: str) -> None:
    env = {"VFW_CACHE_DIR": f"{session.virtualenv.location}/vfw-cache"}
    session.run("pytest", *paths, *session.posargs, env=env)


def _check_dists(session: nox.Session, *dists: str) -> None:
    """Build a wheel and an sdist of each distribution (``python -m build``, isolated) and check
    their metadata (dependencies, entry points, Python requirement, README) against its
    pyproject.toml with tools/check_dist.py."""
    session.install("build")
    out = session.create_tmp()
    for dist in dists:
        outdir = f"{out}/dist-{dist.rstrip('/').rsplit('/', 1)[-1]}"
        shutil.rmtree(outdir, ignore_errors=True)
        session.run("python", "-m", "build", "--wheel", "--sdist", "--outdir", outdir, dist,
                    silent=True)
        session.run("python", "tools/check_dist.py", dist, outdir)


@nox.session
def tests(session: nox.Session) -> None:
    """Everything installed (editable): every test of every distribution."""
    session.install(*TEST_DEPS)
    session.install("-e", f"{CORE}[test]", "-e", KVM, "-e", f"{TCG}[test]", "-e", PC,
                    "-e", VIRTIO)
    _pytest(session)


@nox.session
def core_only(session: nox.Session) -> None:
    """vfw-core alone: the CLI works and says what to install."""
    session.install(*TEST_DEPS)
    session.install(f"{CORE}[test]")
    _pytest(session, "vfw-core/tests", "tests")
    _check_dists(session, CORE)


@nox.session
def core_tcg(session: nox.Session) -> None:
    """vfw-core + vfw-board-pc + vfw-accel-tcg: a software-only install."""
    session.install(*TEST_DEPS)
    session.install(f"{CORE}[test]", PC, f"{TCG}[test]")
    _pytest(session, "vfw-core/tests", "tests", PC, TCG)
    _check_dists(session, CORE, PC, TCG)


@nox.session
def core_kvm(session: nox.Session) -> None:
    """vfw-core + vfw-board-pc + vfw-accel-kvm: a KVM-only install."""
    session.install(*TEST_DEPS)
    session.install(f"{CORE}[test]", PC, KVM)
    _pytest(session, "vfw-core/tests", "tests", PC, KVM)
    _check_dists(session, CORE, PC, KVM)


@nox.session
def everything(session: nox.Session) -> None:
    """All five distributions and the edu example plugin, installed non-editable as a user
    would: every suite, and every distribution's wheel and sdist checked."""
    session.install(*TEST_DEPS)
    session.install(f"{CORE}[test]", KVM, f"{TCG}[test]", PC, VIRTIO, EDU)
    _pytest(session, "vfw-core/tests", "plugins", "tests", f"{EDU}/tests")
    _check_dists(session, CORE, KVM, TCG, PC, VIRTIO, EDU)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy on vfw-core (strict)."""
    session.install("mypy", "pytest")
    session.install("-e", CORE)
    session.run("mypy", "vfw-core/src/vfw")
