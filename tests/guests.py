"""Guest code builders and helpers for the tests that run real guests on /dev/kvm.

Plain functions and constants, imported by name (pytest puts tests/ on sys.path); the `system` and `vm`
fixtures are in conftest.py.
"""

from __future__ import annotations

from typing import Any

import pytest

import kvm

KVM_PATH = "/dev/kvm"

WRITE_PAGE_3 = bytes([
    0xC6, 0x06, 0x00, 0x30, 0x55,  # mov byte [0x3000], 0x55
    0xF4,                          # hlt
])


def require_cap(obj: Any, cap: str, minimum: int = 1) -> int:
    """Skip the test unless KVM_CHECK_EXTENSION(cap) >= minimum on `obj` (a Kvm or a Vm)."""
    name = cap if cap.startswith("KVM_CAP_") else "KVM_CAP_" + cap
    value = obj.check_extension(name)
    if value < minimum:
        pytest.skip(f"host lacks {name} (KVM_CHECK_EXTENSION returned {value})")
    return value


def real_mode_guest(vm: Any, code: bytes, *, load: int = 0x1000, mem_size: int = 0x10000,
                    flags: int = 0, vcpu_id: int = 0) -> tuple[Any, Any]:
    """Guest memory [0, mem_size) with `code` at `load`, and a vCPU in real mode starting there."""
    mem = vm.memory_at(0) if vm.memory else vm.add_memory(0, mem_size, flags=flags)
    mem.write(load, code)
    vcpu = vm.create_vcpu(vcpu_id)
    kvm.x86.setup_real_mode(vcpu, entry=load)
    return mem, vcpu


def protected_mode_guest(vm: Any, code: bytes, *, load: int = 0x1000, mem_size: int = 0x10000) -> tuple[Any, Any]:
    mem = vm.add_memory(0, mem_size)
    mem.write(load, code)
    vcpu = vm.create_vcpu(0)
    kvm.x86.setup_protected_mode(vcpu, entry=load, stack=mem_size, memory=mem)
    return mem, vcpu


def long_mode_guest(vm: Any, code: bytes, *, load: int = 0x1000, mem_size: int = 0x40000) -> tuple[Any, Any]:
    """Guest memory with `code` at `load` and a vCPU in 64-bit mode, identity-mapped first GiB
    (page tables at 0x10000)."""
    mem = vm.add_memory(0, mem_size)
    mem.write(load, code)
    vcpu = vm.create_vcpu(0)
    kvm.x86.setup_long_mode(vcpu, entry=load, memory=mem, page_table_addr=0x10000, stack=mem_size)
    return mem, vcpu


def run_until(vcpu: Any, exit_type: type, limit: int = 100) -> Any:
    """run() until an exit of `exit_type` (failing on any other exit type after `limit` exits)."""
    seen = []
    for _ in range(limit):
        exit = vcpu.run()
        if isinstance(exit, exit_type):
            return exit
        seen.append(repr(exit))
    raise AssertionError(f"no {exit_type.__name__} after {limit} exits: {seen[-5:]}")
