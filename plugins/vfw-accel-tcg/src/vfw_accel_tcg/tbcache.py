"""Translated blocks: the shared cache keyed by physical address and mode, code-page tracking.

A block is found by ``(physical address, RIP, mode key, cflags)``. Each vCPU also keeps jump
caches (RIP -> function, one dict per mode) in front of it; those are emptied on TLB flushes.
Pages holding translated code are tracked so that stores to them invalidate the blocks (the
write TLB never maps such pages, so every store reaches the slow path). A store invalidates only
the blocks made from the bytes it changes, as QEMU's does: Linux patches its text at boot
(alternatives, static keys) on pages whose other functions keep running, and dropping every
block of the page at each patch made a quarter of all translations. A page that keeps taking
stores outside its code is taken for a data page and dropped whole, so it gets its fast writes
back. Blocks also remember their bytes and are re-checked on a slow lookup, which catches DMA
into code pages.
"""

from __future__ import annotations

import weakref
from types import CodeType
from typing import Any

from vfw import log

#: Stores that change no translated byte of a page before it is taken for a data page.
DATA_PAGE_STORES = 256


class TB:
    """One translated block."""

    __slots__ = ("code", "fn", "jc_refs", "key", "lpages", "meta", "ninsns", "pages", "ranges",
                 "size", "valid")

    def __init__(self, key: tuple[Any, ...], fn: Any, ninsns: int, size: int,
                 pages: list[tuple[int, int, bytes]], meta: Any = None,
                 lpages: list[int] | None = None):
        self.key = key
        self.meta = meta
        self.fn = fn
        self.code: CodeType = fn.__code__
        self.ninsns = ninsns
        self.size = size
        #: (physical page, offset in page, bytes) of each run of guest code it was made from:
        #: a store to any of them invalidates it
        self.pages = pages
        #: the linear page number of each entry of ``pages`` (a trace may follow calls and
        #: jumps onto other pages; those mappings are checked when it is found again)
        self.lpages = lpages if lpages is not None else []
        #: (physical page, start, end offset) of the same runs
        self.ranges = [(ppage, off, off + max(len(data), 1)) for ppage, off, data in pages]
        self.jc_refs: list[tuple[dict[int, Any], int]] = []
        self.valid = True

    def overlaps(self, phys: int, size: int) -> bool:
        for ppage, start, end in self.ranges:
            base = ppage << 12
            if phys < base + end and base + start < phys + size:
                return True
        return False

    def mask_on(self, ppage: int) -> int:
        """Bit mask of the bytes of page ``ppage`` the block was made from."""
        mask = 0
        for pp, start, end in self.ranges:
            if pp == ppage:
                mask |= ((1 << (end - start)) - 1) << start
        return mask


class TBCache:
    """Blocks shared by every vCPU of one accelerator."""

    def __init__(self, limit_bytes: int):
        self.tbs: dict[tuple[Any, ...], TB] = {}
        self.code_pages: dict[int, list[TB]] = {}
        #: physical page -> bit mask of its bytes that blocks were made from (may be stale
        #: high after invalidations: it only decides whether to look at the blocks)
        self.code_mask: dict[int, int] = {}
        #: physical page -> stores that hit no block since a block was last made there
        self.data_stores: dict[int, int] = {}
        self.code2tb: dict[CodeType, TB] = {}
        #: code object -> BlockMeta, kept while the function exists (even if invalidated)
        self.meta: weakref.WeakKeyDictionary[CodeType, Any] = weakref.WeakKeyDictionary()
        #: physical page -> (read view, write view or None) of RAM, None for non-RAM
        self.pviews: dict[int, Any] = {}
        self.limit = limit_bytes
        self.used = 0
        self.cpus: list[Any] = []
        self.translations = 0

    def add(self, tb: TB, source_len: int) -> None:
        if self.used + source_len > self.limit:
            self.flush()
        self.used += source_len
        self.tbs[tb.key] = tb
        self.code2tb[tb.code] = tb
        self.meta[tb.code] = tb.meta
        self.translations += 1
        for ppage in {pp for pp, _off, _data in tb.pages}:
            bits = tb.mask_on(ppage)
            self.data_stores.pop(ppage, None)
            lst = self.code_pages.get(ppage)
            if lst is None:
                self.code_pages[ppage] = [tb]
                self.code_mask[ppage] = bits
                for cpu in self.cpus:
                    cpu.drop_write_entries(ppage)
            else:
                lst.append(tb)
                self.code_mask[ppage] |= bits

    def invalidate(self, tb: TB) -> None:
        if not tb.valid:
            return
        tb.valid = False
        if self.tbs.get(tb.key) is tb:
            del self.tbs[tb.key]
        self.code2tb.pop(tb.code, None)
        for jc, rip in tb.jc_refs:
            if jc.get(rip) is tb.fn:
                del jc[rip]
        tb.jc_refs.clear()

    def hits_code(self, phys: int, size: int) -> bool:
        """Whether a store of ``size`` bytes at ``phys`` (a code page) may change translated
        bytes. A store that does not counts towards taking the page for a data page; when it
        is, its blocks are dropped (and False returned)."""
        ppage = phys >> 12
        mask = self.code_mask.get(ppage)
        if mask is None:
            return False
        off = phys & 0xFFF
        size = min(size, 4096 - off)
        if (mask >> off) & ((1 << size) - 1):
            return True
        n = self.data_stores.get(ppage, 0) + 1
        if n < DATA_PAGE_STORES:
            self.data_stores[ppage] = n
        else:
            self.invalidate_page(ppage)
        return False

    def invalidate_range(self, phys: int, size: int) -> None:
        """Drop the blocks made from any of ``size`` bytes at ``phys`` (within one page)."""
        ppage = phys >> 12
        tbs = self.code_pages.get(ppage)
        if not tbs:
            return
        off = phys & 0xFFF
        size = min(size, 4096 - off)
        keep: list[TB] = []
        mask = 0
        dropped = 0
        for tb in tbs:
            if not tb.valid:
                continue
            if tb.overlaps(phys, size):
                self.invalidate(tb)
                dropped += 1
                continue
            keep.append(tb)
            mask |= tb.mask_on(ppage)
        if dropped and log.enabled("mmu"):
            log.write(f"tcg: invalidating {dropped} block(s) at {phys:#x}+{size}\n")
        if keep:
            self.code_pages[ppage] = keep
            self.code_mask[ppage] = mask
        else:
            self._forget_page(ppage)

    def _forget_page(self, ppage: int) -> None:
        self.code_pages.pop(ppage, None)
        self.code_mask.pop(ppage, None)
        self.data_stores.pop(ppage, None)

    def invalidate_page(self, ppage: int) -> None:
        tbs = self.code_pages.get(ppage)
        self._forget_page(ppage)
        if not tbs:
            return
        if log.enabled("mmu"):
            log.write(f"tcg: invalidating {len(tbs)} block(s) on page {ppage << 12:#x}\n")
        for tb in tbs:
            self.invalidate(tb)

    def flush(self) -> None:
        """Drop every block (the cache is full, or the memory map changed)."""
        for tb in list(self.tbs.values()):
            tb.valid = False
        self.tbs.clear()
        self.code_pages.clear()
        self.code_mask.clear()
        self.data_stores.clear()
        self.code2tb.clear()
        self.used = 0
        for cpu in self.cpus:
            cpu.jc_flush()
