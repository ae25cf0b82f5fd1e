"""vfw-accel-tcg: a software x86 CPU that translates guest code blocks into Python."""

VFW_API = "1.0"
