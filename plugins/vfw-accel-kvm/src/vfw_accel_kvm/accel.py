"""The ``kvm`` accelerator type."""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Any

from vfw.accel import Accel
from vfw.errors import AccelError
from vfw.qom import register_type

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_API_VERSION = 12
DEVICE = "/dev/kvm"


@register_type
class KvmAccel(Accel):
    """Hardware virtualization through /dev/kvm, with the in-kernel irqchip and PIT."""

    TYPE = "kvm-accel"
    DESC = "Linux KVM"

    def instance_init(self) -> None:
        self.kvm_fd = -1
        self.vm_fd = -1

    def init_machine(self, machine: Any) -> None:
        try:
            self.kvm_fd = os.open(DEVICE, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise AccelError(f"Could not access KVM kernel module: {os.strerror(exc.errno or 0)}"
                             ) from None
        version = fcntl.ioctl(self.kvm_fd, KVM_GET_API_VERSION, 0)
        if version != KVM_API_VERSION:
            raise AccelError(f"failed to initialize kvm: KVM API version {version}, need "
                             f"{KVM_API_VERSION}")
        try:
            self.vm_fd = fcntl.ioctl(self.kvm_fd, KVM_CREATE_VM, 0)
        except OSError as exc:
            reason = os.strerror(exc.errno or errno.EINVAL)
            raise AccelError(f"failed to initialize kvm: {reason}") from None

    def irqchip_in_kernel(self) -> bool:
        return True

    def instance_finalize(self) -> None:
        for fd in (self.vm_fd, self.kvm_fd):
            if fd >= 0:
                os.close(fd)
        self.vm_fd = self.kvm_fd = -1
