"""-d/-D logging: items, the log file, and guest errors routed from device models."""

from __future__ import annotations

import logging

import pytest

from vfw import log
from vfw.errors import OptionError


@pytest.fixture(autouse=True)
def restore_log():
    yield
    log.set_mask("")
    log._out = __import__("sys").stderr


def test_guest_errors_reach_the_log_file_only_when_enabled(tmp_path):
    path = tmp_path / "vfw.log"
    log.set_file(str(path))
    logger = logging.getLogger("vfw.guest_errors")
    logger.debug("before: not logged")
    log.set_mask("guest_errors,int")
    assert log.enabled("guest_errors") and log.enabled("int") and not log.enabled("exec")
    logger.debug("I/O: unassigned read of %d byte(s) at 0x%x", 1, 0x3E0)
    log.set_mask("int")
    logger.debug("after: not logged")
    assert path.read_text() == "I/O: unassigned read of 1 byte(s) at 0x3e0\n"


def test_unknown_item_and_unwritable_file_are_option_errors(tmp_path):
    with pytest.raises(OptionError, match="unknown log item 'bogus'"):
        log.set_mask("int,bogus")
    with pytest.raises(OptionError, match="could not open log file"):
        log.set_file(str(tmp_path / "no" / "such" / "dir" / "x.log"))
