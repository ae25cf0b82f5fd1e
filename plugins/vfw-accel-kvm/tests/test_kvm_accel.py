"""The kvm accelerator type: discovery, and initialisation against the real /dev/kvm."""

from __future__ import annotations

import os

import pytest

import vfw_accel_kvm.accel as kvm_accel
from vfw.errors import AccelError
from vfw.qom import object_new
from vfw.testing import need_kvm


def test_kvm_accel_is_found_through_its_entry_point():
    accel = object_new("kvm-accel")
    assert type(accel) is kvm_accel.KvmAccel
    assert accel.irqchip_in_kernel() is True
    assert accel.provider().distribution == "vfw-accel-kvm"


def test_init_creates_a_vm_on_this_machines_kvm():
    need_kvm()
    accel = object_new("kvm-accel")
    accel.init_machine(None)
    try:
        assert accel.vm_fd >= 0
        os.fstat(accel.vm_fd)  # a live file descriptor
    finally:
        fds = (accel.kvm_fd, accel.vm_fd)
        accel.finalize()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_missing_kvm_device_gives_qemus_message(monkeypatch):
    monkeypatch.setattr(kvm_accel, "DEVICE", "/nonexistent/kvm")
    with pytest.raises(AccelError) as err:
        object_new("kvm-accel").init_machine(None)
    assert str(err.value) == "Could not access KVM kernel module: No such file or directory"
