/* vfw firmware: print what the machine looks like from inside, then power off. */
#include "fw.h"

static void cpuid(u32 leaf, u32 *a, u32 *b, u32 *c, u32 *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

/* Feature names by bit: CPUID.1 EDX, CPUID.1 ECX, 0x80000001 EDX, 0x80000001 ECX. */
static const char *const flags_1_edx[32] = {
    [0] = "fpu", [1] = "vme", [2] = "de", [3] = "pse", [4] = "tsc", [5] = "msr", [6] = "pae",
    [7] = "mce", [8] = "cx8", [9] = "apic", [11] = "sep", [12] = "mtrr", [13] = "pge",
    [14] = "mca", [15] = "cmov", [16] = "pat", [17] = "pse36", [19] = "clflush", [23] = "mmx",
    [24] = "fxsr", [25] = "sse", [26] = "sse2", [28] = "ht",
};
static const char *const flags_1_ecx[32] = {
    [0] = "pni", [1] = "pclmulqdq", [9] = "ssse3", [12] = "fma", [13] = "cx16",
    [19] = "sse4.1", [20] = "sse4.2", [21] = "x2apic", [22] = "movbe", [23] = "popcnt",
    [25] = "aes", [26] = "xsave", [28] = "avx", [31] = "hypervisor",
};
static const char *const flags_ext_edx[32] = {
    [11] = "syscall", [20] = "nx", [26] = "pdpe1gb", [27] = "rdtscp", [29] = "lm",
};
static const char *const flags_ext_ecx[32] = {
    [0] = "lahf-lm", [2] = "svm", [5] = "abm", [6] = "sse4a",
};

static void print_flags(const char *const names[32], u32 bits)
{
    for (int i = 0; i < 32; i++)
        if ((bits & (1u << i)) && names[i])
            print(" %s", names[i]);
}

static void cpu_info(void)
{
    u32 a, b, c, d, max, xlevel;
    char vendor[13];
    cpuid(0, &max, &b, &c, &d);
    memcpy(vendor, &b, 4);
    memcpy(vendor + 4, &d, 4);
    memcpy(vendor + 8, &c, 4);
    vendor[12] = 0;
    cpuid(0x80000000, &xlevel, &b, &c, &d);
    print("CPU vendor: %s\n", vendor);
    if (xlevel >= 0x80000004 && xlevel <= 0x8000ffff) {
        u32 brand[13];
        for (u32 i = 0; i < 3; i++)
            cpuid(0x80000002 + i, &brand[4 * i], &brand[4 * i + 1], &brand[4 * i + 2],
                  &brand[4 * i + 3]);
        brand[12] = 0;
        const char *s = (const char *)brand;
        while (*s == ' ')
            s++;
        print("CPU brand: %s\n", s);
    }
    u32 edx1 = 0, ecx1 = 0, edx_ext = 0, ecx_ext = 0;
    if (max >= 1) {
        cpuid(1, &a, &b, &ecx1, &edx1);
        u32 family = (a >> 8) & 0xf, model = (a >> 4) & 0xf;
        if (family == 0xf)
            family += (a >> 20) & 0xff;
        if (family == 6 || family >= 0xf)
            model += ((a >> 16) & 0xf) << 4;
        print("CPU family %u model %u stepping %u\n", family, model, a & 0xf);
    }
    if (xlevel >= 0x80000001 && xlevel <= 0x8000ffff)
        cpuid(0x80000001, &a, &b, &ecx_ext, &edx_ext);
    print("CPU flags:");
    print_flags(flags_1_edx, edx1);
    print_flags(flags_1_ecx, ecx1);
    print_flags(flags_ext_edx, edx_ext);
    print_flags(flags_ext_ecx, ecx_ext);
    print("\n");
}

/* fw_cfg, traditional interface: select a key, then read bytes from the data port. */
#define FW_CFG_SIGNATURE 0x00
#define FW_CFG_RAM_SIZE 0x03
#define FW_CFG_NB_CPUS 0x05
#define FW_CFG_FILE_DIR 0x19
#define MAX_FW_CFG_FILES 512
#define MAX_E820 32

static void fw_cfg_read(void *buf, u32 len)
{
    u8 *p = buf;
    for (u32 i = 0; i < len; i++)
        p[i] = inb(FW_CFG_DATA);
}

static void fw_cfg_select(u16 key) { outw(FW_CFG_SELECTOR, key); }

static u32 be32(const u8 *p) { return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3]; }

/* The selector and size of a fw_cfg file, or 0. */
static u16 fw_cfg_find(const char *name, u32 *size)
{
    u8 count[4];
    fw_cfg_select(FW_CFG_FILE_DIR);
    fw_cfg_read(count, 4);
    u32 n = be32(count);
    for (u32 i = 0; i < n && i < MAX_FW_CFG_FILES; i++) {
        struct {
            u8 size[4], select[2], reserved[2];
            char name[56];
        } f;
        fw_cfg_read(&f, sizeof(f));
        f.name[55] = 0;
        u32 j = 0;
        while (name[j] && f.name[j] == name[j])
            j++;
        if (!name[j] && !f.name[j]) {
            *size = be32(f.size);
            return (u16)(f.select[0] << 8 | f.select[1]);
        }
    }
    return 0;
}

struct e820_entry {
    u64 address, length;
    u32 type;
} __attribute__((packed));

static const char *e820_type(u32 type)
{
    switch (type) {
    case 1: return "usable";
    case 2: return "reserved";
    case 3: return "ACPI data";
    case 4: return "ACPI NVS";
    case 5: return "unusable";
    default: return "unknown";
    }
}

/* Print the memory map; returns the top of RAM below 4 GiB (where the PCI hole may start). */
static u32 memory_info(int have_fw_cfg)
{
    u64 total = 0;
    u32 low_top = 0, size = 0;
    u16 key = have_fw_cfg ? fw_cfg_find("etc/e820", &size) : 0;
    if (key) {
        u32 n = size / sizeof(struct e820_entry);
        print("memory map (fw_cfg etc/e820):\n");
        fw_cfg_select(key);
        for (u32 i = 0; i < n && i < MAX_E820; i++) {
            struct e820_entry e;
            fw_cfg_read(&e, sizeof(e));
            if (!e.length)
                continue;
            u64 end = e.address + e.length - 1;
            print("  [mem 0x%016llx-0x%016llx] %s\n", e.address, end, e820_type(e.type));
            if (e.type != 1)
                continue;
            total += e.length;
            if (e.address < 0x100000000ull) {
                u64 top = end >= 0xffffffffull ? 0xffffffffull : end + 1;
                if (top > low_top)
                    low_top = (u32)top;
            }
        }
    } else if (have_fw_cfg) {
        fw_cfg_select(FW_CFG_RAM_SIZE);
        fw_cfg_read(&total, sizeof(total));
        print("memory (fw_cfg RAM_SIZE):\n");
        low_top = total > 0xe0000000ull ? 0xe0000000u : (u32)total;
    } else {
        print("memory: unknown (no fw_cfg)\n");
        return 0;
    }
    print("memory: %u MiB\n", (u32)(total >> 20));
    return low_top;
}

static __attribute__((noreturn)) void power_off(void)
{
    print("vfw firmware: powering off\n");
    /* ACPI S5 through PM1a_CNT: SLP_TYP 5 (the vfw board), then SLP_TYP 0 (the S5 value in
       QEMU's DSDT for its PIIX4 PM); SLP_EN is bit 13. */
    outw(ACPI_PM1A_CNT, (5 << 10) | (1 << 13));
    outw(ACPI_PM1A_CNT, (0 << 10) | (1 << 13));
    struct timeout t;
    timeout_start(&t, 100);     /* let the board act on the request */
    while (!timeout_expired(&t))
        ;
    outb(DEBUG_EXIT_PORT, 0);   /* isa-debug-exit fallback */
    for (;;)
        __asm__ volatile("cli; hlt");
}

void fw_main(void)
{
    uart_init();
    print("\nvfw firmware " FW_VERSION "\n");
    cpu_info();
    char sig[4];
    fw_cfg_select(FW_CFG_SIGNATURE);
    fw_cfg_read(sig, 4);
    int have_fw_cfg = !memcmp(sig, "QEMU", 4);
    if (have_fw_cfg) {
        u16 cpus = 0;
        fw_cfg_select(FW_CFG_NB_CPUS);
        fw_cfg_read(&cpus, sizeof(cpus));
        print("CPUs: %u\n", cpus);
    } else {
        print("fw_cfg: not present\n");
    }
    u32 low_top = memory_info(have_fw_cfg);
    pci_setup(low_top);
    power_off();
}
