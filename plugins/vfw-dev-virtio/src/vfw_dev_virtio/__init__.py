"""vfw-dev-virtio: the virtio 1.x PCI transport and the virtio-blk/net/rng devices."""

VFW_API = "1.0"
