"""The kvm accelerator type: discovery, options, and initialisation against the real /dev/kvm."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

import vfw_accel_kvm.accel as kvm_accel
from vfw.errors import AccelError, PropertyError
from vfw.machine import Machine
from vfw.memory import MemoryRegion
from vfw.qom import object_new, register_type
from vfw.testing import need_kvm


def _kvm() -> kvm_accel.KvmAccel:
    accel = object_new("kvm-accel")
    assert isinstance(accel, kvm_accel.KvmAccel)
    return accel


@register_type
class KvmEmptyMachine(Machine):
    """RAM and nothing else: enough for init_machine's listeners."""

    TYPE = "kvm-empty-test-machine"

    def init(self) -> None:
        self.system_memory.add_subregion(0, MemoryRegion.ram("ram", 1 << 20))


def test_kvm_accel_is_found_through_its_entry_point() -> None:
    accel = object_new("kvm-accel")
    assert type(accel) is kvm_accel.KvmAccel
    assert accel.irqchip_in_kernel() is True
    assert accel.provider().distribution == "vfw-accel-kvm"


def test_init_creates_a_vm_on_this_machines_kvm() -> None:
    need_kvm()
    accel = _kvm()
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


def test_init_follows_the_machines_memory_and_finalize_lets_go() -> None:
    need_kvm()
    machine: Any = object_new("kvm-empty-test-machine")
    accel = _kvm()
    accel.init_machine(machine)
    machine.init()  # RAM appears after the accelerator, as vfw builds machines
    listener = accel.memory_listener
    assert listener is not None
    assert [(s.gpa, s.size, s.flags) for s in listener.slots.values()] == [(0, 1 << 20, 0)]
    assert accel._reset_hook in machine.reset_hooks
    accel.finalize()
    assert listener.slots == {}
    assert machine.reset_hooks == []


def test_supported_cpuid_answers_feature_words() -> None:
    need_kvm()
    accel = _kvm()
    accel.init_machine(None)
    try:
        class Word:
            leaf, subleaf, reg = 0x80000001, 0, "edx"

        assert accel.supported_cpuid(Word()) & (1 << 29)  # long mode
        Word.leaf, Word.reg = 0x12345, "eax"
        assert accel.supported_cpuid(Word()) == 0
    finally:
        accel.finalize()


def test_missing_kvm_device_gives_qemus_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kvm_accel, "DEVICE", "/nonexistent/kvm")
    with pytest.raises(AccelError) as err:
        _kvm().init_machine(None)
    assert str(err.value) == "Could not access KVM kernel module: No such file or directory"


def test_other_init_failures_say_failed_to_initialize(monkeypatch: pytest.MonkeyPatch) -> None:
    need_kvm()
    monkeypatch.setattr(kvm_accel, "KVM_API_VERSION", 99)
    accel = _kvm()
    with pytest.raises(AccelError) as err:
        accel.init_machine(None)
    assert str(err.value) == "failed to initialize kvm: KVM API version 12, need 99"
    assert accel.kvm_fd == -1 and accel.vm_fd == -1


@pytest.mark.parametrize("mode, message", [
    ("off", "kvm: kernel-irqchip=off is not supported: vfw's software interrupt controllers "
            "run only under tcg (use -accel tcg)"),
    ("split", "kvm: kernel-irqchip=split is not supported yet; use kernel-irqchip=on"),
])
def test_kernel_irqchip_other_than_on_is_refused(mode: str, message: str) -> None:
    accel = _kvm()
    accel.set_property("kernel-irqchip", mode)
    with pytest.raises(AccelError) as err:
        accel.init_machine(None)
    assert str(err.value) == message


def test_kernel_irqchip_takes_on_off_split() -> None:
    with pytest.raises(PropertyError):
        _kvm().set_property("kernel-irqchip", "maybe")
    assert _kvm().kernel_irqchip == "on"


def test_run_needs_the_main_thread_for_its_kick_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    monkeypatch.setattr(signal, "getsignal", lambda sig: signal.SIG_DFL)
    errors: list[str] = []

    def worker() -> None:
        try:
            kvm_accel.install_kick_signal()
        except AccelError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert errors == ["kvm: the accelerator must be started from the main thread "
                      "(it installs a handler for SIGUSR1)"]


def test_a_refused_ioctl_is_named_in_the_init_error(monkeypatch: pytest.MonkeyPatch) -> None:
    need_kvm()
    monkeypatch.setattr(kvm_accel, "TSS_ADDR", 0xFFFFE000)  # its three pages would pass 4 GiB
    accel = _kvm()
    with pytest.raises(AccelError) as err:
        accel.init_machine(None)
    assert str(err.value) == "failed to initialize kvm: KVM_SET_TSS_ADDR: Invalid argument"
    assert accel.vm_fd == -1
