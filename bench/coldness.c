/*
 * A bench instrument (run by `python bench/breakdown.py --coldness`): how much more code and data cost
 * right after a KVM_RUN exit than after an ioctl that stays in the host, per distinct cache line
 * touched. It supports the "everything after an exit runs cold" analysis of bench/README.md.
 *
 *   coldness N    N iterations of each loop; prints one JSON object
 *
 * Loops: {KVM_RUN (real-mode guest looping on `out`), KVM_CHECK_EXTENSION} x {nothing after the call,
 * 64 calls of functions on 64 distinct cache lines, 64 reads of 64 distinct pages}.
 */
#define _GNU_SOURCE
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

#define LINES 64
#define PAGE 4096

typedef unsigned long (*step_fn)(unsigned long);

/* 64 tiny functions, each on its own cache line */
#define STEP(i) \
    __attribute__((noinline, aligned(64))) static unsigned long step##i(unsigned long x) { \
        __asm__ volatile("");                                                             \
        return x * 3 + i;                                                                 \
    }
#define STEP8(i) STEP(i##0) STEP(i##1) STEP(i##2) STEP(i##3) STEP(i##4) STEP(i##5) STEP(i##6) STEP(i##7)
STEP8(1) STEP8(2) STEP8(3) STEP8(4) STEP8(5) STEP8(6) STEP8(7) STEP8(8)
#define REF8(i) step##i##0, step##i##1, step##i##2, step##i##3, step##i##4, step##i##5, step##i##6, step##i##7
static step_fn steps[LINES] = {REF8(1), REF8(2), REF8(3), REF8(4), REF8(5), REF8(6), REF8(7), REF8(8)};

/* mov dx, 0x3f8; mov al, 'A'; 1: out dx, al; jmp 1b */
static const unsigned char pio_code[] = {0xba, 0xf8, 0x03, 0xb0, 0x41, 0xee, 0xeb, 0xfd};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static int kvm_fd, vcpu_fd;
static volatile char *pages;
static volatile unsigned long sink;

/* ns per iteration of: the call, then `work` (0 nothing, 1 code lines, 2 data pages) */
static double loop(int guest, int work, long n) {
    unsigned long x = 1;
    double start = now();
    for (long i = 0; i < n; i++) {
        if (guest ? ioctl(vcpu_fd, KVM_RUN, 0) : ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY) < 0)
            die("ioctl");
        if (work == 1)
            for (int k = 0; k < LINES; k++)
                x = steps[k](x);
        else if (work == 2)
            for (int k = 0; k < LINES; k++)
                x += pages[k * (PAGE + 64)];
    }
    sink = x;
    return (now() - start) / n * 1e9;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? strtol(argv[1], NULL, 0) : 50000;
    kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm_fd < 0) die("open /dev/kvm");
    int vm = ioctl(kvm_fd, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    char *mem = mmap(NULL, 0x10000, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) die("mmap");
    memcpy(mem + 0x1000, pio_code, sizeof pio_code);
    struct kvm_userspace_memory_region region = {.memory_size = 0x10000, .userspace_addr = (uintptr_t)mem};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
    vcpu_fd = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu_fd < 0) die("KVM_CREATE_VCPU");
    struct kvm_sregs sregs;
    struct kvm_regs regs;
    if (ioctl(vcpu_fd, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    if (ioctl(vcpu_fd, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
    if (ioctl(vcpu_fd, KVM_GET_REGS, &regs) < 0) die("KVM_GET_REGS");
    regs.rip = 0x1000;
    regs.rflags = 2;
    if (ioctl(vcpu_fd, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
    size_t size = (size_t)LINES * (PAGE + 64);
    char *buffer = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buffer == MAP_FAILED) die("mmap");
    memset(buffer, 1, size);
    madvise(buffer, size, MADV_NOHUGEPAGE);
    pages = buffer;
    double run[3], host[3];
    for (int work = 0; work < 3; work++) {
        run[work] = loop(1, work, n);
        host[work] = loop(0, work, n * 20);
    }
    printf("{\"lines\": %d, \"run_ns\": [%.1f, %.1f, %.1f], \"host_ns\": [%.1f, %.1f, %.1f]}\n", LINES, run[0], run[1],
           run[2], host[0], host[1], host[2]);
    return 0;
}
