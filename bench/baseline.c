/*
 * The C baseline the Python benchmarks (bench/run.py) are measured against: the same guests and
 * the same work, done with plain ioctls on the mmapped kvm_run. Built by bench_run.py with gcc.
 *
 *   baseline pio   N      N port-I/O exits (real-mode `out dx, al; jmp`), reading port and data
 *   baseline mmio  N      N MMIO-write exits (real-mode `mov [0], al; jmp`), reading address and data
 *   baseline ioctl N      N KVM_CHECK_EXTENSION calls on the system fd
 *   baseline first N      N times: nothing -> first exit (open, VM, memory, vCPU, registers, run)
 *   baseline memory SIZE  copy SIZE bytes into guest memory and back, memcpy
 *
 * Each prints one JSON object on stdout: seconds (and counts) of the timed part only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE 0x10000
#define CODE_ADDR 0x1000

/* mov dx, 0x3f8; mov al, 'A'; 1: out dx, al; jmp 1b */
static const unsigned char pio_code[] = {0xba, 0xf8, 0x03, 0xb0, 0x41, 0xee, 0xeb, 0xfd};
/* mov ax, 0x2000; mov ds, ax; mov al, 'A'; 1: mov [0], al; jmp 1b   (writes GPA 0x20000: no memory) */
static const unsigned char mmio_code[] = {0xb8, 0x00, 0x20, 0x8e, 0xd8, 0xb0, 0x41,
                                          0xa2, 0x00, 0x00, 0xeb, 0xfb};

static void die(const char *what) {
    fprintf(stderr, "baseline: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct guest {
    int kvm, vm, vcpu;
    void *mem;
    struct kvm_run *run;
    size_t run_size;
};

/* What `kvm.x86.setup_real_mode(vcpu, entry)` does: flat real-mode segments, rip = entry, rflags = 2. */
static void setup_real_mode(int vcpu) {
    struct kvm_sregs sregs;
    struct kvm_regs regs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
    struct kvm_segment *segs[] = {&sregs.ds, &sregs.es, &sregs.fs, &sregs.gs, &sregs.ss, &sregs.cs};
    for (size_t i = 0; i < sizeof segs / sizeof segs[0]; i++) {
        segs[i]->base = 0;
        segs[i]->selector = 0;
    }
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
    if (ioctl(vcpu, KVM_GET_REGS, &regs) < 0) die("KVM_GET_REGS");
    regs.rip = CODE_ADDR;
    regs.rflags = 2;
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
}

static void guest_open(struct guest *g, const unsigned char *code, size_t code_len) {
    g->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (g->kvm < 0) die("open /dev/kvm");
    if (ioctl(g->kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) die("KVM_GET_API_VERSION");
    g->vm = ioctl(g->kvm, KVM_CREATE_VM, 0);
    if (g->vm < 0) die("KVM_CREATE_VM");
    g->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g->mem == MAP_FAILED) die("mmap memory");
    memcpy((char *)g->mem + CODE_ADDR, code, code_len);
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uintptr_t)g->mem};
    if (ioctl(g->vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
    g->vcpu = ioctl(g->vm, KVM_CREATE_VCPU, 0);
    if (g->vcpu < 0) die("KVM_CREATE_VCPU");
    int size = ioctl(g->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (size < 0) die("KVM_GET_VCPU_MMAP_SIZE");
    g->run_size = (size_t)size;
    g->run = mmap(NULL, g->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, g->vcpu, 0);
    if (g->run == MAP_FAILED) die("mmap kvm_run");
    setup_real_mode(g->vcpu);
}

static void guest_close(struct guest *g) {
    munmap(g->run, g->run_size);
    close(g->vcpu);
    close(g->vm);
    munmap(g->mem, MEM_SIZE);
    close(g->kvm);
}

static void run_once(struct guest *g) {
    if (ioctl(g->vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
}

static int bench_pio(long n) {
    struct guest g;
    guest_open(&g, pio_code, sizeof pio_code);
    unsigned long checksum = 0;
    double start = now();
    for (long i = 0; i < n; i++) {
        run_once(&g);
        if (g.run->exit_reason != KVM_EXIT_IO) {
            fprintf(stderr, "baseline: exit %u, not IO\n", g.run->exit_reason);
            return 1;
        }
        checksum += g.run->io.port + *((unsigned char *)g.run + g.run->io.data_offset);
    }
    double seconds = now() - start;
    guest_close(&g);
    printf("{\"exits\": %ld, \"seconds\": %.9f, \"checksum\": %lu}\n", n, seconds, checksum);
    return 0;
}

static int bench_mmio(long n) {
    struct guest g;
    guest_open(&g, mmio_code, sizeof mmio_code);
    unsigned long checksum = 0;
    double start = now();
    for (long i = 0; i < n; i++) {
        run_once(&g);
        if (g.run->exit_reason != KVM_EXIT_MMIO) {
            fprintf(stderr, "baseline: exit %u, not MMIO\n", g.run->exit_reason);
            return 1;
        }
        checksum += g.run->mmio.phys_addr + g.run->mmio.data[0];
    }
    double seconds = now() - start;
    guest_close(&g);
    printf("{\"exits\": %ld, \"seconds\": %.9f, \"checksum\": %lu}\n", n, seconds, checksum);
    return 0;
}

static int bench_ioctl(long n) {
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("open /dev/kvm");
    long present = 0;
    double start = now();
    for (long i = 0; i < n; i++) {
        int r = ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY);
        if (r < 0) die("KVM_CHECK_EXTENSION");
        present += r;
    }
    double seconds = now() - start;
    close(kvm);
    printf("{\"calls\": %ld, \"seconds\": %.9f, \"present\": %ld}\n", n, seconds, present);
    return 0;
}

static int bench_first(long n) {
    printf("{\"seconds\": [");
    for (long i = 0; i < n; i++) {
        struct guest g;
        double start = now();
        guest_open(&g, pio_code, sizeof pio_code);
        run_once(&g);
        double seconds = now() - start;
        if (g.run->exit_reason != KVM_EXIT_IO) {
            fprintf(stderr, "baseline: first exit %u, not IO\n", g.run->exit_reason);
            return 1;
        }
        guest_close(&g);
        printf("%s%.9f", i ? ", " : "", seconds);
    }
    printf("]}\n");
    return 0;
}

/* The guest memory is mapped the way kvm.Vm.add_memory maps it and registered as a slot, so the copy
 * goes into the same kind of pages; source and destination buffers are faulted in before timing. */
static int bench_memory(long size) {
    struct guest g;
    g.kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (g.kvm < 0) die("open /dev/kvm");
    g.vm = ioctl(g.kvm, KVM_CREATE_VM, 0);
    if (g.vm < 0) die("KVM_CREATE_VM");
    char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) die("mmap memory");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = size, .userspace_addr = (uintptr_t)mem};
    if (ioctl(g.vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
    char *src = malloc(size), *dst = malloc(size);
    if (!src || !dst) die("malloc");
    memset(src, 0xa5, size);
    memset(dst, 0x5a, size); /* not 0: gcc would turn malloc+memset(0) into calloc, leaving dst unfaulted */
    memset(mem, 0x5a, size);
    double start = now();
    memcpy(mem, src, size);
    double write_seconds = now() - start;
    start = now();
    memcpy(dst, mem, size);
    double read_seconds = now() - start;
    if (memcmp(dst, src, size) != 0) {
        fprintf(stderr, "baseline: memory copy mismatch\n");
        return 1;
    }
    printf("{\"bytes\": %ld, \"write_seconds\": %.9f, \"read_seconds\": %.9f}\n", size, write_seconds,
           read_seconds);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: baseline pio|mmio|ioctl|first|memory COUNT\n");
        return 2;
    }
    long n = strtol(argv[2], NULL, 0);
    if (!strcmp(argv[1], "pio")) return bench_pio(n);
    if (!strcmp(argv[1], "mmio")) return bench_mmio(n);
    if (!strcmp(argv[1], "ioctl")) return bench_ioctl(n);
    if (!strcmp(argv[1], "first")) return bench_first(n);
    if (!strcmp(argv[1], "memory")) return bench_memory(n);
    fprintf(stderr, "baseline: unknown benchmark %s\n", argv[1]);
    return 2;
}
