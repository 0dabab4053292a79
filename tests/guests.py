"""Shared fixtures and helpers for the tests that run real guests on /dev/kvm.

Use from a test module with ``from guests import *`` (pytest puts tests/ on sys.path). Every KVM test
takes the `system` fixture (directly or through `vm`), which skips with a clear reason when /dev/kvm is
absent or cannot be opened.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

import kvm

__all__ = [
    "system",
    "vm",
    "require_cap",
    "real_mode_guest",
    "protected_mode_guest",
    "long_mode_guest",
    "run_until",
    "KVM_PATH",
]

KVM_PATH = "/dev/kvm"


def _open_reason() -> str | None:
    if not os.path.exists(KVM_PATH):
        return f"{KVM_PATH} does not exist (no KVM on this machine)"
    if not os.access(KVM_PATH, os.R_OK | os.W_OK):
        return f"{KVM_PATH} is not readable and writable by this user"
    return None


@pytest.fixture
def system() -> Any:
    """An open `kvm.Kvm()`; the test is skipped when /dev/kvm is unusable."""
    reason = _open_reason()
    if reason:
        pytest.skip(reason)
    try:
        k = kvm.Kvm(KVM_PATH)
    except OSError as exc:
        pytest.skip(f"cannot open {KVM_PATH}: {exc}")
    with k:
        yield k


@pytest.fixture
def vm(system: Any) -> Any:
    with system.create_vm() as machine:
        yield machine


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
