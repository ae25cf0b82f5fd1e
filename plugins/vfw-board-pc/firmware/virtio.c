/* vfw firmware: a polling virtio 1.x PCI driver for one request to virtio-rng and virtio-blk. */
#include "fw.h"

/* Vendor-specific PCI capability describing a virtio structure. */
#define PCI_CAP_VENDOR 0x09
#define VIRTIO_PCI_CAP_COMMON 1
#define VIRTIO_PCI_CAP_NOTIFY 2
#define VIRTIO_PCI_CAP_DEVICE 4

/* Common configuration offsets. */
#define VC_DEVICE_FEATURE_SELECT 0x00
#define VC_DEVICE_FEATURE 0x04
#define VC_DRIVER_FEATURE_SELECT 0x08
#define VC_DRIVER_FEATURE 0x0c
#define VC_DEVICE_STATUS 0x14
#define VC_QUEUE_SELECT 0x16
#define VC_QUEUE_SIZE 0x18
#define VC_QUEUE_ENABLE 0x1c
#define VC_QUEUE_NOTIFY_OFF 0x1e
#define VC_QUEUE_DESC 0x20
#define VC_QUEUE_DRIVER 0x28
#define VC_QUEUE_DEVICE 0x30

#define STATUS_ACKNOWLEDGE 1
#define STATUS_DRIVER 2
#define STATUS_DRIVER_OK 4
#define STATUS_FEATURES_OK 8
#define STATUS_FAILED 128

#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2

#define QUEUE_SIZE 16
#define REQUEST_TIMEOUT_MS 1000

struct virtq_desc {
    u64 addr;
    u32 len;
    u16 flags, next;
};

/* One split virtqueue in low RAM (.bss), shared by the devices in turn. */
static struct {
    struct virtq_desc desc[QUEUE_SIZE];
    struct {
        u16 flags, idx, ring[QUEUE_SIZE], used_event;
    } avail __attribute__((aligned(2)));
    struct {
        u16 flags, idx;
        struct {
            u32 id, len;
        } ring[QUEUE_SIZE];
        u16 avail_event;
    } used __attribute__((aligned(4)));
} vq __attribute__((aligned(4096)));

static struct {
    u8 rng[16];
    struct {
        u32 type, reserved;
        u64 sector;
    } blk_header;
    u8 blk_data[512];
    u8 blk_status;
} io __attribute__((aligned(16)));

struct virtio_pci {
    u32 bdf;
    u32 common, notify, device;     /* MMIO addresses, 0 if absent */
    u32 notify_multiplier;
    u32 queue_notify;               /* where to write to notify queue 0 */
    const char *name;
};

static void find_capabilities(struct virtio_pci *v)
{
    if (!(pci_read16(v->bdf, 0x06) & 0x10))     /* status: capabilities list */
        return;
    u8 pos = pci_read8(v->bdf, 0x34) & 0xfc;
    for (int hops = 0; pos >= 0x40 && hops < 48; hops++) {
        if (pci_read8(v->bdf, pos) == PCI_CAP_VENDOR) {
            u8 type = pci_read8(v->bdf, (u8)(pos + 3));
            u8 bar = pci_read8(v->bdf, (u8)(pos + 4));
            u32 offset = pci_read32(v->bdf, (u8)(pos + 8));
            u32 base = pci_bar_address(v->bdf, bar);
            u32 addr = base ? base + offset : 0;
            if (type == VIRTIO_PCI_CAP_COMMON && !v->common)
                v->common = addr;
            else if (type == VIRTIO_PCI_CAP_NOTIFY && !v->notify) {
                v->notify = addr;
                v->notify_multiplier = pci_read32(v->bdf, (u8)(pos + 16));
            } else if (type == VIRTIO_PCI_CAP_DEVICE && !v->device)
                v->device = addr;
        }
        pos = pci_read8(v->bdf, (u8)(pos + 1)) & 0xfc;
    }
}

static void set_status(struct virtio_pci *v, u8 bits)
{
    u8 status = mmio_read8(v->common + VC_DEVICE_STATUS);
    mmio_write8(v->common + VC_DEVICE_STATUS, status | bits);
}

static int fail(struct virtio_pci *v, const char *why)
{
    print("%s 00:%02x.%x: %s\n", v->name, v->bdf >> 3, v->bdf & 7, why);
    if (v->common)
        set_status(v, STATUS_FAILED);
    return 0;
}

static void reset(struct virtio_pci *v)
{
    mmio_write8(v->common + VC_DEVICE_STATUS, 0);
    for (int i = 0; i < 1000 && mmio_read8(v->common + VC_DEVICE_STATUS); i++)
        ;
}

static void write64(u32 addr, u32 value)
{
    mmio_write32(addr, value);
    mmio_write32(addr + 4, 0);
}

/* Reset, negotiate VERSION_1 only, set up queue 0; 1 on success. */
static int start(struct virtio_pci *v)
{
    find_capabilities(v);
    if (!v->common || !v->notify)
        return fail(v, "no virtio 1.x common/notify capability in a memory BAR");
    reset(v);
    if (mmio_read8(v->common + VC_DEVICE_STATUS))
        return fail(v, "device does not reset");
    set_status(v, STATUS_ACKNOWLEDGE);
    set_status(v, STATUS_DRIVER);
    mmio_write32(v->common + VC_DEVICE_FEATURE_SELECT, 1);
    if (!(mmio_read32(v->common + VC_DEVICE_FEATURE) & 1))
        return fail(v, "VERSION_1 not offered");
    mmio_write32(v->common + VC_DRIVER_FEATURE_SELECT, 0);
    mmio_write32(v->common + VC_DRIVER_FEATURE, 0);
    mmio_write32(v->common + VC_DRIVER_FEATURE_SELECT, 1);
    mmio_write32(v->common + VC_DRIVER_FEATURE, 1);       /* VERSION_1 (bit 32) */
    set_status(v, STATUS_FEATURES_OK);
    if (!(mmio_read8(v->common + VC_DEVICE_STATUS) & STATUS_FEATURES_OK))
        return fail(v, "FEATURES_OK refused");
    mmio_write16(v->common + VC_QUEUE_SELECT, 0);
    u16 size = mmio_read16(v->common + VC_QUEUE_SIZE);
    if (size == 0)
        return fail(v, "queue 0 not available");
    if (size > QUEUE_SIZE)
        size = QUEUE_SIZE;
    if (size & (size - 1))
        return fail(v, "queue size not a power of 2");
    mmio_write16(v->common + VC_QUEUE_SIZE, size);
    memset(&vq, 0, sizeof(vq));
    write64(v->common + VC_QUEUE_DESC, (u32)&vq.desc);
    write64(v->common + VC_QUEUE_DRIVER, (u32)&vq.avail);
    write64(v->common + VC_QUEUE_DEVICE, (u32)&vq.used);
    v->queue_notify = v->notify +
        (u32)mmio_read16(v->common + VC_QUEUE_NOTIFY_OFF) * v->notify_multiplier;
    mmio_write16(v->common + VC_QUEUE_ENABLE, 1);
    set_status(v, STATUS_DRIVER_OK);
    return 1;
}

/* Make the chain starting at descriptor 0 available, notify, and wait for it to be used.
   Returns the used length, or -1 on timeout. */
static int submit_and_wait(struct virtio_pci *v)
{
    vq.avail.ring[0] = 0;
    barrier();
    vq.avail.idx = 1;
    barrier();
    mmio_write16(v->queue_notify, 0);
    struct timeout t;
    timeout_start(&t, REQUEST_TIMEOUT_MS);
    while (*(volatile u16 *)&vq.used.idx == 0)
        if (timeout_expired(&t)) {
            fail(v, "timeout waiting for the used ring");
            return -1;
        }
    barrier();
    return (int)vq.used.ring[0].len;
}

static void put_bytes(const u8 *p, int n)
{
    for (int i = 0; i < n; i++)
        print(" %02x", p[i]);
}

static void rng(struct virtio_pci *v)
{
    if (!start(v))
        return;
    memset(io.rng, 0, sizeof(io.rng));
    vq.desc[0] = (struct virtq_desc){ (u32)io.rng, sizeof(io.rng), VIRTQ_DESC_F_WRITE, 0 };
    int len = submit_and_wait(v);
    if (len >= 0) {
        print("virtio-rng 00:%02x.%x: %d bytes:", v->bdf >> 3, v->bdf & 7, len);
        put_bytes(io.rng, 16);
        print("\n");
    }
    reset(v);
}

static void blk(struct virtio_pci *v)
{
    if (!start(v))
        return;
    if (v->device)
        print("virtio-blk 00:%02x.%x: capacity %u sectors\n", v->bdf >> 3, v->bdf & 7,
              mmio_read32(v->device));   /* low 32 bits of the u64 capacity */
    io.blk_header.type = 0;    /* VIRTIO_BLK_T_IN */
    io.blk_header.reserved = 0;
    io.blk_header.sector = 0;
    memset(io.blk_data, 0, sizeof(io.blk_data));
    io.blk_status = 0xff;
    vq.desc[0] = (struct virtq_desc){ (u32)&io.blk_header, sizeof(io.blk_header),
                                      VIRTQ_DESC_F_NEXT, 1 };
    vq.desc[1] = (struct virtq_desc){ (u32)io.blk_data, sizeof(io.blk_data),
                                      VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2 };
    vq.desc[2] = (struct virtq_desc){ (u32)&io.blk_status, 1, VIRTQ_DESC_F_WRITE, 0 };
    if (submit_and_wait(v) >= 0) {
        print("virtio-blk 00:%02x.%x: sector 0:", v->bdf >> 3, v->bdf & 7);
        put_bytes(io.blk_data, 16);
        print(" status %u\n", io.blk_status);
    }
    reset(v);
}

/* Modern ids 0x1040 + type; transitional (0x1000-0x103f) ones carry the type as subsystem id.
   Both are driven through the modern interface. */
void virtio_probe(u32 bdf, u16 device, u16 subsystem)
{
    u16 type = device >= 0x1040 ? (u16)(device - 0x1040) : device >= 0x1000 ? subsystem : 0;
    struct virtio_pci v = { .bdf = bdf };
    if (type == 4) {
        v.name = "virtio-rng";
        rng(&v);
    } else if (type == 2) {
        v.name = "virtio-blk";
        blk(&v);
    }
}
