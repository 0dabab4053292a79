"""The generated ioctl wrappers used as they are: a `KvmFd` plus the generated mixin of each fd kind,
for the newest binding of this host's arch (the ergonomic classes of kvm/ wrap these ioctls their own
way). Shared by test_ioctls.py and test_wrappers_fuzz.py, which need the classes at collection time (to
parametrize over them), so they are plain names imported from here, not fixtures; import it after checking
/dev/kvm is usable. The generated mixin comes first, so that its methods win over the few that KvmFd
offers under the same name (`enable_cap`, `check_extension`).
"""

from __future__ import annotations

from typing import Any

from kvm import _fd
from kvm.generated import load

B = load()  # newest binding for this host's arch
W = __import__(f"kvm.generated.ioctls_{B.__name__.rsplit('.', 1)[1]}", fromlist=["*"])
C = B.CONSTANTS
ffi = W.ffi


class Sys(W.SystemIoctls, _fd.KvmFd):
    fd_kind = "system"


class Vm(W.VmIoctls, _fd.KvmFd):
    fd_kind = "vm"

    def _cap_owner(self) -> Any:
        parent = self._parent
        return self if parent._query_cap(C["KVM_CAP_CHECK_EXTENSION_VM"]) > 0 else parent


class Vcpu(W.VcpuIoctls, _fd.KvmFd):
    fd_kind = "vcpu"

    def _cap_owner(self) -> Any:
        return self._parent._cap_owner()


class Device(W.DeviceIoctls, _fd.KvmFd):
    fd_kind = "device"

    def _cap_owner(self) -> Any:
        return self._parent._cap_owner()
