"""x86 CPU types: one abstract x86 CPU and a type per model (QEMU's ``<model>-x86_64-cpu``)."""

from __future__ import annotations

from typing import ClassVar

from vfw.cpu import CPU
from vfw.qom import TABLE, register_type

CPU_SUFFIX = "-x86_64-cpu"


@register_type
class X86CPU(CPU):
    """An x86-64 vCPU; models fill in CPUID."""

    TYPE = "x86_64-cpu"
    ABSTRACT = True
    MODEL_DESC: ClassVar[str] = ""

    @classmethod
    def models_help(cls) -> str:
        """``-cpu help`` as QEMU prints it: ``x86 <model> <description>``."""
        lines = ["Available CPUs:"]
        for model in sorted(TABLE.get_list("x86_64-cpu"), key=lambda c: c.TYPE):
            name = model.TYPE[: -len(CPU_SUFFIX)]
            lines.append(f"x86 {name:<30} {getattr(model, 'MODEL_DESC', '')}")
        return "\n".join(lines)


@register_type
class Qemu64CPU(X86CPU):
    TYPE = "qemu64-x86_64-cpu"
    MODEL = "qemu64"
    MODEL_DESC = "QEMU Virtual CPU version 2.5+"


@register_type
class MaxCPU(X86CPU):
    TYPE = "max-x86_64-cpu"
    MODEL = "max"
    MODEL_DESC = "Enables all features supported by the accelerator in the current host"
