"""vfw: a virtual-machine framework built the way QEMU is built.

This package is imported by every ``vfw`` invocation, so it imports nothing: each part lives in
its own module and is imported where it is used.
"""

__version__ = "0.1.0"

#: The plugin API version this core implements. A plugin declares the version it targets as
#: ``VFW_API = "MAJOR.MINOR"`` in its plugin module; it loads when MAJOR matches and its MINOR is
#: not newer than ours.
API_VERSION = (1, 0)
