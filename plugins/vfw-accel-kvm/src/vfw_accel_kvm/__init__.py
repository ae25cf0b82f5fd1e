"""vfw-accel-kvm: runs vCPUs on Linux's /dev/kvm through plain ioctls (no C extension)."""

VFW_API = "1.0"
