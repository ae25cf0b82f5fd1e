"""One software vCPU: binds an X86CPUState, dispatches translated blocks, takes interrupts.

Hot state lives in slots of :class:`TcgCPU` (the ``s`` of translated code): the register list
(``env.regs`` itself), segment bases, the lazy flags, the current TLB dicts and ``exit_req``
(set by kicks and by helpers that change the mode; the dispatcher checks it after every block).
``env.eflags`` holds the non-arithmetic flags while running; ``sync_out`` materialises it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from vfw import log
from vfw.cpu import set_current_cpu
from vfw.main_loop import BQL

from . import flags as F
from . import mmu
from .codegen import Mode
from .consts import (
    ARITH,
    CR0_EM,
    CR0_PE,
    CR0_TS,
    CR4_OSFXSR,
    DESC_B,
    DESC_DPL,
    DESC_DPL_SHIFT,
    DESC_L,
    EFER_LMA,
    EXC_DF,
    EXC_PF,
    IF,
    M32,
    M64,
    MP_STATE_INIT_RECEIVED,
    MP_STATE_RUNNABLE,
    MP_STATE_SIPI_RECEIVED,
    MP_STATE_UNINITIALIZED,
    R_CS,
    R_DS,
    R_ES,
    R_SS,
    VM,
)
from .debug import DebugExit, VcpuDebug, debug_stop
from .excp import CpuException, SmcRestart
from .tbcache import TB, TBCache

#: cflags: translate a block of exactly one instruction / without self-loops (counting).
CF_ONE, CF_COUNT = 1, 2

_CONTRIBUTORY = {0, 10, 11, 12, 13}


class TcgCPU:
    """The software CPU of one vfw CPU object."""

    __slots__ = (
        "R", "__weakref__", "cpu", "cpl", "env", "exit_req", "fa", "fb", "fc", "features",
        "fop", "fr", "io", "jc", "jcs", "lin_mask", "lma", "machine", "mem", "mem_gen",
        "mode", "mode_key", "modes", "nmi_blocked", "on_reset", "rt", "sb", "smc_tb", "tbc",
        "tlbs", "translators", "tsc_base_ns", "w_rev", "wt", "xt", "delivering", "insn_count",
        "halt_hook", "_env_id", "nonglobal", "jc_index", "debug",
    )

    def __init__(self, tbc: TBCache, cpu: Any, machine: Any):
        self.tbc = tbc
        self.cpu = cpu
        self.machine = machine
        self.mem = machine.address_space_memory
        self.io = machine.address_space_io
        self.env: Any = cpu.env
        self.R: list[int] = self.env.regs
        self.sb = [0] * 6
        self.fop = F.FOP_EFLAGS
        self.fa = self.fb = self.fr = self.fc = 0
        self.exit_req = True
        self.tlbs: dict[int, tuple[dict[int, Any], dict[int, Any], dict[int, int]]] = {
            0: ({}, {}, {}), 3: ({}, {}, {})}
        self.rt, self.wt, self.xt = self.tlbs[0]
        self.w_rev: dict[int, list[tuple[dict[int, Any], int]]] = {}
        #: virtual pages with TLB entries that a CR3 write must drop (not global pages)
        self.nonglobal: set[int] = set()
        #: virtual page -> jump-cache entries of blocks with code on it
        self.jc_index: dict[int, list[tuple[dict[int, Any], int]]] = {}
        self.jcs: dict[Any, dict[int, Any]] = {}
        self.jc: dict[int, Any] = {}
        self.modes: dict[Any, Mode] = {}
        self.translators: dict[Any, Any] = {}
        self.mode_key: Any = None
        self.mode: Mode = None  # type: ignore[assignment]
        self.cpl = 0
        self.lma = False
        self.lin_mask = M32
        self.mem_gen = -1
        self.smc_tb: TB | None = None
        self.nmi_blocked = False
        self.delivering = -1
        self.insn_count = 0
        self.tsc_base_ns = 0
        self.features: frozenset[str] = frozenset()
        self.on_reset: Callable[[], None] | None = None
        self.halt_hook: Callable[[], None] | None = None
        #: breakpoints / single step armed by a debugger (debug.py); None: no checks at all
        self.debug: VcpuDebug | None = None
        self._env_id = 0
        tbc.cpus.append(self)
        self.sync_in()

    # -- state binding -----------------------------------------------------------------------
    def sync_in(self, now_ns: int | None = None) -> None:
        """Take ``cpu.env`` as the truth (after a reset or a write by someone else).

        ``env.tsc`` is the TSC at ``now_ns`` (default: now): vCPUs synced together get one
        timestamp, so TSCs reset together stay exactly in step (Linux's TSC warp check
        between CPUs tolerates no skew at all)."""
        from .system import tsc_now_ns

        env = self.cpu.env
        self.env = env
        self.R = env.regs
        self._env_id = id(env.regs)
        self.fop = F.FOP_EFLAGS
        self.fr = env.eflags & ARITH
        self.features = _features(self.cpu)
        self.tsc_base_ns = tsc_now_ns() if now_ns is None else now_ns
        self.tlb_flush()
        self.refresh_segments()

    def sync_out(self, now_ns: int | None = None) -> None:
        """Materialise the lazy flags into ``env.eflags`` and the running TSC into
        ``env.tsc`` as of ``now_ns`` (others may read the state now)."""
        from .consts import M64
        from .system import tsc_now_ns

        env = self.env
        now = tsc_now_ns() if now_ns is None else now_ns
        env.tsc = (env.tsc + now - self.tsc_base_ns) & M64
        self.tsc_base_ns = now
        env.eflags = (env.eflags & ~ARITH) | F.FLAGFN[self.fop](self.fa, self.fb, self.fr,
                                                                self.fc) | 2
        self.fop = F.FOP_EFLAGS
        self.fr = env.eflags & ARITH

    def eflags(self) -> int:
        """The architectural EFLAGS now."""
        return int(self.env.eflags & ~ARITH) | F.FLAGFN[self.fop](self.fa, self.fb, self.fr,
                                                                   self.fc) | 2

    def set_eflags(self, value: int) -> None:
        self.env.eflags = (value & 0x3F7FD7) | 2
        self.fop = F.FOP_EFLAGS
        self.fr = value & ARITH

    def refresh_segments(self) -> None:
        """Segment registers changed: bases, mode, CPL, TLB set."""
        env = self.env
        sb = self.sb
        for i in range(6):
            sb[i] = env.segs[i].base
        self.recompute_mode()

    def recompute_mode(self) -> None:
        env = self.env
        cs = env.segs[R_CS]
        ss = env.segs[R_SS]
        lma = bool(env.efer & EFER_LMA)
        pe = bool(env.cr[0] & CR0_PE)
        if lma and cs.flags & DESC_L:
            bits = 64
        elif pe and cs.flags & DESC_B:
            bits = 32
        elif not pe and cs.flags & DESC_B:
            bits = 32  # "unreal" big real mode code is very rare; follow the descriptor
        else:
            bits = 16
        if not pe:
            cpl = 0
        elif env.eflags & VM:
            cpl = 3
        else:
            cpl = (ss.flags & DESC_DPL) >> DESC_DPL_SHIFT
        flat = bits == 64 or all(env.segs[i].base == 0 for i in (R_ES, R_SS, R_DS))
        key = (bits, bool(ss.flags & DESC_B), cpl, pe, lma, flat, 0 if bits == 64 else cs.base,
               env.cr[0] & (CR0_TS | CR0_EM), bool(env.cr[4] & CR4_OSFXSR))
        if cpl != self.cpl or self.mode is None:
            self.cpl = cpl
            self.rt, self.wt, self.xt = self.tlbs[3 if cpl == 3 else 0]
        self.lma = lma
        self.lin_mask = M64 if lma else M32
        if key != self.mode_key:
            mode = self.modes.get(key)
            if mode is None:
                mode = self.modes[key] = Mode(bits, key[1], cpl, pe, lma, flat, key[6], key[7],
                                              key[8], self.features)
            self.mode = mode
            self.mode_key = key
            jc = self.jcs.get(key)
            if jc is None:
                jc = self.jcs[key] = {}
            self.jc = jc
        self.exit_req = True

    # -- TLB ---------------------------------------------------------------------------------
    def tlb_flush(self) -> None:
        """Drop every translation (CR4/CR0 paging changes, INVLPG of a large area...)."""
        for rt, wt, xt in self.tlbs.values():
            rt.clear()
            wt.clear()
            xt.clear()
        self.w_rev.clear()
        self.nonglobal.clear()
        self.jc_flush()
        self.mem_gen = self.mem.generation

    def tlb_flush_nonglobal(self) -> None:
        """A CR3 write: drop translations except those of global pages (CR4.PGE)."""
        from .consts import CR4_PGE

        if not self.env.cr[4] & CR4_PGE:
            self.tlb_flush()
            return
        tlbs = list(self.tlbs.values())
        index = self.jc_index
        for vpage in self.nonglobal:
            for rt, wt, xt in tlbs:
                rt.pop(vpage, None)
                wt.pop(vpage, None)
                xt.pop(vpage, None)
            for jc, rip in index.pop(vpage, ()):
                jc.pop(rip, None)
        self.nonglobal.clear()

    def tlb_flush_page(self, lin: int) -> None:
        vpage = (lin & self.lin_mask) >> 12
        for rt, wt, xt in self.tlbs.values():
            rt.pop(vpage, None)
            wt.pop(vpage, None)
            xt.pop(vpage, None)
        for jc, rip in self.jc_index.pop(vpage, ()):
            jc.pop(rip, None)

    def tlb_overflow(self) -> None:
        """The data TLB grew too big: empty it (code translations stay)."""
        for rt, wt, _xt in self.tlbs.values():
            rt.clear()
            wt.clear()
        self.w_rev.clear()

    def jc_flush(self) -> None:
        for jc in self.jcs.values():
            jc.clear()
        self.jc_index.clear()

    def drop_write_entries(self, ppage: int) -> None:
        for wt, vpage in self.w_rev.pop(ppage, ()):
            wt.pop(vpage, None)

    def memory_map_changed(self) -> None:
        self.tbc.pviews.clear()
        for cpu in self.tbc.cpus:
            cpu.tlb_flush()
            cpu.exit_req = True

    def check_memory_map(self) -> None:
        if self.mem.generation != self.mem_gen:
            self.memory_map_changed()

    # -- translation ---------------------------------------------------------------------------
    def lookup(self, rip: int, cflags: int = 0) -> Any:
        """The function of the block at ``rip`` (translating it if needed)."""
        try:
            if self.debug is not None:  # the slow path is where breakpoints are seen
                return self.debug.lookup(self, rip, cflags)
            return self._lookup(rip, cflags)
        except CpuException:
            self.env.rip = rip  # a fetch fault belongs to the instruction at rip
            raise

    def _lookup(self, rip: int, cflags: int) -> Any:
        mode = self.mode
        lin = (mode.cs_base + rip) & self.lin_mask
        vpage = lin >> 12
        pp = self.xt.get(vpage)
        if pp is None:
            pp = mmu.fill(self, lin, mmu.EXEC) >> 12
        phys = (pp << 12) | (lin & 0xFFF)
        key = (phys, rip, self.mode_key, cflags)
        tbc = self.tbc
        tb = tbc.tbs.get(key)
        if tb is not None and not self._verify(tb, lin):
            tbc.invalidate(tb)
            tb = None
        if tb is None:
            tb = self._translate(rip, lin, phys, key, cflags)
        if not cflags:
            jc = self.jc
            jc[rip] = tb.fn
            tb.jc_refs.append((jc, rip))
            ent = (jc, rip)
            index = self.jc_index
            lst = index.get(vpage)
            if lst is None:
                index[vpage] = [ent]
            else:
                lst.append(ent)
            for lp in set(tb.lpages):  # an INVLPG of any page of the block drops it
                if lp != vpage:
                    index.setdefault(lp, []).append(ent)
        return tb.fn

    def _verify(self, tb: TB, lin: int) -> bool:
        """Whether a block found by physical address still holds here: its other pages map
        to the same physical pages in this address space, and its bytes are unchanged."""
        first = lin >> 12
        for (ppage, off, data), lp in zip(tb.pages, tb.lpages, strict=True):
            if lp != first:
                pp = self.xt.get(lp)
                if pp is None:
                    try:
                        pp = mmu.fill(self, lp << 12, mmu.EXEC) >> 12
                    except CpuException:
                        return False  # translated again, it ends before that page
                if pp != ppage:
                    return False
            views = mmu.page_views(self, ppage)
            if views is None or views[0][off:off + len(data)] != data:
                return False
        return True

    def _translate(self, rip: int, lin: int, phys: int, key: tuple[Any, ...], cflags: int
                   ) -> TB:
        from .runtime import NS
        from .translate import Translator

        mode = self.mode
        tr = self.translators.get(self.mode_key)
        if tr is None:
            unimp = log.write if log.enabled("unimp") else None
            tr = self.translators[self.mode_key] = Translator(
                mode, (lambda m: log.write(m + "\n")) if unimp else None)
        tr.stop_at = self.debug.stop_at if self.debug is not None else frozenset()
        pages: dict[int, tuple[int, bytearray]] = {}
        first_vpage = lin >> 12
        lin_mask = self.lin_mask

        def fetch(pos: int, n: int, strict: bool = False) -> bytes:
            out = bytearray()
            a = (mode.cs_base + pos) & lin_mask
            while n > 0:
                vpage = a >> 12
                off = a & 0xFFF
                take = min(n, 4096 - off)
                try:
                    pp = self.xt.get(vpage)
                    if pp is None:
                        pp = mmu.fill(self, a, mmu.EXEC) >> 12
                except CpuException:
                    if vpage == first_vpage or strict:
                        raise
                    break
                views = mmu.page_views(self, pp)
                if views is None:
                    break  # executing from MMIO is not supported
                chunk = bytes(views[0][off:off + take])
                out += chunk
                ent = pages.get(vpage)
                if ent is None:
                    pages[vpage] = (pp, bytearray())
                n -= take
                a = (a + take) & lin_mask
            return bytes(out)

        block = tr.translate(fetch, rip, 1 if cflags & CF_ONE else 0,
                             allow_loop=not cflags)
        # The exact guest bytes the block was made from (a trace skips over parts of its
        # pages and may follow calls onto others), per run within a page.
        recorded: list[tuple[int, int, bytes]] = []
        lpages: list[int] = []
        for a, b in block.spans:
            pos = (lin + a) & lin_mask
            left = b - a
            while left > 0:
                vpage = pos >> 12
                off = pos & 0xFFF
                take = min(left, 4096 - off)
                ent = pages.get(vpage)
                pp = ent[0] if ent is not None else phys >> 12
                views = mmu.page_views(self, pp)
                data = bytes(views[0][off:off + take]) if views is not None else b""
                recorded.append((pp, off, data))
                lpages.append(vpage)
                left -= take
                pos = (pos + take) & lin_mask
        if log.enabled("in_asm"):
            lines = [f"IN: (tcg, {mode.bits}-bit)"]
            lines += [f"0x{(mode.cs_base + x.addr) & lin_mask:016x}:  {tr.dec.describe(x)}"
                      for x in block.insns]
            log.write("\n".join(lines) + "\n\n")
        if log.enabled("op"):
            log.write(f"OP: block at {rip:#x}\n{block.source}\n")
        code = compile(block.source, f"<tcg {block.name}>", "exec")
        ns: dict[str, Any] = {}
        exec(code, NS, ns)
        tb = TB(key, ns["tb"], block.ninsns, block.size, recorded, block.meta, lpages)
        self.tbc.add(tb, len(block.source))
        return tb

    # -- execution -----------------------------------------------------------------------------
    def run_blocks(self, n: int) -> int:
        """Execute up to ``n`` blocks (fewer if ``exit_req``); return the budget left."""
        s = self
        R = self.R
        get = self.jc.get
        lookup = self.lookup
        rip = self.env.rip
        while n > 0:
            fn = get(rip)
            if fn is None:
                fn = lookup(rip)
            rip = fn(s, R)
            n -= 1
            if s.exit_req:
                break
        self.env.rip = rip
        return n

    def run_blocks_logged(self, n: int) -> int:
        """run_blocks with ``-d exec`` / ``-d cpu`` tracing."""
        rip = self.env.rip
        while n > 0:
            fn = self.jc.get(rip) or self.lookup(rip)
            if log.enabled("cpu"):
                self.env.rip = rip
                log.write(self.dump_state())
            if log.enabled("exec"):
                log.write(f"Trace {self.cpu.cpu_index}: [{self.mode.cs_base:08x}/"
                          f"{(self.mode.cs_base + rip) & self.lin_mask:016x}]\n")
            rip = fn(self, self.R)
            n -= 1
            if self.exit_req:
                break
        self.env.rip = rip
        return n

    def run_counted(self, max_insns: int) -> int:
        """Execute about ``max_insns`` instructions with blocks that count; return the count."""
        done = 0
        rip = self.env.rip
        while done < max_insns:
            left = max_insns - done
            fn = self.lookup(rip, CF_COUNT if left >= 48 else CF_ONE)
            tb = self.tbc.code2tb.get(fn.__code__)
            rip = fn(self, self.R)
            done += tb.ninsns if tb is not None else 1
            if self.exit_req:
                break
        self.env.rip = rip
        return done

    def step(self, budget: int, counted: bool = False) -> int:
        """Run until the budget (blocks, or instructions if counted) is spent, the CPU halts
        or a request is pending. Returns the work done."""
        done = 0
        machine = self.machine
        while done < budget:
            if self.exit_req:
                self.handle_exit_req()
            env = self.env
            if env.halted or env.mp_state != MP_STATE_RUNNABLE:
                break
            if machine.request_event.is_set():
                break
            try:
                if self.env.interrupt_shadow:
                    self.run_one()
                    done += 1
                    continue
                if counted:
                    done += self.run_counted(budget - done)
                elif log.enabled("exec") or log.enabled("cpu"):
                    done += budget - done - self.run_blocks_logged(budget - done)
                else:
                    done += budget - done - self.run_blocks(budget - done)
            except CpuException as exc:
                self.unwind(exc)
                done += 1
                self.raise_exception(exc)
            except SmcRestart as exc:
                self.unwind(exc)
                tb = self.smc_tb
                self.smc_tb = None
                if tb is not None:
                    # The store, run again alone, invalidates whatever else it changes.
                    self.tbc.invalidate(tb)
                try:
                    self.run_one()
                except CpuException as exc2:
                    self.unwind(exc2)
                    self.raise_exception(exc2)
            except DebugExit as exc:
                debug_stop(self, exc)
                break
            except BaseException as exc:
                self.unwind(exc)
                raise
        return done

    def unwind(self, exc: BaseException) -> None:
        """A block raised: commit the architectural state of the instruction that raised,
        from the block frame's locals (see codegen)."""
        metas = self.tbc.meta
        tb = exc.__traceback__
        found = None
        meta = None
        while tb is not None:  # the innermost block frame (PLAIN calls one from another)
            m = metas.get(tb.tb_frame.f_code)
            if m is not None:
                found, meta = tb, m
            tb = tb.tb_next
        tb = found
        if tb is None or meta is None:
            return
        loc = tb.tb_frame.f_locals
        i = meta.linemap[tb.tb_lineno - 1]
        R = self.R
        if meta.inline[i]:
            for r in meta.written:
                v = loc.get(f"r{r}")
                if v is not None:  # unbound: not written yet when it raised
                    R[r] = v
        k = meta.fk[i]
        if k >= 0:
            self.fop = k
            for f in F.FIELDS[F.kind_of(k)]:
                setattr(self, f, loc[f])
        self.env.rip = meta.rips[i]

    def run_plain(self, R: list[int], rip: int) -> int:
        """Run the block at ``rip`` once without loop specialisation (a loop block's entry
        check failed) and return the next RIP."""
        fn = self.lookup(rip, CF_COUNT)
        return int(fn(self, R))

    def run_one(self) -> None:
        """Execute exactly one instruction (interrupt shadow, self-modifying code)."""
        shadow = self.env.interrupt_shadow
        fn = self.lookup(self.env.rip, CF_ONE)
        self.env.rip = fn(self, self.R)
        if shadow:
            self.env.interrupt_shadow = False
        self.exit_req = True

    def handle_exit_req(self) -> None:
        self.exit_req = False
        env = self.env
        if env.regs is not self.R or self.env is not self.cpu.env:
            self.sync_in()
            self.exit_req = False
        if self.mem.generation != self.mem_gen:
            self.memory_map_changed()
            self.exit_req = False
        mp = env.mp_state
        if mp == MP_STATE_INIT_RECEIVED:
            self.do_init()
            return
        if mp == MP_STATE_SIPI_RECEIVED:
            self.do_sipi()
        if env.mp_state != MP_STATE_RUNNABLE:
            return
        if env.interrupt_shadow:
            return
        if self.debug is not None and self.debug.single_step:
            return  # as QEMU's gdbstub steps (SSTEP_NOIRQ): the step runs the instruction
        if env.nmi_pending and not self.nmi_blocked:
            env.nmi_pending = False
            self.nmi_blocked = True
            env.halted = False
            self.deliver_event(2)
            return
        if env.interrupt_request and env.eflags & IF:
            ic = getattr(self.cpu, "interrupt_controller", None)
            if ic is None:
                env.interrupt_request = False
                return
            with BQL:
                set_current_cpu(self.cpu)
                vector = ic.acknowledge() if ic.has_interrupt() else -1
                if vector < 0:
                    env.interrupt_request = False
            if vector >= 0:
                env.halted = False
                self.deliver_event(vector)
                self.exit_req = True  # more may be pending

    def runnable(self) -> bool:
        """Whether the vCPU has work (handles INIT/SIPI, wakes a halted CPU on interrupts)."""
        env = self.env
        mp = env.mp_state
        if mp == MP_STATE_INIT_RECEIVED:
            self.do_init()
            return False
        if mp == MP_STATE_SIPI_RECEIVED:
            self.do_sipi()
        if env.mp_state != MP_STATE_RUNNABLE:
            return False
        if not env.halted:
            return True
        if env.nmi_pending:
            return True
        if env.interrupt_request and env.eflags & IF:
            ic = getattr(self.cpu, "interrupt_controller", None)
            if ic is not None:
                with BQL:
                    set_current_cpu(self.cpu)
                    if ic.has_interrupt():
                        return True
            env.interrupt_request = False
        return False

    def do_init(self) -> None:
        from .system import tsc_now_ns

        env = self.env
        bsp = bool(getattr(self.cpu, "is_bsp", False))
        now = tsc_now_ns()
        running_tsc = env.tsc + now - self.tsc_base_ns  # INIT does not reset the TSC
        cpu_reset = getattr(self.cpu, "reset", None)
        if cpu_reset is not None:  # the board's INIT: keeps the APIC base and some MSRs
            cpu_reset(init=True)
            env = self.env = self.cpu.env
        elif hasattr(env, "reset"):
            apic_base = env.apic_base
            env.reset(bsp)
            env.apic_base = apic_base
        env.tsc = running_tsc
        env.mp_state = MP_STATE_RUNNABLE if bsp else MP_STATE_UNINITIALIZED
        env.halted = not bsp
        self.nmi_blocked = False
        self.sync_in(now)

    def do_sipi(self) -> None:
        env = self.env
        if env.mp_state != MP_STATE_SIPI_RECEIVED:
            return
        vector = env.sipi_vector & 0xFF
        cs = env.segs[R_CS]
        cs.selector = vector << 8
        cs.base = vector << 12
        cs.limit = 0xFFFF
        env.rip = 0
        env.halted = False
        env.mp_state = MP_STATE_RUNNABLE
        self.refresh_segments()

    # -- exceptions and interrupts --------------------------------------------------------------
    def interrupt(self, vector: int, hw: bool = False, soft: bool = False,
                  error_code: int | None = None, next_rip: int | None = None) -> None:
        from .seg import deliver

        if log.enabled("int"):
            kind = "hw" if hw else ("soft" if soft else "exc")
            err = "" if error_code is None else f" err={error_code:#x}"
            extra = f" CR2={self.env.cr[2]:#x}" if vector == EXC_PF and not hw else ""
            log.write(f"tcg: cpu{self.cpu.cpu_index} {kind} v={vector:#04x}{err} "
                      f"rip={self.env.rip:#x} cpl={self.cpl}{extra}\n")
        deliver(self, vector, hw=hw, soft=soft, error_code=error_code, next_rip=next_rip)

    def deliver_event(self, vector: int) -> None:
        """Deliver an external interrupt or NMI; a fault while delivering it (no IDT, a
        bad gate) is then delivered like any fault, up to #DF and a triple fault."""
        try:
            self.interrupt(vector, hw=True)
        except CpuException as exc:
            self.raise_exception(exc)

    def raise_exception(self, exc: CpuException) -> None:
        """Deliver a fault raised by an instruction, with double/triple fault rules."""
        vector, err, cr2 = exc.vector, exc.error_code, exc.cr2
        first = -1
        while True:
            if first >= 0:
                if first == EXC_DF:
                    self.triple_fault()
                    return
                if (first in _CONTRIBUTORY and vector in _CONTRIBUTORY) or (
                        first == EXC_PF and (vector in _CONTRIBUTORY or vector == EXC_PF)):
                    vector, err, cr2 = EXC_DF, 0, None
            if cr2 is not None and vector == EXC_PF:
                self.env.cr[2] = cr2
            try:
                self.interrupt(vector, error_code=err, next_rip=self.env.rip)
                break
            except CpuException as nested:
                first = vector
                vector, err, cr2 = nested.vector, nested.error_code, nested.cr2
        self.exit_req = True

    def triple_fault(self) -> None:
        from vfw.runstate import ShutdownCause

        if log.enabled("int") or log.enabled("guest_errors"):
            log.write(f"tcg: cpu{self.cpu.cpu_index} triple fault at rip={self.env.rip:#x}\n")
        self.delivering = -1
        self.machine.request_reset(ShutdownCause.GUEST_RESET)

    # -- debugging -----------------------------------------------------------------------------
    def dump_state(self) -> str:
        env = self.env
        r = self.R
        names = ("RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "RSP")
        idx = (0, 3, 1, 2, 6, 7, 5, 4)
        out = [" ".join(f"{n}={r[i]:016x}" for n, i in zip(names[:4], idx[:4], strict=True)),
               " ".join(f"{n}={r[i]:016x}" for n, i in zip(names[4:], idx[4:], strict=True)),
               " ".join(f"R{i}={r[i]:016x}" for i in range(8, 12)),
               " ".join(f"R{i}={r[i]:016x}" for i in range(12, 16)),
               f"RIP={env.rip:016x} RFL={self.eflags():08x} CPL={self.cpl}"]
        for name, i in zip(("ES", "CS", "SS", "DS", "FS", "GS"), range(6), strict=True):
            sg = env.segs[i]
            out.append(f"{name} ={sg.selector:04x} {sg.base:016x} {sg.limit:08x} {sg.flags:08x}")
        out.append(f"CR0={env.cr[0]:08x} CR2={env.cr[2]:016x} CR3={env.cr[3]:016x} "
                   f"CR4={env.cr[4]:08x} EFER={env.efer:016x}")
        return "\n".join(out) + "\n"

    def now(self) -> float:
        return time.monotonic()


def _features(cpu: Any) -> frozenset[str]:
    """The CPUID features that change how instructions decode or behave."""
    feats: set[str] = set()
    fn = getattr(cpu, "cpuid", None)
    if fn is None:
        return frozenset()
    try:
        _a, _b, c1, d1 = fn(1, 0)
        _a, b7, c7, _d = fn(7, 0)
        _a, _b, c81, d81 = fn(0x80000001, 0)
    except Exception:  # noqa: BLE001 - a board without CPUID leaves: no optional features
        return frozenset()
    if c1 & (1 << 23):
        feats.add("popcnt")
    if b7 & (1 << 3):
        feats.add("bmi1")
    if b7 & (1 << 0):
        feats.add("fsgsbase")
    if c81 & (1 << 5):
        feats.add("abm")
    if d81 & (1 << 27):
        feats.add("rdtscp")
    if c1 & (1 << 26):
        feats.add("xsave")
    if c7 & (1 << 22):
        feats.add("rdpid")
    if d1 & (1 << 25):
        feats.add("sse")
    return frozenset(feats)
