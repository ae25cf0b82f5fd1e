"""nox sessions: the full suite, each combination a user may install, lint and type check.

`nox` runs them all (what CI runs); `nox -s tests` the full suite only. Selective-install
sessions install the distributions as a user would (non-editable, from their directories) and
run the same test suites; tests marked ``requires``/``requires_absent`` select themselves.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "core_only", "core_tcg", "core_kvm", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = False

CORE = "./vfw-core"
KVM = "./plugins/vfw-accel-kvm"
TCG = "./plugins/vfw-accel-tcg"
PC = "./plugins/vfw-board-pc"
VIRTIO = "./plugins/vfw-dev-virtio"
TEST_DEPS = ("pytest>=7", "hypothesis>=6")
# Environment that tests read: strictness (skips become failures) passes through from CI.
PASSTHROUGH = ("VFW_TESTS_STRICT", "HYPOTHESIS_PROFILE")


def _pytest(session: nox.Session, *paths: str) -> None:
    env = {"VFW_CACHE_DIR": f"{session.virtualenv.location}/vfw-cache"}
    session.run("pytest", *paths, *session.posargs, env=env)


@nox.session
def tests(session: nox.Session) -> None:
    """Everything installed (editable): every test of every distribution."""
    session.install(*TEST_DEPS)
    session.install("-e", CORE, "-e", KVM, "-e", TCG, "-e", PC, "-e", VIRTIO)
    _pytest(session)


@nox.session
def core_only(session: nox.Session) -> None:
    """vfw-core alone: the CLI works and says what to install."""
    session.install(*TEST_DEPS)
    session.install(CORE)
    _pytest(session, "vfw-core/tests", "tests")


@nox.session
def core_tcg(session: nox.Session) -> None:
    """vfw-core + vfw-board-pc + vfw-accel-tcg: a software-only install."""
    session.install(*TEST_DEPS)
    session.install(CORE, PC, TCG)
    _pytest(session, "vfw-core/tests", "tests", PC, TCG)


@nox.session
def core_kvm(session: nox.Session) -> None:
    """vfw-core + vfw-board-pc + vfw-accel-kvm: a KVM-only install."""
    session.install(*TEST_DEPS)
    session.install(CORE, PC, KVM)
    _pytest(session, "vfw-core/tests", "tests", PC, KVM)


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
