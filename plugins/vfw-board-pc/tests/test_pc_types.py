"""The pc machine and x86 CPU model types as the core sees them."""

from __future__ import annotations

import pytest

from vfw.errors import MachineError
from vfw.machine import machine_help, select_machine
from vfw.options import SMP_GROUP, parse_opts, parse_smp
from vfw.qom import TABLE


def test_pc_is_the_default_machine_and_an_alias():
    cls = select_machine(None)
    assert cls.TYPE == "pc-i440fx-7.2-machine"
    assert select_machine("pc") is cls
    assert select_machine("pc-i440fx-7.2") is cls
    text = machine_help().splitlines()
    assert text[0] == "Supported machines are:"
    assert ("pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)"
            " [vfw-board-pc]") in text
    assert ("pc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996) (default) [vfw-board-pc]"
            in text)


def test_pc_smp_limits_follow_qemu():
    cls = select_machine("pc")

    def smp(text):
        return parse_smp(parse_opts(SMP_GROUP, text), machine_name="pc-i440fx-7.2",
                         max_cpus=cls.MAX_CPUS, dies_supported=cls.SMP_DIES_SUPPORTED)

    assert smp("8").cores == 8
    with pytest.raises(MachineError, match="The max CPUs supported by machine 'pc-i440fx-7.2'"
                                           " is 255"):
        smp("300")


def test_cpu_models_list():
    cpu = TABLE.lookup("x86_64-cpu")
    text = cpu.models_help().splitlines()
    assert text[0] == "Available CPUs:"
    assert any(line.split()[:2] == ["x86", "qemu64"] for line in text)
    assert TABLE.lookup("qemu64-x86_64-cpu").MODEL == "qemu64"
