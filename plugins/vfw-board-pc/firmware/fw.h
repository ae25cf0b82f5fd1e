/* vfw firmware: shared types, port and MMIO access, console, timeouts. */
#ifndef VFW_FW_H
#define VFW_FW_H

#define FW_VERSION "0.1.0"

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned int size_t;

#define NULL ((void *)0)

/* Port I/O. */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

/* MMIO: one access of exactly the given width (paging is off: physical = linear). */
static inline u8 mmio_read8(u32 a) { return *(volatile u8 *)a; }
static inline u16 mmio_read16(u32 a) { return *(volatile u16 *)a; }
static inline u32 mmio_read32(u32 a) { return *(volatile u32 *)a; }
static inline void mmio_write8(u32 a, u8 v) { *(volatile u8 *)a = v; }
static inline void mmio_write16(u32 a, u16 v) { *(volatile u16 *)a = v; }
static inline void mmio_write32(u32 a, u32 v) { *(volatile u32 *)a = v; }

/* x86 keeps stores in order; this only stops the compiler from reordering. */
#define barrier() __asm__ volatile("" ::: "memory")

/* Fixed PC ports (docs/contracts.md, "Standard PC addresses"). */
#define COM1 0x3f8
#define FW_CFG_SELECTOR 0x510
#define FW_CFG_DATA 0x511
#define PCI_CONFIG_ADDRESS 0xcf8
#define PCI_CONFIG_DATA 0xcfc
#define ACPI_PM_BASE 0x600
#define ACPI_PM1A_CNT (ACPI_PM_BASE + 4)
#define ACPI_PM_TMR (ACPI_PM_BASE + 8)
#define DEBUG_EXIT_PORT 0x501

/* print.c */
void uart_init(void);
void print(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);

/* A deadline measured on the ACPI PM timer (3.579545 MHz, 24 bits), with a spin limit as well
   so that a board without the timer cannot hang the firmware. */
struct timeout {
    u32 last, ticks, limit, spins;
};
void timeout_start(struct timeout *t, u32 ms);
int timeout_expired(struct timeout *t);

/* pci.c */
u32 pci_read32(u32 bdf, u8 reg);
u16 pci_read16(u32 bdf, u8 reg);
u8 pci_read8(u32 bdf, u8 reg);
void pci_write32(u32 bdf, u8 reg, u32 v);
void pci_write16(u32 bdf, u8 reg, u16 v);
void pci_write8(u32 bdf, u8 reg, u8 v);
void pci_setup(u32 low_ram_top);
u32 pci_bar_address(u32 bdf, u8 bar);

/* virtio.c */
void virtio_probe(u32 bdf, u16 device, u16 subsystem);

#endif
