"""The PC keyboard controller (i8042) with a minimal PS/2 keyboard, and the 0xcf9 reset
control register.

The i8042 does what Linux's probe (drivers/input/serio/i8042.c) and firmware need: status and
command-byte access, the self-test (0xAA → 0x55), interface tests, the AUX loopback used to
test IRQ 12, and the CPU reset line (command 0xFE, or any pulse of output-port bit 0). No mouse
is attached: bytes for the AUX device come back as 0xFE with the timeout bit set, so a guest's
mouse probe fails at once instead of waiting. The keyboard answers the usual PS/2 commands.

Resets go to ``reset_request`` (the board sets it) or, if unset, to ``/machine``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from vfw.irq import IRQ
from vfw.memory import MemoryRegion
from vfw.props import UINT32, prop
from vfw.qom import register_type, resolve_path
from vfw.runstate import ShutdownCause

from .isa import ISADevice

__all__ = ["I8042", "ResetControl"]

guest_log = logging.getLogger("vfw.guest_errors")

# Status register (port 0x64 read).
STAT_OBF = 0x01
STAT_IBF = 0x02
STAT_SYS = 0x04
STAT_CMD = 0x08
STAT_UNLOCKED = 0x10
STAT_AUX_OBF = 0x20
STAT_TIMEOUT = 0x40
STAT_PARITY = 0x80

# Command byte ("controller configuration byte").
CTR_KBD_INT = 0x01
CTR_AUX_INT = 0x02
CTR_SYS = 0x04
CTR_KBD_DISABLE = 0x10
CTR_AUX_DISABLE = 0x20
CTR_TRANSLATE = 0x40

# Output port.
OUT_RESET = 0x01  # 0 holds the CPU in reset
OUT_A20 = 0x02
OUT_ONES = 0xCC

# Controller commands (port 0x64 write).
CMD_READ_CTR = 0x20
CMD_WRITE_CTR = 0x60
CMD_AUX_DISABLE = 0xA7
CMD_AUX_ENABLE = 0xA8
CMD_AUX_TEST = 0xA9
CMD_SELF_TEST = 0xAA
CMD_KBD_TEST = 0xAB
CMD_KBD_DISABLE = 0xAD
CMD_KBD_ENABLE = 0xAE
CMD_READ_INPORT = 0xC0
CMD_READ_OUTPORT = 0xD0
CMD_WRITE_OUTPORT = 0xD1
CMD_WRITE_KBD_OBUF = 0xD2
CMD_WRITE_AUX_OBUF = 0xD3
CMD_WRITE_AUX = 0xD4
CMD_A20_DISABLE = 0xDD
CMD_A20_ENABLE = 0xDF
CMD_READ_TEST_INPUTS = 0xE0
CMD_RESET = 0xFE

# PS/2 replies.
REPLY_ACK = 0xFA
REPLY_RESEND = 0xFE
REPLY_POR = 0xAA
REPLY_ECHO = 0xEE

SELF_TEST_OK = 0x55
DATA_PORT, COMMAND_PORT = 0x60, 0x64
#: Bytes a controller holds for the guest before it starts dropping them.
QUEUE_LIMIT = 256


def _machine_reset() -> None:
    machine = resolve_path("/machine")
    request = getattr(machine, "request_reset", None)
    if request is None:
        guest_log.warning("guest requested a reset but there is no machine to reset")
        return
    request(ShutdownCause.GUEST_RESET)


@register_type
class I8042(ISADevice):
    """The keyboard controller at ports 0x60 (data) and 0x64 (status/command), IRQs 1 and 12."""

    TYPE = "i8042"
    CATEGORY = "input"
    DESC = "PC keyboard controller (i8042) with a PS/2 keyboard"

    def instance_init(self) -> None:
        #: Called for a guest-requested CPU reset; None: ``/machine``'s request_reset.
        self.reset_request: Callable[[], None] | None = None
        #: Called with the new A20 gate state when the guest changes it (board hook).
        self.a20_handler: Callable[[bool], None] | None = None
        self._kbd_irq: IRQ | None = None
        self._aux_irq: IRQ | None = None
        self._queue: deque[tuple[int, bool, bool]] = deque()  # (byte, from aux, timeout)
        self._ram = bytearray(32)
        self._reset_state()

    def _reset_state(self) -> None:
        self.status = STAT_CMD | STAT_UNLOCKED
        self._ram[:] = bytes(32)
        self._ram[0] = CTR_KBD_INT | CTR_AUX_INT
        self.outport = OUT_RESET | OUT_A20 | OUT_ONES
        self._pending_cmd: int | None = None
        self._queue.clear()
        self._obf_aux = False
        self._last = 0
        self._irq_levels = (0, 0)
        # The keyboard's state.
        self._kbd_pending: int | None = None
        self._kbd_scanset = 2
        self._kbd_enabled = True
        self._kbd_leds = 0

    @property
    def ctr(self) -> int:
        """The command byte (controller RAM byte 0)."""
        return self._ram[0]

    # -- life cycle ----------------------------------------------------------------------------
    def realize(self) -> None:
        self._kbd_irq = self.isa_irq(1)
        self._aux_irq = self.isa_irq(12)
        data = MemoryRegion.io("i8042-data", 1, self._read_data_port, self._write_data_port,
                               valid_sizes=(1, 4), impl_sizes=(1, 1))
        cmd = MemoryRegion.io("i8042-cmd", 1, self._read_status_port, self._write_command_port,
                              valid_sizes=(1, 4), impl_sizes=(1, 1))
        self.isa_register_io(DATA_PORT, data)
        self.isa_register_io(COMMAND_PORT, cmd)

    def reset(self) -> None:
        self._reset_state()
        self._update_irq()

    # -- output buffer ---------------------------------------------------------------------------
    def _queue_byte(self, value: int, aux: bool = False, timeout: bool = False) -> None:
        if len(self._queue) >= QUEUE_LIMIT:
            guest_log.debug("i8042: output queue full, byte 0x%02x dropped", value)
            return
        self._queue.append((value & 0xFF, aux, timeout))
        self._fill()

    def _fill(self) -> None:
        """Move the next queued byte into the output buffer if it is empty."""
        if not self.status & STAT_OBF and self._queue:
            value, aux, timeout = self._queue.popleft()
            self._last = value
            self._obf_aux = aux
            self.status |= STAT_OBF
            self.status = (self.status & ~(STAT_AUX_OBF | STAT_TIMEOUT)) | (
                STAT_AUX_OBF if aux else 0) | (STAT_TIMEOUT if timeout else 0)
        self._update_irq()

    def _update_irq(self) -> None:
        full = bool(self.status & STAT_OBF)
        kbd = int(full and not self._obf_aux and bool(self.ctr & CTR_KBD_INT))
        aux = int(full and self._obf_aux and bool(self.ctr & CTR_AUX_INT))
        if (kbd, aux) != self._irq_levels:
            self._irq_levels = (kbd, aux)
            if self._kbd_irq is not None:
                self._kbd_irq.set(kbd)
            if self._aux_irq is not None:
                self._aux_irq.set(aux)

    def put_keyboard_bytes(self, data: bytes) -> None:
        """Scancodes from a host input device (a front end may call this)."""
        if self._kbd_enabled:
            for byte in data:
                self._queue_byte(byte)

    # -- ports -------------------------------------------------------------------------------------
    def _read_status_port(self, offset: int, size: int) -> int:
        return self.status

    def _read_data_port(self, offset: int, size: int) -> int:
        value = self._last
        if self.status & STAT_OBF:
            self.status &= ~(STAT_OBF | STAT_AUX_OBF | STAT_TIMEOUT)
            self._update_irq()  # a fresh edge for the next byte
            self._fill()
        return value

    def _write_command_port(self, offset: int, value: int, size: int) -> None:
        self.status |= STAT_CMD
        self._pending_cmd = None
        cmd = value & 0xFF
        if 0xF0 <= cmd <= 0xFF:  # pulse output-port bits 0-3 low; bit 0 resets the CPU
            if not cmd & 0x01:
                self._request_reset()
        elif cmd == CMD_READ_CTR or 0x21 <= cmd <= 0x3F:
            self._queue_byte(self._ram[cmd & 0x1F])
        elif 0x60 <= cmd <= 0x7F:
            self._pending_cmd = cmd
        elif cmd == CMD_AUX_DISABLE:
            self._set_ctr(self.ctr | CTR_AUX_DISABLE)
        elif cmd == CMD_AUX_ENABLE:
            self._set_ctr(self.ctr & ~CTR_AUX_DISABLE)
        elif cmd in (CMD_AUX_TEST, CMD_KBD_TEST):
            self._queue_byte(0x00)
        elif cmd == CMD_SELF_TEST:
            self.status |= STAT_SYS
            self._queue_byte(SELF_TEST_OK)
        elif cmd == CMD_KBD_DISABLE:
            self._set_ctr(self.ctr | CTR_KBD_DISABLE)
        elif cmd == CMD_KBD_ENABLE:
            self._set_ctr(self.ctr & ~CTR_KBD_DISABLE)
        elif cmd == CMD_READ_INPORT:
            self._queue_byte(0x80)  # keyboard not inhibited
        elif cmd == CMD_READ_OUTPORT:
            self._queue_byte(self.outport)
        elif cmd in (CMD_WRITE_OUTPORT, CMD_WRITE_KBD_OBUF, CMD_WRITE_AUX_OBUF, CMD_WRITE_AUX):
            self._pending_cmd = cmd
        elif cmd == CMD_A20_DISABLE:
            self._set_outport(self.outport & ~OUT_A20)
        elif cmd == CMD_A20_ENABLE:
            self._set_outport(self.outport | OUT_A20)
        elif cmd == CMD_READ_TEST_INPUTS:
            self._queue_byte(0x00)
        else:
            guest_log.debug("i8042: unsupported controller command 0x%02x", cmd)

    def _write_data_port(self, offset: int, value: int, size: int) -> None:
        self.status &= ~STAT_CMD
        value &= 0xFF
        cmd, self._pending_cmd = self._pending_cmd, None
        if cmd is None:
            self._keyboard_command(value)
        elif 0x60 <= cmd <= 0x7F:
            if cmd == CMD_WRITE_CTR:
                self._set_ctr(value)
            else:
                self._ram[cmd & 0x1F] = value
        elif cmd == CMD_WRITE_OUTPORT:
            self._set_outport(value)
        elif cmd == CMD_WRITE_KBD_OBUF:
            self._queue_byte(value)
        elif cmd == CMD_WRITE_AUX_OBUF:
            self._queue_byte(value, aux=True)
        elif cmd == CMD_WRITE_AUX:
            # No mouse: the controller times out waiting for one.
            self._queue_byte(REPLY_RESEND, aux=True, timeout=True)

    def _set_ctr(self, value: int) -> None:
        self._ram[0] = value & 0xFF
        self.status = (self.status & ~STAT_SYS) | (value & CTR_SYS)
        self._update_irq()

    def _set_outport(self, value: int) -> None:
        old = self.outport
        self.outport = value & 0xFF
        if (old ^ value) & OUT_A20 and self.a20_handler is not None:
            self.a20_handler(bool(value & OUT_A20))
        if not value & OUT_RESET:
            self._request_reset()

    def _request_reset(self) -> None:
        if self.reset_request is not None:
            self.reset_request()
        else:
            _machine_reset()

    # -- the PS/2 keyboard ---------------------------------------------------------------
    def _keyboard_command(self, value: int) -> None:
        if self.ctr & CTR_KBD_DISABLE:
            self._set_ctr(self.ctr & ~CTR_KBD_DISABLE)  # writing to it enables the interface
        pending, self._kbd_pending = self._kbd_pending, None
        if pending is not None and value < 0xED:  # the parameter byte of the last command
            if pending == 0xF0 and value == 0:
                self._queue_byte(REPLY_ACK)
                self._queue_byte(self._kbd_scanset)
                return
            if pending == 0xF0 and value in (1, 2, 3):
                self._kbd_scanset = value
            elif pending == 0xED:
                self._kbd_leds = value & 0x07
            self._queue_byte(REPLY_ACK)
            return
        if value == 0xEE:
            self._queue_byte(REPLY_ECHO)
        elif value in (0xED, 0xF0, 0xF3):
            self._kbd_pending = value
            self._queue_byte(REPLY_ACK)
        elif value == 0xF2:  # identify: MF2 keyboard
            self._queue_byte(REPLY_ACK)
            self._queue_byte(0xAB)
            self._queue_byte(0x41 if self.ctr & CTR_TRANSLATE else 0x83)
        elif value == 0xF4:
            self._kbd_enabled = True
            self._queue_byte(REPLY_ACK)
        elif value == 0xF5:
            self._kbd_enabled = False
            self._kbd_scanset = 2
            self._queue_byte(REPLY_ACK)
        elif value == 0xF6:
            self._kbd_scanset = 2
            self._queue_byte(REPLY_ACK)
        elif 0xF7 <= value <= 0xFD:
            self._queue_byte(REPLY_ACK)
        elif value == 0xFF:
            self._kbd_enabled = True
            self._kbd_scanset = 2
            self._kbd_leds = 0
            self._queue_byte(REPLY_ACK)
            self._queue_byte(REPLY_POR)
        else:
            self._queue_byte(REPLY_RESEND)


@register_type
class ResetControl(ISADevice):
    """The reset control register at port 0xcf9 (PIIX3's RCR): writing bit 2 resets the
    machine (0x06 hard, 0x04 soft, both a full reset here). It overlaps the PCI configuration
    address port, so it maps with priority 1."""

    TYPE = "pc-reset-control"
    USER_CREATABLE = False
    DESC = "PIIX reset control register (port 0xcf9)"

    iobase = prop(UINT32, 0xCF9, "I/O port")

    def instance_init(self) -> None:
        #: Called for a guest-requested reset; None: ``/machine``'s request_reset.
        self.reset_request: Callable[[], None] | None = None
        self.rcr = 0

    def realize(self) -> None:
        region = MemoryRegion.io("reset-control", 1, self._read, self._write,
                                 valid_sizes=(1, 1), impl_sizes=(1, 1))
        self.isa_register_io(self.iobase, region, priority=1)

    def reset(self) -> None:
        self.rcr = 0

    def _read(self, offset: int, size: int) -> int:
        return self.rcr

    def _write(self, offset: int, value: int, size: int) -> None:
        if value & 0x04:
            if self.reset_request is not None:
                self.reset_request()
            else:
                _machine_reset()
            return
        self.rcr = value & 0x02  # only the reset type is kept
