"""vfw-board-pc: the pc (i440fx) machine, x86 CPU models and the PC chipset devices."""

VFW_API = "1.0"
