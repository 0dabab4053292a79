"""Picks the implementation of the run loop's hot path: the compiled `kvm._speedups` when it was built,
else its pure-Python twin `kvm._pure` (also forced by setting KVM_PURE_PYTHON to a non-empty value).

Both offer `Runner`, `VcpuBase`, `ExitBase`, `Field`, `ValueIoctl`, `ioctl` and `ioctl_method` with the same behaviour;
`NATIVE` says which one is in use.
"""

from __future__ import annotations

import os

NATIVE: bool
if os.environ.get("KVM_PURE_PYTHON"):
    from ._pure import ExitBase, Field, Runner, ValueIoctl, VcpuBase, ioctl, ioctl_method

    NATIVE = False
else:
    try:
        # (the two modules offer the same interface; mypy sees kvm._pure's types)
        from ._speedups import ExitBase, Field, Runner, ValueIoctl, VcpuBase, ioctl, ioctl_method  # type: ignore[assignment]
    except ImportError:
        from ._pure import ExitBase, Field, Runner, ValueIoctl, VcpuBase, ioctl, ioctl_method

        NATIVE = False
    else:
        NATIVE = True

__all__ = ["NATIVE", "ExitBase", "Field", "Runner", "ValueIoctl", "VcpuBase", "ioctl", "ioctl_method"]
