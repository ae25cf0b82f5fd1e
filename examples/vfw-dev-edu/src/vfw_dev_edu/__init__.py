"""vfw-dev-edu: QEMU's educational PCI device ("edu") as an out-of-tree vfw plugin.

This module is the plugin module named in the ``vfw.plugins`` entry point. vfw imports it
before any of the plugin's types and refuses the plugin unless ``VFW_API`` names an API
version the installed vfw-core provides (same major, minor not newer).
"""

VFW_API = "1.0"
