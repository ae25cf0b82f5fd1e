"""Translated blocks: the shared cache keyed by physical address and mode, code-page tracking.

A block is found by ``(physical address, RIP, mode key, cflags)``. Each vCPU also keeps jump
caches (RIP -> function, one dict per mode) in front of it; those are emptied on TLB flushes.
Pages holding translated code are tracked so that stores to them invalidate the blocks (the
write TLB never maps such pages, so every store reaches the slow path). Blocks also remember
their bytes and are re-checked on a slow lookup, which catches DMA into code pages.
"""

from __future__ import annotations

import weakref
from types import CodeType
from typing import Any

from vfw import log


class TB:
    """One translated block."""

    __slots__ = ("code", "fn", "jc_refs", "key", "meta", "ninsns", "pages", "size", "valid")

    def __init__(self, key: tuple[Any, ...], fn: Any, ninsns: int, size: int,
                 pages: list[tuple[int, int, bytes]], meta: Any = None):
        self.key = key
        self.meta = meta
        self.fn = fn
        self.code: CodeType = fn.__code__
        self.ninsns = ninsns
        self.size = size
        #: (physical page, offset in page, bytes) of the guest code it was made from
        self.pages = pages
        self.jc_refs: list[tuple[dict[int, Any], int]] = []
        self.valid = True

    def overlaps(self, phys: int, size: int) -> bool:
        for ppage, off, data in self.pages:
            start = (ppage << 12) + off
            if phys < start + len(data) and start < phys + size:
                return True
        return False


class TBCache:
    """Blocks shared by every vCPU of one accelerator."""

    def __init__(self, limit_bytes: int):
        self.tbs: dict[tuple[Any, ...], TB] = {}
        self.code_pages: dict[int, list[TB]] = {}
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
        for ppage, _off, _data in tb.pages:
            lst = self.code_pages.get(ppage)
            if lst is None:
                self.code_pages[ppage] = [tb]
                for cpu in self.cpus:
                    cpu.drop_write_entries(ppage)
            else:
                lst.append(tb)

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

    def invalidate_page(self, ppage: int) -> None:
        tbs = self.code_pages.pop(ppage, None)
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
        self.code2tb.clear()
        self.used = 0
        for cpu in self.cpus:
            cpu.jc_flush()
