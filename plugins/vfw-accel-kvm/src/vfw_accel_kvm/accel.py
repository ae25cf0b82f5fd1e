"""The ``kvm`` accelerator type: a VM on /dev/kvm with the in-kernel irqchip and PIT.

init_machine creates the VM and its interrupt controllers and keeps KVM's memory slots in
step with ``machine.address_space_memory``; the board calls create_vcpu for each CPU; run
starts one thread per vCPU and serves the main loop in the calling (main) thread until the
machine has a request pending.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import threading
from typing import Any

from vfw.accel import Accel
from vfw.errors import AccelError
from vfw.main_loop import BQL, main_loop
from vfw.props import EnumType, prop
from vfw.qom import register_type

from . import kvm_api as k
from .cpuid import CpuidEntry, build_cpuid
from .irqfd import KVM_CAP_IRQ_ROUTING, KVM_CAP_IRQFD, GsiRouter, MsiIrqfd
from .slots import KvmIoListener, KvmMemoryListener
from .vcpu import KICK_SIGNAL, PUT_RESET, KvmVcpu

log = logging.getLogger("vfw.accel.kvm")
guest_log = logging.getLogger("vfw.guest_errors")

DEVICE = "/dev/kvm"
KVM_API_VERSION = k.KVM_API_VERSION
#: Three pages below the BIOS for VMX's real-mode TSS, and the page before for its identity
#: map (QEMU's addresses).
TSS_ADDR = 0xFFFBD000
IDENTITY_MAP_ADDR = 0xFFFBC000
REQUIRED_CAPS = {
    k.KVM_CAP_USER_MEMORY: "KVM_CAP_USER_MEMORY",
    k.KVM_CAP_SET_TSS_ADDR: "KVM_CAP_SET_TSS_ADDR",
    k.KVM_CAP_IRQCHIP: "KVM_CAP_IRQCHIP",
    k.KVM_CAP_EXT_CPUID: "KVM_CAP_EXT_CPUID",
    k.KVM_CAP_MP_STATE: "KVM_CAP_MP_STATE",
    k.KVM_CAP_VCPU_EVENTS: "KVM_CAP_VCPU_EVENTS",
    k.KVM_CAP_IMMEDIATE_EXIT: "KVM_CAP_IMMEDIATE_EXIT",
}
OPTIONAL_CAPS = (k.KVM_CAP_READONLY_MEM, k.KVM_CAP_XSAVE, k.KVM_CAP_XCRS, k.KVM_CAP_DEBUGREGS,
                 k.KVM_CAP_SET_IDENTITY_MAP_ADDR, k.KVM_CAP_PIT2, k.KVM_CAP_SIGNAL_MSI,
                 k.KVM_CAP_IOEVENTFD, k.KVM_CAP_NR_MEMSLOTS, k.KVM_CAP_MAX_VCPU_ID,
                 KVM_CAP_IRQFD, KVM_CAP_IRQ_ROUTING)
KERNEL_IRQCHIP = EnumType("OnOffSplit", ("on", "off", "split"))
#: How often run() re-kicks vCPU threads that have not stopped yet (seconds).
REKICK_INTERVAL = 0.1
STUCK_WARNING = 10.0


def _strerror(exc: OSError) -> str:
    return os.strerror(exc.errno or errno.EINVAL)


def _add_listener(space: Any, listener: Any) -> None:
    """Register a listener; if replaying the current map fails, unregister it again."""
    try:
        space.add_listener(listener)
    except BaseException:
        try:
            space.remove_listener(listener)
        except (ValueError, AccelError):
            pass
        raise


def _kick_handler(signum: int, frame: Any) -> None:
    """Does nothing: the signal's job is to make KVM_RUN return EINTR in a vCPU thread."""


def install_kick_signal() -> None:
    """Install the no-op handler for the kick signal (needs the main thread, once)."""
    current = signal.getsignal(KICK_SIGNAL)
    if callable(current):
        return
    if threading.current_thread() is not threading.main_thread():
        raise AccelError("kvm: the accelerator must be started from the main thread "
                         f"(it installs a handler for {KICK_SIGNAL.name})")
    signal.signal(KICK_SIGNAL, _kick_handler)


@register_type
class KvmAccel(Accel):
    """Hardware virtualization through /dev/kvm, with the in-kernel irqchip and PIT."""

    TYPE = "kvm-accel"
    DESC = "Linux KVM"
    #: As QEMU's kvm_default_props: no nested SVM, MONITOR or ACPI thermal unless asked for.
    CPU_FEATURE_DEFAULTS = {"svm": False, "monitor": False, "acpi": False}

    kernel_irqchip = prop(KERNEL_IRQCHIP, "on", "Configure KVM in-kernel irqchip")

    def instance_init(self) -> None:
        self.kvm_fd = -1
        self.vm_fd = -1
        self.machine: Any = None
        self.caps: dict[int, int] = {}
        self.vcpu_mmap_size = 0
        self.cpuid_entries: list[CpuidEntry] = []
        self.supported_msrs: set[int] = set()
        self.vcpus: list[KvmVcpu] = []
        self._by_cpu: dict[int, KvmVcpu] = {}
        self.memory_listener: KvmMemoryListener | None = None
        self.io_listener: KvmIoListener | None = None
        self._irqchip_reset: list[k.kvm_irqchip] = []
        self._pit_reset: k.kvm_pit_state2 | None = None
        #: Waited on (with the BQL released) by threads that queued work on a vCPU.
        self.bql_cond = threading.Condition(BQL)
        self._step = ""  # the ioctl init_machine is at, for its error message
        self.gsi_router: GsiRouter | None = None

    # -- initialisation -----------------------------------------------------------------------
    def init_machine(self, machine: Any) -> None:
        if self.kernel_irqchip == "off":
            raise AccelError("kvm: kernel-irqchip=off is not supported: vfw's software "
                             "interrupt controllers run only under tcg (use -accel tcg)")
        if self.kernel_irqchip == "split":
            raise AccelError("kvm: kernel-irqchip=split is not supported yet; "
                             "use kernel-irqchip=on")
        try:
            self.kvm_fd = os.open(DEVICE, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise AccelError(f"Could not access KVM kernel module: {_strerror(exc)}") from None
        self._step = "KVM_GET_API_VERSION"
        try:
            self._init_vm(machine)
        except OSError as exc:
            self._teardown()
            raise AccelError(f"failed to initialize kvm: {self._step}: {_strerror(exc)}"
                             ) from None
        except BaseException:
            self._teardown()
            raise

    def _init_vm(self, machine: Any) -> None:
        def vm_ioctl(name: str, request: int, arg: Any = 0) -> int:
            self._step = name
            return k.ioctl(self.vm_fd, request, arg)

        version = k.ioctl(self.kvm_fd, k.KVM_GET_API_VERSION)
        if version != KVM_API_VERSION:
            raise AccelError(f"failed to initialize kvm: KVM API version {version}, need "
                             f"{KVM_API_VERSION}")
        self._step = "KVM_CHECK_EXTENSION"
        for cap, name in REQUIRED_CAPS.items():
            if k.ioctl(self.kvm_fd, k.KVM_CHECK_EXTENSION, cap) <= 0:
                raise AccelError(f"failed to initialize kvm: the kernel lacks {name}")
        for cap in (*REQUIRED_CAPS, *OPTIONAL_CAPS):
            self.caps[cap] = k.ioctl(self.kvm_fd, k.KVM_CHECK_EXTENSION, cap)
        if not self.caps.get(k.KVM_CAP_PIT2):
            raise AccelError("failed to initialize kvm: the kernel lacks KVM_CAP_PIT2")
        self._step = "KVM_CREATE_VM"
        while True:
            try:
                self.vm_fd = k.ioctl(self.kvm_fd, k.KVM_CREATE_VM)
                break
            except InterruptedError:
                continue
        self._step = "KVM_GET_VCPU_MMAP_SIZE"
        self.vcpu_mmap_size = k.ioctl(self.kvm_fd, k.KVM_GET_VCPU_MMAP_SIZE)
        self._step = "KVM_GET_SUPPORTED_CPUID"
        self.cpuid_entries = self._get_supported_cpuid()
        self._step = "KVM_GET_MSR_INDEX_LIST"
        self.supported_msrs = self._get_msr_index_list()
        vm_ioctl("KVM_SET_TSS_ADDR", k.KVM_SET_TSS_ADDR, TSS_ADDR)
        if self.caps.get(k.KVM_CAP_SET_IDENTITY_MAP_ADDR):
            vm_ioctl("KVM_SET_IDENTITY_MAP_ADDR", k.KVM_SET_IDENTITY_MAP_ADDR,
                     ctypes.c_uint64(IDENTITY_MAP_ADDR))
        vm_ioctl("KVM_CREATE_IRQCHIP", k.KVM_CREATE_IRQCHIP)
        vm_ioctl("KVM_CREATE_PIT2", k.KVM_CREATE_PIT2,
                 k.kvm_pit_config(flags=k.KVM_PIT_SPEAKER_DUMMY))
        self._step = "KVM_GET_IRQCHIP"
        self._save_irqchip_reset_state()
        self.machine = machine
        if machine is None:
            return  # probing only (tests): no memory map to follow
        install_kick_signal()
        self._step = "KVM_SET_USER_MEMORY_REGION"
        memory = KvmMemoryListener(self.vm_fd, bool(self.caps.get(k.KVM_CAP_READONLY_MEM)),
                                   self.caps.get(k.KVM_CAP_NR_MEMSLOTS) or 32)
        self.memory_listener = memory
        _add_listener(machine.address_space_memory, memory)
        io = KvmIoListener(self.vm_fd)
        self.io_listener = io
        _add_listener(machine.address_space_io, io)
        machine.reset_hooks.append(self._reset_hook)

    def _get_supported_cpuid(self) -> list[CpuidEntry]:
        n = 64
        while True:
            cpuid = k.kvm_cpuid2(n)
            cpuid.nent = n
            try:
                k.ioctl(self.kvm_fd, k.KVM_GET_SUPPORTED_CPUID, cpuid)
            except OSError as exc:
                if exc.errno == errno.E2BIG and n < 4096:
                    n *= 2
                    continue
                raise
            return [CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
                    for e in cpuid.entries[:cpuid.nent]]

    def supported_cpuid(self, word: Any) -> int:
        """The bits KVM can grant for a CPU model's feature word (the board filters its
        models with this): ``word`` has ``leaf``, ``subleaf`` and ``reg`` ("eax".."edx", or
        "msr" for a feature MSR numbered ``leaf``)."""
        leaf, subleaf, reg = int(word.leaf), int(word.subleaf), str(word.reg)
        if reg == "msr":
            return self._feature_msr(leaf)
        for e in self.cpuid_entries:
            if e.function == leaf and (
                    e.subleaf == subleaf or not e.flags & k.KVM_CPUID_FLAG_SIGNIFCANT_INDEX):
                return int(getattr(e, reg))
        return 0

    def _feature_msr(self, index: int) -> int:
        """A feature MSR's value as KVM offers it (KVM_GET_MSRS on /dev/kvm), 0 if none."""
        msrs = k.kvm_msrs(1)
        msrs.nmsrs = 1
        msrs.entries[0].index = index
        try:
            if k.ioctl(self.kvm_fd, k.KVM_GET_MSRS, msrs) == 1:
                return int(msrs.entries[0].data)
        except OSError:
            pass
        return 0

    def _get_msr_index_list(self) -> set[int]:
        header = k.kvm_msr_list_header(nmsrs=0)
        try:
            k.ioctl(self.kvm_fd, k.KVM_GET_MSR_INDEX_LIST, header)
        except OSError as exc:
            if exc.errno != errno.E2BIG:
                raise
        n = header.nmsrs

        class MsrList(ctypes.Structure):
            _fields_ = [("nmsrs", ctypes.c_uint32), ("indices", ctypes.c_uint32 * max(n, 1))]

        lst = MsrList(nmsrs=n)
        k.ioctl(self.kvm_fd, k.KVM_GET_MSR_INDEX_LIST, lst)
        return set(lst.indices[:lst.nmsrs])

    def _save_irqchip_reset_state(self) -> None:
        """Remember the power-on state of the in-kernel PICs, IOAPIC and PIT."""
        for chip in (k.KVM_IRQCHIP_PIC_MASTER, k.KVM_IRQCHIP_PIC_SLAVE, k.KVM_IRQCHIP_IOAPIC):
            c = k.kvm_irqchip(chip_id=chip)
            k.ioctl(self.vm_fd, k.KVM_GET_IRQCHIP, c)
            self._irqchip_reset.append(c)
        pit = k.kvm_pit_state2()
        k.ioctl(self.vm_fd, k.KVM_GET_PIT2, pit)
        self._pit_reset = pit

    def irqchip_in_kernel(self) -> bool:
        return True

    # -- vCPUs --------------------------------------------------------------------------------
    def create_vcpu(self, cpu: Any) -> None:
        if self.vm_fd < 0:
            raise AccelError("kvm: create_vcpu before init_machine")
        apic_id = int(cpu.apic_id)
        try:
            fd = k.ioctl(self.vm_fd, k.KVM_CREATE_VCPU, apic_id)
        except OSError as exc:
            raise AccelError(f"kvm: cannot create vCPU {getattr(cpu, 'cpu_index', '?')} "
                             f"(APIC id {apic_id}): {_strerror(exc)}") from None
        try:
            vcpu = KvmVcpu(self, cpu, fd, self.vcpu_mmap_size)
        except OSError as exc:
            os.close(fd)
            raise AccelError(f"kvm: cannot map vCPU {apic_id}'s kvm_run: {_strerror(exc)}"
                             ) from None
        try:
            self._setup_vcpu(vcpu)
        except OSError as exc:
            vcpu.close()
            raise AccelError(f"kvm: cannot set up vCPU {apic_id}: {_strerror(exc)}") from None
        self.vcpus.append(vcpu)
        self._by_cpu[id(cpu)] = vcpu

    def _setup_vcpu(self, vcpu: KvmVcpu) -> None:
        cpu = vcpu.cpu
        entries = build_cpuid(self.cpuid_entries, cpu.cpuid, int(cpu.apic_id))
        cpuid = k.kvm_cpuid2(len(entries))
        cpuid.nent = len(entries)
        for i, e in enumerate(entries):
            dst = cpuid.entries[i]
            (dst.function, dst.index, dst.flags, dst.eax, dst.ebx, dst.ecx, dst.edx) = e
        vcpu.ioctl(k.KVM_SET_CPUID2, cpuid)
        advertised = cpu.advertised_msrs() if hasattr(cpu, "advertised_msrs") else []
        vcpu.probe_msrs(self.supported_msrs, list(advertised))
        # The LAPIC's power-on state, with LINT0 = ExtINT and LINT1 = NMI on the BSP (the
        # virtual-wire mode firmware sets up, so the PIC's interrupts reach the BSP).
        lapic = k.kvm_lapic_state()
        vcpu.ioctl(k.KVM_GET_LAPIC, lapic)
        regs = bytearray(lapic.regs)
        if getattr(cpu, "is_bsp", False):
            for offset, mode in ((k.APIC_LVT0, k.APIC_DM_EXTINT), (k.APIC_LVT1, k.APIC_DM_NMI)):
                lvt = int.from_bytes(regs[offset:offset + 4], "little")
                lvt = (lvt & ~0x10700) | (mode << 8)  # unmasked, delivery mode
                regs[offset:offset + 4] = lvt.to_bytes(4, "little")
        vcpu.lapic_reset = bytes(regs)
        vcpu.dirty, vcpu.put_level = True, PUT_RESET

    def vcpu_of_thread(self) -> KvmVcpu | None:
        """The vCPU whose thread is the calling thread, if any."""
        me = threading.current_thread()
        for vcpu in self.vcpus:
            if vcpu.thread is me:
                return vcpu
        return None

    def vcpu_of(self, cpu: Any) -> KvmVcpu:
        try:
            return self._by_cpu[id(cpu)]
        except KeyError:
            raise AccelError(f"kvm: CPU {getattr(cpu, 'cpu_index', '?')} has no vCPU") from None

    def synchronize_state(self, cpu: Any) -> None:
        vcpu = self.vcpu_of(cpu)

        def get() -> None:
            if not vcpu.dirty:
                vcpu.get_state()
                vcpu.dirty = True  # env is now the reference: put it back before running

        vcpu.run_on_vcpu(get)

    def synchronize_post_reset(self, cpu: Any) -> None:
        vcpu = self.vcpu_of(cpu)

        def put() -> None:
            vcpu.put_state(PUT_RESET)

        vcpu.run_on_vcpu(put)

    def _reset_hook(self) -> None:
        """machine.system_reset: interrupt controllers and CPUs to their power-on state."""
        for chip in self._irqchip_reset:
            k.ioctl(self.vm_fd, k.KVM_SET_IRQCHIP, chip)
        if self._pit_reset is not None:
            k.ioctl(self.vm_fd, k.KVM_SET_PIT2, self._pit_reset)
        for vcpu in self.vcpus:
            vcpu.cpu.reset()
            self.synchronize_post_reset(vcpu.cpu)

    # -- interrupts ---------------------------------------------------------------------------
    def set_irq(self, gsi: int, level: int) -> None:
        try:
            k.ioctl(self.vm_fd, k.KVM_IRQ_LINE, k.kvm_irq_level(irq=gsi, level=1 if level else 0))
        except OSError as exc:
            raise AccelError(f"kvm: KVM_IRQ_LINE for GSI {gsi} failed: {_strerror(exc)}"
                             ) from None

    def send_msi(self, address: int, data: int) -> None:
        msi = k.kvm_msi(address_lo=address & 0xFFFFFFFF, address_hi=(address >> 32) & 0xFFFFFFFF,
                        data=data & 0xFFFFFFFF)
        try:
            k.ioctl(self.vm_fd, k.KVM_SIGNAL_MSI, msi)
        except OSError as exc:  # a guest-programmed address/data the kernel refuses
            guest_log.debug("kvm: MSI 0x%x <- 0x%x not delivered: %s", address, data, exc)

    # MSI routes behind eventfds (irqfd.py); the virtio transport uses them under KVM.
    def irqfd_supported(self) -> bool:
        return self.vm_fd >= 0 and bool(self.caps.get(KVM_CAP_IRQFD)) \
            and bool(self.caps.get(KVM_CAP_IRQ_ROUTING))

    def _gsi_router(self) -> GsiRouter:
        if self.gsi_router is None:
            self.gsi_router = GsiRouter(self.vm_fd, self.caps.get(KVM_CAP_IRQ_ROUTING) or 0)
        return self.gsi_router

    def add_msi_irqfd(self, address: int, data: int) -> MsiIrqfd | None:
        if not self.irqfd_supported():
            return None
        try:
            return self._gsi_router().add(address, data)
        except AccelError as exc:
            log.warning("%s; falling back to KVM_SIGNAL_MSI", exc)
            return None

    def update_msi_irqfd(self, route: Any, address: int, data: int) -> None:
        try:
            self._gsi_router().update(route, address, data)
        except OSError as exc:  # a message the kernel refuses: the route keeps the old one
            guest_log.debug("kvm: MSI route 0x%x <- 0x%x refused: %s", address, data, exc)

    def remove_msi_irqfd(self, route: Any) -> None:
        if self.gsi_router is not None:
            self.gsi_router.remove(route)

    def set_guest_debug(self, *args: Any) -> None:  # the gdbstub's breakpoints and steps
        from .guest_debug import set_guest_debug
        set_guest_debug(self, *args)

    # -- running ------------------------------------------------------------------------------
    def kick_vcpus(self) -> None:
        for vcpu in self.vcpus:
            vcpu.kick()
        main_loop().notify()

    def run(self, machine: Any) -> None:
        if machine is not self.machine:
            raise AccelError("kvm: run() with a machine this accelerator was not set up for")
        if not self.vcpus:
            raise AccelError("kvm: the machine has no vCPUs")
        install_kick_signal()
        machine.kick_vcpus = self.kick_vcpus
        loop = main_loop()
        # Load every dirty vCPU before any runs: a running BSP may already send INIT/SIPI to
        # an AP, which a late put would overwrite.
        for vcpu in self.vcpus:
            if vcpu.dirty:
                vcpu.put_state(vcpu.put_level)
        for vcpu in self.vcpus:
            vcpu.start(machine)
        try:
            while not machine.request_event.is_set():
                loop.poll(None)
        finally:
            self._stop_vcpus()

    def _stop_vcpus(self) -> None:
        pending = list(self.vcpus)
        for vcpu in pending:
            vcpu.stop_requested = True
        waited = 0.0
        while pending:
            for vcpu in pending:
                vcpu.kick()
            pending = [v for v in pending if not v.join(REKICK_INTERVAL)]
            waited += REKICK_INTERVAL
            if pending and waited >= STUCK_WARNING and waited < STUCK_WARNING + REKICK_INTERVAL:
                names = ", ".join(f"CPU {v.index}" for v in pending)
                log.warning("kvm: still waiting for %s to stop (busy in a device callback?)",
                            names)

    # -- teardown -----------------------------------------------------------------------------
    def _close(self) -> None:
        if self.gsi_router is not None:
            self.gsi_router.close()
            self.gsi_router = None
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()
        self._by_cpu.clear()
        for fd in (self.vm_fd, self.kvm_fd):
            if fd >= 0:
                os.close(fd)
        self.vm_fd = self.kvm_fd = -1

    def _teardown(self) -> None:
        """Let go of the machine (listeners, hooks) and close the VM."""
        machine = self.machine
        if machine is not None:
            for space, listener in ((machine.address_space_memory, self.memory_listener),
                                    (machine.address_space_io, self.io_listener)):
                if listener is not None:
                    try:
                        space.remove_listener(listener)
                    except ValueError:
                        pass  # its registration failed
                    except AccelError as exc:  # closing the VM frees its slots anyway
                        log.debug("kvm: %s", exc)
            if self._reset_hook in machine.reset_hooks:
                machine.reset_hooks.remove(self._reset_hook)
            if machine.kick_vcpus == self.kick_vcpus:
                machine.kick_vcpus = lambda: None
        self.memory_listener = self.io_listener = None
        self.machine = None
        self._close()

    def instance_finalize(self) -> None:
        self._teardown()
