"""A stateful property test of kvm's whole public API (hypothesis RuleBasedStateMachine), and its runner.

The machine keeps every object the API hands out (Kvm, Vm, Vcpu, GuestMemory, GuestMemfd, exits,
memoryviews, cdata, EventFd, Device) in hypothesis Bundles, across closes, removes, drops and forks, and
calls the API on them with valid and hostile arguments (wrong types, floats, bools, negative and huge
ints, another VM's objects, closed objects, buffers of the wrong size, huge sizes), runs small real-mode
guests (tests/guests.py) and replies to their exits. Every exception is classified:

- good: kvm's own types (KvmError and subclasses, ClosedError, ForkedError, GuestMemoryError), a plain
  LookupError (an unknown name), an OSError whose `filename` is the path passed, and a TypeError,
  ValueError, OverflowError or KeyError whose message names the argument (a parameter name, a field or
  record name passed, or the str passed);
- a finding: anything else (AttributeError on None, cffi's "can't convert negative number to
  unsigned", an OverflowError or a RuntimeError that names nothing, ...).

In a forked child every operation on inherited objects must raise ForkedError (or ClosedError for an
object closed before the fork) or do nothing the parent can see: the parent compares the kvm_run pages,
held views and guest memory it had before the fork with what it has after the child exited.

Runner: `run_batches()` runs each batch in a fresh `python tests/fuzz_machine.py --batch ...` process so a
SIGSEGV/SIGBUS/abort is counted (exit signal) and a hang is caught by a timeout (killed, counted). Each
batch compares its fd count and KVM objects (anon_inode:kvm-* fds, kvm mappings) before and after, once
everything was dropped and gc.collect() ran. `tests/test_fuzz_stateful.py` is the short run, `bench/fuzz.py`
the long one.
"""

from __future__ import annotations

import argparse
import collections
import collections.abc
import gc
import json
import math
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

# -- classification --------------------------------------------------------------------------------

_NAMED_TYPES = (TypeError, ValueError, OverflowError, KeyError)


def _mentions(message: str, name: str) -> bool:
    return re.search(r"(?<![A-Za-z0-9_])" + re.escape(name) + r"(?![A-Za-z0-9_])", message, re.IGNORECASE) is not None


def classify(exc: BaseException, names: Iterable[str], paths: Iterable[Any] = ()) -> str | None:
    """None when `exc` is a good exception for a call whose argument names are `names`, else why not."""
    if any(klass.__module__ == "kvm.errors" for klass in type(exc).__mro__):
        return None  # KvmError (CapabilityError, UnavailableError), DeviceError, ClosedError, ForkedError, ...
    if isinstance(exc, AttributeError) and _where(exc).startswith("kvm/arches.py"):
        return None  # a method the binding's arch lacks (kvm.arches.Absent: hasattr() is False, the message says why)
    if type(exc) is LookupError:
        return None
    if isinstance(exc, OSError) and exc.filename is not None and any(exc.filename == p for p in paths):
        return None
    if isinstance(exc, _NAMED_TYPES):
        message = str(exc)
        if any(_mentions(message, n) for n in names if n):
            return None
        return "names no argument"
    return "not a library type"


def _short(value: Any, limit: int = 48) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        for base in (64, 63, 32, 31):
            for k in (-1, 0, 5):
                if value == (1 << base) + k:
                    return f"2**{base}{'+' if k > 0 else ''}{k if k else ''}"
                if value == -(1 << base) + k:
                    return f"-2**{base}{'+' if k > 0 else ''}{k if k else ''}"
        return hex(value) if value > 0xFFFF else str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"float({str(value)!r})"
    if isinstance(value, (bytes, bytearray)) and len(value) > 16:
        return f"bytes({len(value)})"
    if isinstance(value, dict):
        inner = ", ".join(f"{k!r}: {_short(v, 20)}" for k, v in list(value.items())[:4])
        text = "{" + inner + (", ..." if len(value) > 4 else "") + "}"
    elif isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        inner = ", ".join(_short(v, 24) for v in value[:3])
        text = ("[" if isinstance(value, list) else "(") + inner + (", ..." if len(value) > 3 else "") + (
            "]" if isinstance(value, list) else ")")
    else:
        try:
            text = repr(value)
        except Exception:
            text = f"<{type(value).__name__}>"
    text = re.sub(r" at 0x[0-9a-f]+", "", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class StopBatch(BaseException):
    """The batch made its calls: raised by the next call, it ends the hypothesis run (after the teardown)."""


class NotOffered(Exception):
    """The object's class has no such attribute at all (another arch's object): not a call."""


def offers(obj: Any, name: str) -> bool:
    """Whether the object's class has `name` (an arch-gated one that raises AttributeError counts: it is offered,
    and says why it is absent)."""
    return any(name in vars(klass) for klass in type(obj).__mro__)


def _lazy(obj: Any, name: str) -> Callable[..., Any]:
    """obj.name(...), looked up when called (so that an attribute the object lacks raises inside the call)."""
    def method(*args: Any, **kwargs: Any) -> Any:
        if not offers(obj, name):
            raise NotOffered(name)
        return getattr(obj, name)(*args, **kwargs)
    return method


def _quietly(call: Callable[[], Any]) -> Callable[[], None]:
    """`call` for another thread, whose exceptions (ClosedError, ForkedError, ...) are not findings."""

    def run() -> None:
        try:
            call()
        except kvm.Error:
            pass

    return run


def _where(exc: BaseException) -> str:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return "?"
    code = last.tb_frame.f_code
    return f"{os.path.relpath(code.co_filename, os.path.dirname(HERE))}:{last.tb_lineno} ({code.co_name})"


class Tally:
    """Counts of one batch (or of many, merged): calls, exceptions, good ones, findings by kind."""

    def __init__(self) -> None:
        self.calls = 0
        self.exceptions = 0
        self.good = 0
        self.forks = 0
        self.child_crashes = 0
        self.hangs = 0
        self.findings: dict[str, dict[str, Any]] = {}

    def finding(self, kind: str, key: str, example: str, detail: str) -> None:
        entry = self.findings.get(key)
        if entry is None:
            self.findings[key] = {"kind": kind, "count": 1, "example": example, "detail": detail}
        else:
            entry["count"] += 1
            if len(example) < len(entry["example"]):  # keep the shortest reproduction
                entry["example"], entry["detail"] = example, detail

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))

    def merge(self, other: dict[str, Any]) -> None:
        for name in ("calls", "exceptions", "good", "forks", "child_crashes", "hangs"):
            setattr(self, name, getattr(self, name) + other.get(name, 0))
        for key, entry in other.get("findings", {}).items():
            mine = self.findings.get(key)
            if mine is None:
                self.findings[key] = dict(entry)
            else:
                mine["count"] += entry["count"]
                if len(entry["example"]) < len(mine["example"]):
                    mine["example"], mine["detail"] = entry["example"], entry["detail"]


# -- guests ------------------------------------------------------------------------------------------

STUB = 0x0F00  # every interrupt vector of the IVT points here: hlt; jmp back to the hlt
CODE = 0x1000
DATA = 0x1100
MMIO = 0x20000  # no slot there unless the machine adds one
HALT = bytes([0xF4, 0xEB, 0xFD])  # hlt ; jmp $-1 (each later run halts again)
PROGRAMS: dict[str, bytes] = {
    "out": bytes([0xB0, 0x42, 0xE6, 0x10]) + HALT,                              # mov al, 0x42; out 0x10, al
    "in": bytes([0xE4, 0x20, 0xE6, 0x21]) + HALT,                               # in al, 0x20; out 0x21, al
    "in_out_word": bytes([0xBA, 0xF8, 0x03, 0xED, 0xEF]) + HALT,                # mov dx, 0x3f8; in ax, dx; out dx, ax
    "in_dword": bytes([0xBA, 0xF8, 0x03, 0x66, 0xED, 0x66, 0xEF]) + HALT,      # in eax, dx; out dx, eax
    "outsb": bytes([0xBE, 0x00, 0x11, 0xB9, 0x04, 0x00, 0xBA, 0x80, 0x00, 0xF3, 0x6E]) + HALT,  # rep outsb x4
    "insb": bytes([0xBF, 0x00, 0x11, 0xB9, 0x04, 0x00, 0xBA, 0x80, 0x00, 0xF3, 0x6C]) + HALT,   # rep insb x4
    "mmio_write": bytes([0xB8, 0x00, 0x20, 0x8E, 0xD8, 0xC6, 0x06, 0x00, 0x00, 0x5A]) + HALT,  # byte [0x20000] = 0x5a
    "mmio_read": bytes([0xB8, 0x00, 0x20, 0x8E, 0xD8, 0xA0, 0x00, 0x00, 0xE6, 0x10]) + HALT,   # al = [0x20000]; out
    "mmio_read32": bytes([0xB8, 0x00, 0x20, 0x8E, 0xD8, 0x66, 0xA1, 0x00, 0x00, 0x66, 0xE7, 0x10]) + HALT,
    "rdmsr": bytes([0x66, 0xB9, 0x78, 0x56, 0x34, 0x12, 0x0F, 0x32, 0x66, 0xE7, 0x10]) + HALT,
    "wrmsr": bytes([0x66, 0xB9, 0x78, 0x56, 0x34, 0x12, 0x66, 0xB8, 0x01, 0, 0, 0, 0x66, 0x31, 0xD2, 0x0F, 0x30]) + HALT,
    "hlt": HALT,
    "spin": bytes([0xEB, 0xFE]),                                                # jmp $ (kicked by the watchdog)
    "loop": bytes([0xB9, 0x20, 0x00, 0xE2, 0xFE, 0xE6, 0x10]) + HALT,          # 32 x loop; out 0x10, al
    "triple_fault": bytes([0x0F, 0x01, 0x1E, 0x00, 0x11, 0xCC]),               # lidt [zero limit]; int3
    "int3": bytes([0xCC]) + HALT,
    "hypercall": bytes([0x66, 0xB8, 0x0C, 0, 0, 0, 0x0F, 0x01, 0xD9]) + HALT,  # mov eax, 12; vmmcall
    "ioeventfd": bytes([0xB0, 0x01, 0xE6, 0x70, 0xE6, 0x10]) + HALT,          # out 0x70 (ioeventfd), out 0x10
    "dirty": bytes([0xC6, 0x06, 0x00, 0x12, 0x77, 0xE6, 0x10]) + HALT,        # byte [0x1200] = 0x77; out 0x10
    "cpuid": bytes([0x66, 0x31, 0xC0, 0x0F, 0xA2, 0x66, 0xE7, 0x10]) + HALT,
}
IVT = b"".join(STUB.to_bytes(2, "little") + b"\0\0" for _ in range(256))

# -- the watchdog: a run() that does not return within TIMEOUT is kicked (from this other thread) ---


class Watchdog:
    TIMEOUT = 0.05

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.target: Any = None
        self.deadline = 0.0
        self.kicks = 0
        self.thread = threading.Thread(target=self._loop, name="fuzz-watchdog", daemon=True)
        self.thread.start()

    def arm(self, vcpu: Any) -> None:
        with self.lock:
            self.target, self.deadline = vcpu, time.monotonic() + self.TIMEOUT

    def disarm(self) -> None:
        with self.lock:
            self.target = None

    def _loop(self) -> None:
        while True:
            time.sleep(0.005)
            with self.lock:
                if self.target is not None and time.monotonic() > self.deadline:
                    self.deadline = time.monotonic() + self.TIMEOUT
                    self.kicks += 1
                    try:
                        self.target.kick()
                    except Exception:
                        pass


# -- the state machine ---------------------------------------------------------------------------------

import hypothesis  # noqa: E402
import hypothesis.errors  # noqa: E402
from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, multiple, precondition, rule  # noqa: E402

import kvm  # noqa: E402
from guests import real_mode_guest  # noqa: E402

BINDING = kvm.generated.load()
C = BINDING.CONSTANTS
FFI = BINDING.ffi


class _Unusual:
    def __repr__(self) -> str:
        return "object()"

    def __index__(self) -> int:  # an object that converts to an int only through __index__
        return 3


HOSTILE: list[Any] = [-1, -(1 << 63) - 1, (1 << 64) + 5, 1 << 64, 1 << 63, 1 << 31, 1.5, float("nan"),
                      float("inf"), True, False, None, "7", b"\x07", [], {}, _Unusual(), 1j]
RECORD_PROPERTIES = ["regs", "sregs", "sregs2", "fpu", "lapic", "xsave", "xcrs", "debugregs", "vcpu_events"]
STRUCT_OF = {"regs": "struct kvm_regs", "sregs": "struct kvm_sregs", "sregs2": "struct kvm_sregs2",
             "fpu": "struct kvm_fpu", "lapic": "struct kvm_lapic_state", "xsave": "struct kvm_xsave",
             "xcrs": "struct kvm_xcrs", "debugregs": "struct kvm_debugregs", "vcpu_events": "struct kvm_vcpu_events"}


def hostile_or(valid: Any, keys: bool = False) -> st.SearchStrategy[Any]:
    """Mostly valid values (a list or a strategy), sometimes a hostile one (a hashable one for `keys`:
    of a dict, which cannot hold the others)."""
    valid = st.sampled_from(valid) if isinstance(valid, (list, tuple)) else valid
    hostile = [h for h in HOSTILE if isinstance(h, collections.abc.Hashable)] if keys else HOSTILE
    return st.one_of(valid, valid, st.sampled_from(hostile))


def _record_names(value: Any, out: set[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str):
                out.add(k)
            _record_names(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value[:8]:
            _record_names(v, out)


def _touch_cdata(cdata: Any, depth: int = 0) -> int:
    """Read every member of a record (recursively, arrays by their first element); returns a checksum."""
    total = 0
    ctype = FFI.typeof(cdata)
    if ctype.kind == "pointer":
        ctype = ctype.item
        cdata = cdata[0]
    if ctype.kind in ("struct", "union"):
        for name, field in ctype.fields or ():
            if not name:
                continue
            value = getattr(cdata, name)
            if field.type.kind == "primitive":
                total += int(value) if field.type.cname not in ("float", "double") else 0
            elif depth < 3 and field.type.kind in ("struct", "union", "array"):
                total += _touch_cdata(value, depth + 1) if field.type.kind != "array" else _touch_array(value, depth)
    return total


def _touch_array(array: Any, depth: int) -> int:
    if len(array) == 0:
        return 0
    item = array[0]
    return int(item) if isinstance(item, int) else _touch_cdata(item, depth + 1) if isinstance(item, FFI.CData) else 0


class KvmMachine(RuleBasedStateMachine):
    kvms = Bundle("kvms")
    vms = Bundle("vms")
    vcpus = Bundle("vcpus")
    memories = Bundle("memories")
    gmemfds = Bundle("gmemfds")
    exits = Bundle("exits")
    views = Bundle("views")
    cdatas = Bundle("cdatas")
    eventfds = Bundle("eventfds")
    devices = Bundle("devices")

    # set by run_batch() before a run
    tally: Tally = Tally()
    log_fd = -1
    watchdog: Watchdog | None = None
    tmpdir = "/tmp"
    examples = 0
    limit: float = math.inf  # calls after which the batch stops
    MAX_CHILD_SECONDS = 20.0

    def __init__(self) -> None:
        super().__init__()
        self.t = type(self).tally
        self.initial_taken = 0
        self.rng = random.Random(0)
        self._base_objects: dict[str, Any] | None = None
        self.forks_here = 0
        self.view_source: dict[int, str] = {}
        self.released: set[int] = set()
        self.blocking_eventfds: set[int] = set()  # ids of the EventFds made with nonblocking=False
        type(self).examples += 1
        self.explicit_teardown = type(self).examples % 2 == 0

    # -- calling and classifying -----------------------------------------------------------------

    def log(self, text: str) -> None:
        if self.log_fd >= 0:
            os.write(self.log_fd, (text + "\n").encode(errors="replace"))

    def call(self, label: str, fn: Callable[..., Any], *args: Any, names: Iterable[str] = (),
             paths: Iterable[Any] = (), in_child: bool = False, **kwargs: Any) -> tuple[bool, Any]:
        """Call `fn`, count it, classify what it raised; returns (True, result) or (False, exception)."""
        shown = ", ".join([_short(a) for a in args] + [f"{k}={_short(v)}" for k, v in kwargs.items()])
        text = f"{label}({shown})"
        if self.t.calls >= self.limit:
            raise StopBatch
        self.log(text)
        self.t.calls += 1
        try:
            return True, fn(*args, **kwargs)
        except NotOffered:
            self.t.calls -= 1
            return False, None
        except Exception as exc:  # noqa: BLE001 - classified below
            self.t.exceptions += 1
            all_names = set(names) | set(kwargs)
            for value in list(args) + list(kwargs.values()):
                if isinstance(value, str):
                    all_names.add(value)
                _record_names(value, all_names)
            why = classify(exc, all_names, paths)
            if why is None and in_child and isinstance(exc, kvm.KvmError) and exc.errno is not None \
                    and not isinstance(exc, (kvm.CapabilityError, kvm.UnavailableError)):
                why = "an ioctl was issued on an inherited fd in a forked child"
            if why is None:
                self.t.good += 1
            else:
                key = f"{label} -> {type(exc).__name__} at {_where(exc)}"  # one finding per call and place
                self.t.finding(why, key, text, f"{type(exc).__name__}: {str(exc)[:160]} [{_where(exc)}]")
            return False, exc

    def harmful(self, key: str, example: str, detail: str) -> None:
        self.t.finding("harmful", key, example, detail)

    def draw_int(self, data: Any, valid: Any, label: str) -> Any:
        return data.draw(hostile_or(valid), label=label)

    # -- the initial state: a Kvm, a VM with 64 KiB at 0, a real-mode guest vCPU (in any order) ----------

    def _base(self) -> dict[str, Any]:
        base: dict[str, Any] | None = getattr(self, "_base_objects", None)
        if base is None:
            base = self._base_objects = {}
            ok, system = self.call("kvm.Kvm", kvm.Kvm)
            if ok:
                base["kvms"] = system
                ok, vm = self.call("system.create_vm", _lazy(system, "create_vm"))
                if ok:
                    base["vms"] = vm
                    ok, result = self.call("guests.real_mode_guest", real_mode_guest, vm, PROGRAMS["out"])
                    if ok:
                        base["memories"], base["vcpus"] = result
                        self._load(base["vcpus"], "out")
        return base

    def _initial(self, bundle: str) -> Any:
        obj = self._base().get(bundle)
        self.initial_taken += 1
        if self.initial_taken == 4:
            self._base_objects = {}  # (only the bundles hold them now: they can be dropped)
        return multiple() if obj is None else obj

    @initialize(seed=st.integers(0, (1 << 32) - 1))
    def init_rng(self, seed: int) -> None:
        """For the rare branches: hypothesis's own draws favour the simplest value, which would make them common."""
        self.rng = random.Random(seed)

    @initialize(target=kvms)
    def init_kvm(self) -> Any:
        return self._initial("kvms")

    @initialize(target=vms)
    def init_vm(self) -> Any:
        return self._initial("vms")

    @initialize(target=memories)
    def init_memory(self) -> Any:
        return self._initial("memories")

    @initialize(target=vcpus)
    def init_vcpu(self) -> Any:
        return self._initial("vcpus")

    @rule(target=kvms, data=st.data())
    def new_kvm(self, data: Any) -> Any:
        choice = data.draw(st.sampled_from(["default", "default", "path", "binding", "older", "other-arch"]))
        if choice == "path":
            path = data.draw(st.sampled_from(["/dev/null", "/nonexistent/kvm", 7, None, b"/dev/kvm", 1.5]))
            ok, system = self.call("kvm.Kvm", kvm.Kvm, path, names=("path",), paths=(path,))
        elif choice == "binding":
            ok, system = self.call("kvm.Kvm", kvm.Kvm, binding=data.draw(st.sampled_from([kvm, "7.2", 7, object()])))
        elif choice == "older":
            ok, system = self.call("kvm.Kvm", kvm.Kvm, binding=kvm.generated.load("6.1"))
        elif choice == "other-arch":
            ok, binding = self.call("kvm.generated.load", kvm.generated.load,
                                    data.draw(hostile_or(["7.2", "6.12", "9.9"])),
                                    data.draw(hostile_or(["arm64", "riscv64", "x86_64", "vax"])),
                                    names=("version", "arch"))
            if not ok:
                return multiple()
            ok, system = self.call("kvm.Kvm", kvm.Kvm, binding=binding)
        else:
            ok, system = self.call("kvm.Kvm", kvm.Kvm)
        if ok and sum(not k.closed for k in self._live("kvms")) >= 3:
            system.close()
        return system if ok else multiple()

    def _live(self, bundle: str) -> list[Any]:
        return [self.names_to_values[ref.name] for ref in self.bundle(bundle)]

    def _open_vms(self) -> int:
        return sum(not vm.closed for vm in self._live("vms"))

    @rule(target=vms, system=kvms, data=st.data())
    def create_vm(self, system: Any, data: Any) -> Any:
        if self._open_vms() >= 3:
            return multiple()
        vm_type = data.draw(hostile_or([0, 0, 0, 1, 2, 99]), label="type")
        ok, vm = self.call("system.create_vm", _lazy(system, "create_vm"), type=vm_type)
        return vm if ok else multiple()

    @rule(target=vcpus, vm=vms, data=st.data())
    def guest(self, vm: Any, data: Any) -> Any:
        """A real-mode guest (tests/guests.py), with an IVT whose vectors all halt."""
        if getattr(vm, "closed", True) or len(vm.vcpus) >= 3:
            return multiple()
        name = data.draw(st.sampled_from(sorted(PROGRAMS)), label="program")
        vcpu_id = data.draw(st.sampled_from([0, 1, 2, 3]), label="id")
        ok, result = self.call("guests.real_mode_guest", real_mode_guest, vm, PROGRAMS[name], vcpu_id=vcpu_id,
                               names=("id", "vcpu_id"))
        if not ok:
            return multiple()
        mem, vcpu = result
        self.call("memory.write", _lazy(mem, "write"), 0, IVT, names=("address", "data"))
        self.call("memory.write", _lazy(mem, "write"), STUB, HALT, names=("address", "data"))
        self.call("memory.fill", _lazy(mem, "fill"), DATA, 0x100, 0)
        return vcpu

    @rule(target=vcpus, vm=vms, data=st.data())
    def create_vcpu(self, vm: Any, data: Any) -> Any:
        if not getattr(vm, "closed", True) and len(vm.vcpus) >= 3:
            return multiple()
        vcpu_id = self.draw_int(data, [0, 1, 2, 3, 4095, 1 << 30], "id")
        ok, vcpu = self.call("vm.create_vcpu", _lazy(vm, "create_vcpu"), id=vcpu_id)
        return vcpu if ok else multiple()

    @rule(target=memories, vm=vms, data=st.data())
    def add_memory(self, vm: Any, data: Any) -> Any:
        if not getattr(vm, "closed", True) and len(vm.memory) >= 5:
            return multiple()
        kwargs: dict[str, Any] = {}
        guest_addr = self.draw_int(data, [0, 0, 0x10000, MMIO, 0x100000, 0xFFFFF000, 1 << 40, 0x1234], "guest_addr")
        size = self.draw_int(data, [0x1000, 0x2000, 0x10000, 0x10000, 0x100000, 1 << 31, 0x1001, 1 << 40,
                                    (1 << 64) - 1], "size")
        if data.draw(st.booleans(), label="with flags"):
            kwargs["flags"] = self.draw_int(data, [0, 1, 2, 4, 0xFFFF], "flags")
        if data.draw(st.booleans(), label="with slot"):
            kwargs["slot"] = self.draw_int(data, [0, 1, 5, 32767, 0x10000, 0xFFFFFFFF], "slot")
        backing = data.draw(st.sampled_from(["anon", "anon", "memfd", "file", "fd", "bad-file", "guest_memfd",
                                             "gmemfd-object"]), label="backing")
        paths: tuple[Any, ...] = ()
        if backing == "memfd":
            kwargs["memfd"] = data.draw(st.sampled_from([True, 1, "yes"]))
        elif backing == "file":
            path = os.path.join(self.tmpdir, "backing")
            if not os.path.exists(path):
                with open(path, "wb") as f:
                    f.truncate(0x20000)
            kwargs["file"] = data.draw(st.sampled_from([path, path, "/nonexistent/file", "/dev/null"]))
            kwargs["file_offset"] = self.draw_int(data, [0, 0x1000, 0x1001, 0x20000], "file_offset")
            paths = (kwargs["file"],)
        elif backing == "fd":
            kwargs["file"] = data.draw(st.sampled_from([0, 1, 2, 4095, -1, 1 << 40]))
        elif backing == "bad-file":
            kwargs["file"] = data.draw(st.sampled_from([1.5, b"/dev/zero", object(), ["x"]]))
        elif backing == "guest_memfd":
            kwargs["guest_memfd"] = True
            kwargs["guest_memfd_offset"] = self.draw_int(data, [0, 0x1000], "guest_memfd_offset")
        else:
            held = self._live("gmemfds")
            if held and backing == "gmemfd-object":
                kwargs["guest_memfd"] = data.draw(st.sampled_from(held))
        ok, mem = self.call("vm.add_memory", _lazy(vm, "add_memory"), guest_addr, size, names=("guest_addr", "size"),
                            paths=paths, **kwargs)
        return mem if ok else multiple()

    @rule(target=gmemfds, vm=vms, data=st.data())
    def create_guest_memfd(self, vm: Any, data: Any) -> Any:
        size = self.draw_int(data, [0x1000, 0x10000, 0, 0x1001, 1 << 40], "size")
        flags = self.draw_int(data, [0, 1, 2, 3, 0x80], "flags")
        ok, gmem = self.call("vm.create_guest_memfd", _lazy(vm, "create_guest_memfd"), size=size, flags=flags)
        return gmem if ok else multiple()

    @rule(target=devices, vm=vms, data=st.data())
    def create_device(self, vm: Any, data: Any) -> Any:
        kind = self.draw_int(data, [C["KVM_DEV_TYPE_VFIO"], C["KVM_DEV_TYPE_ARM_VGIC_V3"], 0, 0xFFFF], "type")
        test = data.draw(st.sampled_from([False, False, True, 1, None]), label="test")
        ok, device = self.call("vm.create_device", _lazy(vm, "create_device"), kind, test=test, names=("type",))
        return device if ok and device is not None else multiple()

    @rule(target=eventfds, vm=vms, data=st.data())
    def eventfd(self, vm: Any, data: Any) -> Any:
        how = data.draw(st.sampled_from(["irqfd", "ioeventfd", "new", "bad-fd"]))
        held = self._live("eventfds")
        reuse = data.draw(st.sampled_from(held)) if held and data.draw(st.booleans()) else None
        if how == "irqfd":
            kwargs: dict[str, Any] = {}
            if data.draw(st.booleans()):
                kwargs["resample"] = reuse if reuse is not None else kvm.EventFd()
            ok, efd = self.call("vm.irqfd", _lazy(vm, "irqfd"), self.draw_int(data, [0, 4, 23, 1024], "gsi"), reuse,
                                names=("gsi", "eventfd"), **kwargs)
        elif how == "ioeventfd":
            ok, efd = self.call("vm.ioeventfd", _lazy(vm, "ioeventfd"), self.draw_int(data, [0x70, 0x80, MMIO, 0x1000], "address"),
                                self.draw_int(data, [1, 2, 4, 8, 0, 3], "length"),
                                datamatch=data.draw(hostile_or([None, 0, 1, 0x42])),
                                pio=data.draw(st.sampled_from([True, False, 1])), eventfd=reuse,
                                names=("address", "length"))
        elif how == "bad-fd":
            fd = data.draw(st.sampled_from([1.5, "3", -5, 1 << 64, None]))
            ok, efd = self.call("kvm.EventFd", kvm.EventFd, fd, names=("fd",))
            if ok and fd is not None and not (isinstance(fd, int) and fd < 0):
                self.t.finding("accepted", f"EventFd(fd={type(fd).__name__}) accepted", f"kvm.EventFd({_short(fd)})",
                               "kept as the fd: fileno(), notify(), close() fail later, far from the call")
        else:
            nonblocking = data.draw(st.sampled_from([True, False]))
            ok, efd = self.call("kvm.EventFd", kvm.EventFd, nonblocking=nonblocking)
            if ok and not nonblocking:
                self.blocking_eventfds.add(id(efd))  # (its read() waits: see eventfd_op)
        return efd if ok else multiple()

    # -- system ------------------------------------------------------------------------------------

    @rule(system=kvms, data=st.data())
    def system_op(self, system: Any, data: Any) -> None:
        op = data.draw(st.sampled_from(["api_version", "vcpu_mmap_size", "check_extension", "supported_cpuid",
                                        "emulated_cpuid", "msr_index_list", "msr_feature_index_list",
                                        "get_msr_features", "attr", "fileno", "repr", "enable_cap", "ioctls",
                                        "install_kick_handler", "load"]), label="op")
        if op in ("api_version", "vcpu_mmap_size"):
            self.call(f"system.{op}", lambda: getattr(system, op))
        elif op == "check_extension":
            cap = data.draw(hostile_or([C["KVM_CAP_IRQCHIP"], "IRQCHIP", "KVM_CAP_USER_MEMORY", "NOPE",
                                        kvm.generated.Cap.NR_VCPUS if hasattr(kvm.generated, "Cap") else 9, 1 << 40]))
            self.call("system.check_extension", _lazy(system, "check_extension"), cap, names=("cap",))
        elif op in ("supported_cpuid", "emulated_cpuid", "msr_index_list", "msr_feature_index_list"):
            self.call(f"system.{op}", _lazy(system, op))
        elif op == "get_msr_features":
            indices = data.draw(st.one_of(st.lists(hostile_or([0x10A, 0x345, 0x480, 0xFFFFFFFF]), max_size=4),
                                          st.sampled_from(HOSTILE)))
            self.call("system.get_msr_features", _lazy(system, "get_msr_features"), indices, names=("indices",))
        elif op == "attr":
            self._attr_op(system, data, "system", settable=False)
        elif op == "fileno":
            self.call("system.fileno", _lazy(system, "fileno"))
        elif op == "repr":
            self.call("repr", repr, system)
        elif op == "enable_cap":
            self.call("system.enable_cap", _lazy(system, "enable_cap"), data.draw(hostile_or(["IRQCHIP", 0, 7])), names=("cap",))
        elif op == "ioctls":
            wrapper = data.draw(st.sampled_from(["get_api_version", "get_vcpu_mmap_size", "get_msr_index_list",
                                                 "check_extension", "get_supported_cpuid"]))
            args = [self.draw_int(data, [1, 0, 64], "arg")] if wrapper in ("check_extension", "get_supported_cpuid") else []
            self.call(f"system.ioctls.{wrapper}", lambda *a: getattr(system.ioctls, wrapper)(*a), *args,
                      names=("cap", "nent", "arg"))
        elif op == "install_kick_handler":
            signum = data.draw(st.sampled_from([None, 0, 9, 19, 1000, -1, 1.5, "x", True]))
            self.call("kvm.install_kick_handler", kvm.install_kick_handler, signum, names=("signum",))
        else:
            self.call("kvm.generated.load", kvm.generated.load, data.draw(hostile_or(["7.2", "6.1", "1.0"])),
                      data.draw(hostile_or([None, "x86_64", "arm64", "pdp11"])), names=("version", "arch"))

    def _attr_op(self, obj: Any, data: Any, who: str, settable: bool = True) -> None:
        group = self.draw_int(data, [0, 1, 2, 6, 0xFFFFFFFF], "group")
        attr = self.draw_int(data, [0, 1, 0x10, (1 << 64) - 1], "attr")
        op = data.draw(st.sampled_from(["has", "get", "read", "set"] if settable else ["has", "get", "read"]))
        if op == "has":
            self.call(f"{who}.has_attr", _lazy(obj, "has_attr"), group, attr, names=("group", "attr"))
        elif op == "get":
            self.call(f"{who}.get_attr", _lazy(obj, "get_attr"), group, attr, size=self.draw_int(data, [1, 2, 4, 8, 3], "size"),
                      names=("group", "attr"))
        elif op == "read":
            self.call(f"{who}.read_attr", _lazy(obj, "read_attr"), group, attr, self.draw_int(data, [8, 16, 0, 1 << 31], "size"),
                      names=("group", "attr", "size"))
        else:
            value = data.draw(hostile_or([None, 0, 1, b"\x01\x02", b"", bytes(64)]), label="value")
            self.call(f"{who}.set_attr", _lazy(obj, "set_attr"), group, attr, value,
                      size=self.draw_int(data, [8, 4, 1, 16], "size"), names=("group", "attr", "value"))

    # -- VM ------------------------------------------------------------------------------------------

    VM_OPS = ["remove_memory", "set_memory_flags", "memory", "memory_at", "read", "write", "check_extension",
              "enable_cap", "create_irqchip", "get_irqchip", "set_irqchip", "create_pit2", "pit2", "irq_line",
              "signal_msi", "set_gsi_routing", "irqfd_remove", "ioeventfd_remove", "get_dirty_log", "dirty_pages",
              "manual_dirty", "clear_dirty_log", "enable_dirty_ring", "reset_dirty_rings", "coalesced",
              "coalesced_entries", "set_user_space_msr", "set_msr_filter", "stats", "set_tss_addr",
              "set_identity_map_addr", "set_boot_cpu_id", "clock", "set_clock", "attr", "vcpus", "repr", "ioctls",
              "exit_hypercall"]

    @rule(vm=vms, data=st.data())
    def vm_op(self, vm: Any, data: Any) -> None:
        op = data.draw(st.sampled_from(self.VM_OPS), label="op")
        mems = self._live("memories")
        any_mem = data.draw(st.sampled_from(mems + HOSTILE[:3])) if mems else data.draw(st.sampled_from(HOSTILE))
        if op == "remove_memory":
            target = any_mem if data.draw(st.booleans()) else self.draw_int(data, [0, 1, 2, 99], "memory")
            self.call("vm.remove_memory", _lazy(vm, "remove_memory"), target, names=("memory",))
        elif op == "set_memory_flags":
            self.call("vm.set_memory_flags", _lazy(vm, "set_memory_flags"), any_mem,
                      self.draw_int(data, [0, 1, 2, 0x10], "flags"), names=("memory", "flags"))
        elif op == "memory":
            self.call("vm.memory", lambda: vm.memory)
        elif op == "memory_at":
            self.call("vm.memory_at", _lazy(vm, "memory_at"), self.draw_int(data, [0, CODE, MMIO, 0x100000], "guest_addr"),
                      names=("guest_addr",))
        elif op == "read":
            self.call("vm.read", _lazy(vm, "read"), self.draw_int(data, [0, CODE, 0xFFFF, MMIO], "guest_addr"),
                      self.draw_int(data, [1, 16, 0x1000, 0, (1 << 31) + 1], "length"), names=("guest_addr", "length"))
        elif op == "write":
            self.call("vm.write", _lazy(vm, "write"), self.draw_int(data, [DATA, 0xFFFF, MMIO], "guest_addr"),
                      data.draw(hostile_or([b"\x01", bytes(8), bytearray(3), memoryview(b"ab")])),
                      names=("guest_addr", "data"))
        elif op == "check_extension":
            self.call("vm.check_extension", _lazy(vm, "check_extension"),
                      data.draw(hostile_or(["IRQCHIP", "NR_MEMSLOTS", C["KVM_CAP_MAX_VCPUS"], "NOPE"])), names=("cap",))
        elif op == "enable_cap":
            cap = data.draw(hostile_or(["KVM_CAP_X86_DISABLE_EXITS", "KVM_CAP_SPLIT_IRQCHIP", "HALT_POLL",
                                        "NOPE", 0]))
            args = data.draw(st.lists(hostile_or([0, 1, 24, 1 << 40]), max_size=5))
            self.call("vm.enable_cap", _lazy(vm, "enable_cap"), cap, *args, flags=self.draw_int(data, [0, 1], "flags"),
                      names=("cap", "args"))
        elif op == "create_irqchip":
            self.call("vm.create_irqchip", _lazy(vm, "create_irqchip"))
        elif op == "get_irqchip":
            ok, chip = self.call("vm.get_irqchip", _lazy(vm, "get_irqchip"), self.draw_int(data, [0, 1, 2, 3], "chip_id"),
                                 names=("chip_id",))
            if ok:
                self.call("vm.set_irqchip", _lazy(vm, "set_irqchip"), chip, names=("chip",))
        elif op == "set_irqchip":
            cd = self._live("cdatas")
            chip = data.draw(st.sampled_from(cd + HOSTILE[:4])) if cd else data.draw(st.sampled_from(HOSTILE))
            self.call("vm.set_irqchip", _lazy(vm, "set_irqchip"), chip, names=("chip", "struct kvm_irqchip"))
        elif op == "create_pit2":
            self.call("vm.create_pit2", _lazy(vm, "create_pit2"), flags=self.draw_int(data, [0, 1, 2], "flags"))
        elif op == "pit2":
            ok, state = self.call("vm.pit2", lambda: vm.pit2)
            value = state if ok else data.draw(hostile_or([{"flags": 0}, {"channels": [{"count": 5}]}, b"\0" * 3,
                                                           {"nope": 1}]))
            self.call("vm.pit2 =", setattr, vm, "pit2", value, names=("pit2", "struct kvm_pit_state2"))
        elif op == "irq_line":
            self.call("vm.irq_line", _lazy(vm, "irq_line"), self.draw_int(data, [0, 4, 23, 24, 1024], "irq"),
                      self.draw_int(data, [0, 1, 2], "level"), names=("irq", "level"))
        elif op == "signal_msi":
            self.call("vm.signal_msi", _lazy(vm, "signal_msi"), self.draw_int(data, [0xFEE00000, 0], "address"),
                      self.draw_int(data, [0x20, 0], "data"), flags=self.draw_int(data, [0, 1], "flags"),
                      names=("address", "data"))
        elif op == "set_gsi_routing":
            route = data.draw(st.sampled_from([
                kvm.IrqchipRoute(0, 0, 0), kvm.IrqchipRoute(1, 2, 30), kvm.MsiRoute(5, 0xFEE00000, 0x20),
                kvm.MsiRoute(5, 1 << 64, 0), kvm.IrqchipRoute(-1, 0, 0), kvm.IrqchipRoute(1.5, 0, 0),  # type: ignore[arg-type]
                kvm.MsiRoute(2, 0xFEE00000, "x"), (0, 0, 0), None]))  # type: ignore[arg-type]
            routes = data.draw(st.sampled_from([[route], [route, route], [], route, "routes"]))
            self.call("vm.set_gsi_routing", _lazy(vm, "set_gsi_routing"), routes, names=("routes", "gsi", "irqchip", "pin",
                                                                               "address", "data", "flags", "devid"))
        elif op == "irqfd_remove":
            efds = self._live("eventfds")
            if efds:
                self.call("vm.irqfd_remove", _lazy(vm, "irqfd_remove"), data.draw(st.sampled_from(efds)),
                          self.draw_int(data, [0, 4, 23], "gsi"), names=("eventfd", "gsi"))
        elif op == "ioeventfd_remove":
            efds = self._live("eventfds")
            if efds:
                self.call("vm.ioeventfd_remove", _lazy(vm, "ioeventfd_remove"), data.draw(st.sampled_from(efds)),
                          self.draw_int(data, [0x70, 0x80], "address"), self.draw_int(data, [1, 4], "length"),
                          pio=data.draw(st.booleans()), names=("eventfd", "address", "length"))
        elif op in ("get_dirty_log", "dirty_pages"):
            self.call(f"vm.{op}", _lazy(vm, op), any_mem, names=("memory",))
        elif op == "manual_dirty":
            self.call("vm.enable_manual_dirty_log_protect", _lazy(vm, "enable_manual_dirty_log_protect"),
                      initially_set=data.draw(st.sampled_from([False, True, 2])))
        elif op == "clear_dirty_log":
            self.call("vm.clear_dirty_log", _lazy(vm, "clear_dirty_log"), any_mem,
                      self.draw_int(data, [0, 64, 1, 1 << 31], "first_page"),
                      data.draw(hostile_or([None, 0, 1, 64, 1 << 31])),
                      bitmap=data.draw(hostile_or([None, b"\xff", bytes(16), "ff"])),
                      names=("memory", "first_page", "num_pages"))
        elif op == "enable_dirty_ring":
            self.call("vm.enable_dirty_ring", _lazy(vm, "enable_dirty_ring"), self.draw_int(data, [4096, 65536, 100, 1 << 31], "size_bytes"),
                      acq_rel=data.draw(st.booleans()), names=("size_bytes",))
        elif op == "reset_dirty_rings":
            self.call("vm.reset_dirty_rings", _lazy(vm, "reset_dirty_rings"))
        elif op == "coalesced":
            which = data.draw(st.sampled_from(["register_coalesced_mmio", "unregister_coalesced_mmio",
                                               "register_coalesced_pio", "unregister_coalesced_pio"]))
            self.call(f"vm.{which}", _lazy(vm, which), self.draw_int(data, [0x80, MMIO, 0x70], "address"),
                      self.draw_int(data, [1, 4, 0x1000, 0], "size"), names=("address", "port", "size"))
        elif op == "coalesced_entries":
            self.call("vm.coalesced_entries", _lazy(vm, "coalesced_entries"))
        elif op == "set_user_space_msr":
            self.call("vm.set_user_space_msr", _lazy(vm, "set_user_space_msr"), self.draw_int(data, [1, 2, 4, 7, 0], "reasons"),
                      names=("reasons",))
        elif op == "set_msr_filter":
            row = data.draw(st.sampled_from([
                kvm.MsrFilterRange(1, 0x12345678, 8, b"\x00"), kvm.MsrFilterRange(3, 0, 16, b"\xff\xff"),
                kvm.MsrFilterRange(1, 0, 64, b"\x00"), kvm.MsrFilterRange(1.5, 0, 8, b"\x00"),  # type: ignore[arg-type]
                kvm.MsrFilterRange(1, 0, -1, b""), kvm.MsrFilterRange(1, 0, 8, "x"),  # type: ignore[arg-type]
                (1, 0, 8, b"\0")]))
            rows = data.draw(st.sampled_from([[row], [row] * 17, [], row]))
            self.call("vm.set_msr_filter", _lazy(vm, "set_msr_filter"), rows, default_allow=data.draw(st.booleans()),
                      names=("ranges", "flags", "base", "nmsrs", "bitmap"))
        elif op == "stats":
            self.call("vm.stats", _lazy(vm, "stats"))
        elif op in ("set_tss_addr", "set_identity_map_addr"):
            self.call(f"vm.{op}", _lazy(vm, op), self.draw_int(data, [0xFFFBD000, 0xFEFFC000, 0], "address"),
                      names=("address",))
        elif op == "set_boot_cpu_id":
            self.call("vm.set_boot_cpu_id", _lazy(vm, "set_boot_cpu_id"), self.draw_int(data, [0, 1, 4096], "id"), names=("id",))
        elif op == "clock":
            ok, value = self.call("vm.clock", lambda: vm.clock)
            self.call("vm.clock =", setattr, vm, "clock", value if ok else self.draw_int(data, [0, 10**9], "clock"),
                      names=("clock", "clock_ns", "value"))
        elif op == "set_clock":
            self.call("vm.set_clock", _lazy(vm, "set_clock"), self.draw_int(data, [0, 10**9], "clock_ns"),
                      flags=self.draw_int(data, [0, 2, 4], "flags"), realtime=self.draw_int(data, [0], "realtime"),
                      names=("clock_ns",))
        elif op == "attr":
            self._attr_op(vm, data, "vm")
        elif op == "vcpus":
            self.call("vm.vcpus", lambda: vm.vcpus)
        elif op == "repr":
            self.call("repr", repr, vm)
        elif op == "exit_hypercall":
            self.call("vm.enable_cap", _lazy(vm, "enable_cap"), "KVM_CAP_EXIT_HYPERCALL", 1 << 12, names=("cap",))
        else:  # generated wrappers
            wrapper = data.draw(st.sampled_from(["get_clock", "get_pit2", "get_nr_mmu_pages", "get_tsc_khz",
                                                 "check_extension", "get_dirty_log", "reset_dirty_rings"]))
            args = [self.draw_int(data, [0, 1, 5], "arg")] if wrapper in ("check_extension", "get_dirty_log") else []
            self.call(f"vm.ioctls.{wrapper}", lambda *a: getattr(vm.ioctls, wrapper)(*a), *args,
                      names=("cap", "slot", "arg"))

    # -- vCPU ----------------------------------------------------------------------------------------

    def _run(self, vcpu: Any) -> tuple[bool, Any]:
        assert self.watchdog is not None
        self.watchdog.arm(vcpu)
        try:
            return self.call("vcpu.run", _lazy(vcpu, "run"))
        finally:
            self.watchdog.disarm()

    @rule(target=exits, vcpu=vcpus, data=st.data())
    def run(self, vcpu: Any, data: Any) -> Any:
        if data.draw(st.booleans(), label="load a program"):
            self._load(vcpu, data.draw(st.sampled_from(sorted(PROGRAMS)), label="program"))
        ok, exit = self._run(vcpu)
        if not ok:
            return multiple()
        if data.draw(st.booleans(), label="reply"):
            self._reply(exit, data)
        return exit

    @rule(target=exits, vcpu=vcpus, data=st.data())
    def run_again(self, vcpu: Any, data: Any) -> Any:
        return self.run(vcpu, data)

    def _load(self, vcpu: Any, name: str) -> None:
        vm = getattr(vcpu, "vm", None)
        if vm is None:
            return
        ok, mem = self.call("vm.memory_at", _lazy(vm, "memory_at"), CODE, names=("guest_addr",))
        if ok and CODE + 0x200 in mem and 0 in mem:
            self.call("memory.write", _lazy(mem, "write"), 0, IVT, names=("address", "data"))
            self.call("memory.write", _lazy(mem, "write"), STUB, HALT, names=("address", "data"))
            self.call("memory.write", _lazy(mem, "write"), CODE, PROGRAMS[name], names=("address", "data"))
            self.call("memory.fill", _lazy(mem, "fill"), DATA, 0x100, 0)
        self.call("kvm.x86.setup_real_mode", kvm.x86.setup_real_mode, vcpu, CODE, names=("entry", "vcpu"))

    def _reply(self, exit: Any, data: Any) -> None:
        if isinstance(exit, (kvm.IoExit, kvm.MmioExit)):
            value = data.draw(hostile_or([0, 0x41, 0xFF, 0xFFFF, b"\x01", b"\x01\x02\x03\x04", b"", bytes(8),
                                          bytearray(b"\x07"), (1 << 32) - 1, memoryview(b"\x05")]), label="reply")
            self.call(f"{type(exit).__name__}.reply", _lazy(exit, "reply"), value, names=("reply", "value"))
        elif isinstance(exit, kvm.RdmsrExit):
            if data.draw(st.booleans()):
                self.call("RdmsrExit.reply", _lazy(exit, "reply"), self.draw_int(data, [0, 1, (1 << 64) - 1], "value"),
                          names=("value",))
            else:
                self.call("RdmsrExit.fail", _lazy(exit, "fail"))
        elif isinstance(exit, kvm.WrmsrExit):
            self.call("WrmsrExit.reply", _lazy(exit, "reply")) if data.draw(st.booleans()) else self.call("WrmsrExit.fail", _lazy(exit, "fail"))
        elif isinstance(exit, kvm.HypercallExit):
            self.call("HypercallExit.reply", _lazy(exit, "reply"), self.draw_int(data, [0, 1, (1 << 64) - 1], "ret"), names=("ret",))

    VCPU_OPS = ["get_set", "set_dict", "set_bytes", "set_cdata", "mp_state", "msrs", "get_msrs", "set_msrs",
                "get_cpuid", "set_cpuid", "guest_debug", "translate", "interrupt", "nmi", "smi", "enable_cap",
                "sync_regs", "synced", "mark_synced_dirty", "harvest_dirty_ring", "coalesced_entries", "stats",
                "attr", "one_reg", "reg_list", "signal_mask", "immediate_exit", "kick", "load", "setup_mode",
                "kvm_run", "repr", "ioctls", "fileno"]

    @rule(vcpu=vcpus, data=st.data())
    def vcpu_op(self, vcpu: Any, data: Any) -> None:
        op = data.draw(st.sampled_from(self.VCPU_OPS), label="op")
        prop = data.draw(st.sampled_from(RECORD_PROPERTIES), label="property")
        ctype = STRUCT_OF[prop]
        if op == "get_set":
            ok, value = self.call(f"vcpu.{prop}", lambda: getattr(vcpu, prop))
            if ok:
                self.call(f"vcpu.{prop} =", setattr, vcpu, prop, value, names=(prop, ctype))
        elif op == "set_dict":
            fields = dict(FFI.typeof(ctype).fields or ())
            name = data.draw(st.sampled_from(sorted(fields) + ["nope"]), label="field")
            value = data.draw(hostile_or([0, 1, 0x1000, [1, 2], {"base": 0}, b"\x01"]), label="value")
            self.call(f"vcpu.{prop} =", setattr, vcpu, prop, {name: value}, names=(prop, ctype, name))
        elif op == "set_bytes":
            size = FFI.sizeof(ctype)
            value = bytes(data.draw(st.sampled_from([size, size - 1, size + 1, 0, 4096])))
            self.call(f"vcpu.{prop} =", setattr, vcpu, prop, value, names=(prop, ctype))
        elif op == "set_cdata":
            cd = self._live("cdatas")
            value = data.draw(st.sampled_from(cd)) if cd else data.draw(st.sampled_from(HOSTILE))
            self.call(f"vcpu.{prop} =", setattr, vcpu, prop, value, names=(prop, ctype))
        elif op == "mp_state":
            ok, value = self.call("vcpu.mp_state", lambda: vcpu.mp_state)
            self.call("vcpu.mp_state =", setattr, vcpu, "mp_state", value if ok and data.draw(st.booleans())
                      else self.draw_int(data, [0, 1, 3, 9], "mp_state"), names=("mp_state",))
        elif op == "msrs":
            if self.rng.random() < 0.1:  # slow (one ioctl per MSR): rarely
                self.call("vcpu.msrs", lambda: vcpu.msrs)
            else:
                self.call("vcpu.msrs =", setattr, vcpu, "msrs",
                          data.draw(st.sampled_from([{0x174: 1}, {0x12345678: 1}, {0x174: -1}, {1.5: 0}, [1]])),
                          names=("msrs", "values"))
        elif op == "get_msrs":
            indices = data.draw(st.one_of(st.lists(hostile_or([0x10, 0x174, 0xC0000080, 0x12345678]), max_size=4),
                                          st.sampled_from(HOSTILE)))
            self.call("vcpu.get_msrs", _lazy(vcpu, "get_msrs"), indices, names=("indices",))
        elif op == "set_msrs":
            values = data.draw(st.one_of(st.dictionaries(hostile_or([0x174, 0x175, 0x12345678], keys=True),
                                                         hostile_or([0, 1, 0x10]), max_size=3),
                                         st.sampled_from(HOSTILE)))
            self.call("vcpu.set_msrs", _lazy(vcpu, "set_msrs"), values, names=("values", "msrs"))
        elif op == "get_cpuid":
            self.call("vcpu.get_cpuid", _lazy(vcpu, "get_cpuid"), data.draw(hostile_or([None, 1, 64, 0, 1 << 20])),
                      names=("max_entries", "nent"))
        elif op == "set_cpuid":
            entries = data.draw(st.sampled_from([
                "supported", [], [kvm.CpuidEntry(0, 0, 0, 1, 2, 3, 4)], [kvm.CpuidEntry(-1)], [(1.5,)], [None],
                "abc", 5, [kvm.CpuidEntry(1)] * 300]))
            if entries == "supported":
                ok, entries = self.call("system.supported_cpuid", vcpu.vm.system.supported_cpuid)
                if not ok:
                    return
            self.call("vcpu.set_cpuid", _lazy(vcpu, "set_cpuid"), entries, names=("entries",) + kvm.CpuidEntry._fields)
        elif op == "guest_debug":
            self.call("vcpu.set_guest_debug", _lazy(vcpu, "set_guest_debug"), data.draw(st.sampled_from([True, False, 1])),
                      single_step=data.draw(st.booleans()),
                      hw_breakpoints=data.draw(st.sampled_from([(), (CODE,), (1, 2, 3, 4, 5), (-1,), "ab"])),
                      sw_breakpoints=data.draw(st.booleans()), flags=self.draw_int(data, [0, 1 << 16], "flags"),
                      names=("enable", "hw_breakpoints"))
        elif op == "translate":
            self.call("vcpu.translate", _lazy(vcpu, "translate"), self.draw_int(data, [0, CODE, (1 << 64) - 1], "gva"),
                      names=("gva",))
        elif op == "interrupt":
            self.call("vcpu.interrupt", _lazy(vcpu, "interrupt"), self.draw_int(data, [0x20, 0, 255, 256], "vector"),
                      names=("vector",))
        elif op in ("nmi", "smi", "reg_list", "stats", "harvest_dirty_ring", "coalesced_entries", "fileno"):
            self.call(f"vcpu.{op}", _lazy(vcpu, op))
        elif op == "enable_cap":
            self.call("vcpu.enable_cap", _lazy(vcpu, "enable_cap"), data.draw(hostile_or(["HYPERV_SYNIC", "NOPE", 0])),
                      *data.draw(st.lists(hostile_or([0, 1]), max_size=5)), names=("cap", "args"))
        elif op == "sync_regs":
            ok, value = self.call("vcpu.sync_regs", lambda: vcpu.sync_regs)
            self.call("vcpu.sync_regs =", setattr, vcpu, "sync_regs",
                      self.draw_int(data, [0, 1, 7, 8, 0xFFFF], "sync_regs"), names=("sync_regs",))
        elif op == "synced":
            self.call("vcpu.synced", lambda: vcpu.synced)
        elif op == "mark_synced_dirty":
            self.call("vcpu.mark_synced_dirty", _lazy(vcpu, "mark_synced_dirty"), self.draw_int(data, [0, 1, 7], "flags"),
                      names=("flags",))
        elif op == "attr":
            self._attr_op(vcpu, data, "vcpu")
        elif op == "one_reg":
            reg = self.draw_int(data, [0x2030000000000000, 0x6030000000100000, 0], "reg_id")
            if data.draw(st.booleans()):
                self.call("vcpu.get_one_reg", _lazy(vcpu, "get_one_reg"), reg, names=("reg_id",))
            else:
                self.call("vcpu.set_one_reg", _lazy(vcpu, "set_one_reg"), reg, self.draw_int(data, [0, 1], "value"),
                          names=("reg_id", "value"))
        elif op == "signal_mask":
            kick = int(kvm.vcpu.KICK_SIGNAL)
            signals = data.draw(st.sampled_from([None, [], [signal.SIGUSR2], [0], [65], [1.5], "x", [signal.SIGHUP]]))
            assert signals is None or isinstance(signals, str) or kick not in signals
            self.call("vcpu.set_signal_mask", _lazy(vcpu, "set_signal_mask"), signals, names=("signals", "signal number"))
        elif op == "immediate_exit":
            ok, _ = self.call("vcpu.immediate_exit", lambda: vcpu.immediate_exit)
            self.call("vcpu.immediate_exit =", setattr, vcpu, "immediate_exit",
                      data.draw(st.sampled_from([False, True, 0, 1, None])), names=("immediate_exit",))
        elif op == "kick":
            self.call("vcpu.kick", _lazy(vcpu, "kick"))
        elif op == "load":
            self._load(vcpu, data.draw(st.sampled_from(sorted(PROGRAMS)), label="program"))
        elif op == "setup_mode":
            mode = data.draw(st.sampled_from(["real", "protected", "long"]))
            mems = self._live("memories")
            memory = data.draw(st.sampled_from(mems + [None, "mem", 5])) if mems else None
            entry = self.draw_int(data, [CODE, 0, 0x10000, 0xFFFF0], "entry")
            if mode == "real":
                self.call("kvm.x86.setup_real_mode", kvm.x86.setup_real_mode, vcpu, entry,
                          cs=self.draw_int(data, [0, 0xF000, 0x10000], "cs"), names=("entry", "cs", "vcpu"))
            elif mode == "protected":
                self.call("kvm.x86.setup_protected_mode", kvm.x86.setup_protected_mode, vcpu, entry, memory=memory,
                          stack=self.draw_int(data, [0, 0x8000], "stack"), names=("entry", "memory", "vcpu"))
            else:
                self.call("kvm.x86.setup_long_mode", kvm.x86.setup_long_mode, vcpu, entry, memory=memory,
                          page_table_addr=self.draw_int(data, [0x10000, 0x3000, 0xFFFF000], "page_table_addr"),
                          identity_size=self.draw_int(data, [1 << 30, 1 << 21, 0, 1 << 40], "identity_size"),
                          names=("entry", "memory", "vcpu", "page_table_addr", "identity_size"))
            if memory is not None and hasattr(memory, "vm") and memory.vm is not None and memory.vm is not getattr(vcpu, "vm", None):
                pass  # (writes tables into the memory it is given: the caller's choice)
        elif op == "kvm_run":
            self.call("vcpu.kvm_run", lambda: vcpu.kvm_run)
        elif op == "repr":
            self.call("repr", repr, vcpu)
        else:
            wrapper = data.draw(st.sampled_from(["get_regs", "get_sregs", "get_fpu", "get_mp_state", "get_xcrs",
                                                 "get_vcpu_events", "get_debugregs", "get_cpuid2", "get_nested_state",
                                                 "get_tsc_khz", "set_regs", "set_sregs", "kvmclock_ctrl"]))
            args: list[Any] = []
            if wrapper in ("get_cpuid2", "get_nested_state"):
                args = [self.draw_int(data, [None, 1, 64, 0], "size")]
            elif wrapper.startswith("set_"):
                cd = self._live("cdatas")
                args = [data.draw(st.sampled_from(cd + [None, 5])) if cd else None]
            self.call(f"vcpu.ioctls.{wrapper}", lambda *a: getattr(vcpu.ioctls, wrapper)(*a), *args,
                      names=("arg", "nent", "size", "struct kvm_regs", "struct kvm_sregs"))

    @rule(target=cdatas, vcpu=vcpus, data=st.data())
    def get_cdata(self, vcpu: Any, data: Any) -> Any:
        which = data.draw(st.sampled_from(RECORD_PROPERTIES + ["kvm_run", "synced", "kvm_run", "synced",
                                                               "irqchip", "clock"]))
        if which == "irqchip":
            vm = getattr(vcpu, "vm", None)
            ok, value = self.call("vm.get_irqchip", _lazy(vm, "get_irqchip"), 0) if vm else (False, None)
        elif which == "clock":
            vm = getattr(vcpu, "vm", None)
            ok, value = self.call("vm.get_clock", _lazy(vm, "get_clock")) if vm else (False, None)
        else:
            ok, value = self.call(f"vcpu.{which}", lambda: getattr(vcpu, which))
        return value if ok else multiple()

    # -- memory, guest_memfd, views, exits, cdata, eventfds, devices -------------------------------------

    MEM_OPS = ["read", "write", "view", "read_int", "write_int", "fill", "page_index", "read_into", "contains",
               "len", "repr", "pages_in_bitmap", "close", "host_addr"]

    @rule(mem=memories, data=st.data())
    def memory_op(self, mem: Any, data: Any) -> None:
        op = data.draw(st.sampled_from(self.MEM_OPS), label="op")
        base = mem.guest_addr
        address = self.draw_int(data, [base, base + 1, base + 0xFFF, base - 1, base + mem.size, 0], "address")
        length = self.draw_int(data, [0, 1, 8, 0x1000, (1 << 31) + 1, (1 << 64) - 1], "length")
        if op == "read":
            self.call("memory.read", _lazy(mem, "read"), address, length, names=("address", "length"))
        elif op == "write":
            value = data.draw(hostile_or([b"\x01", bytes(16), bytearray(4), memoryview(b"abcd"), "text",
                                          "cast-Q"]), label="data")
            value = memoryview(bytes(8)).cast("Q") if value == "cast-Q" else value
            self.call("memory.write", _lazy(mem, "write"), address, value, names=("address", "data"))
        elif op == "view":
            self.call("memory.view", _lazy(mem, "view"), data.draw(st.one_of(st.none(), hostile_or([address]))),
                      data.draw(st.one_of(st.none(), hostile_or([length if isinstance(length, int) and length < 0x2000
                                                                 else 8]))), names=("address", "length"))
        elif op == "read_int":
            self.call("memory.read_int", _lazy(mem, "read_int"), address, self.draw_int(data, [1, 2, 4, 8, 0, 16], "size"),
                      signed=data.draw(st.booleans()), names=("address", "size"))
        elif op == "write_int":
            self.call("memory.write_int", _lazy(mem, "write_int"), address, self.draw_int(data, [0, 255, 1 << 63, -5], "value"),
                      self.draw_int(data, [1, 2, 4, 8, 0, 16], "size"), signed=data.draw(st.booleans()),
                      names=("address", "value", "size"))
        elif op == "fill":
            self.call("memory.fill", _lazy(mem, "fill"), address, data.draw(hostile_or([0, 1, 16, 0x1000, (1 << 31) + 1])),
                      self.draw_int(data, [0, 0xCC, 256], "byte"), names=("address", "length", "byte"))
        elif op == "page_index":
            self.call("memory.page_index", _lazy(mem, "page_index"), address, names=("address",))
        elif op == "read_into":
            buffer = data.draw(st.sampled_from([
                lambda: bytearray(4), lambda: bytearray(0x1000), lambda: b"ro", lambda: memoryview(bytearray(8))[::2],
                lambda: 5, lambda: None, lambda: memoryview(bytearray(16)).cast("I")]))()
            self.call("memory.read_into", _lazy(mem, "read_into"), address, buffer, names=("address", "buffer"))
        elif op == "contains":
            self.call("in", lambda: address in mem)
        elif op == "len":
            self.call("len", len, mem)
        elif op == "repr":
            self.call("repr", repr, mem)
        elif op == "pages_in_bitmap":
            self.call("memory.pages_in_bitmap", _lazy(mem, "pages_in_bitmap"),
                      data.draw(hostile_or([b"\xff", bytes(8), b"\x01" * 64])), names=("bitmap",))
        elif op == "host_addr":
            self.call("memory attributes", lambda: (mem.slot, mem.guest_addr, mem.size, mem.end, mem.flags,
                                                    mem.host_addr, mem.fd, mem.pages, mem.closed, mem.vm))
        else:
            self.call("memory.close", _lazy(mem, "close"))

    @rule(target=views, mem=memories, data=st.data())
    def memory_view(self, mem: Any, data: Any) -> Any:
        length = data.draw(st.sampled_from([None, 1, 16, 0x1000]))
        ok, view = self.call("memory.view", _lazy(mem, "view"), mem.guest_addr, length if length is None or length <= mem.size else None,
                             names=("address", "length"))
        if not ok:
            return multiple()
        backing = "a memfd or file" if mem.fd >= 0 else "an anonymous"
        self.view_source[id(view)] = f"memory.view() of {backing} slot"
        return view

    @rule(target=views, exit=exits)
    def exit_data_view(self, exit: Any) -> Any:
        if not isinstance(exit, (kvm.IoExit, kvm.MmioExit)):
            return multiple()
        ok, view = self.call(f"{type(exit).__name__}.data", lambda: exit.data)
        if not ok:
            return multiple()
        self.view_source[id(view)] = "exit.data (the kvm_run page)"
        return view

    @rule(gmem=gmemfds, data=st.data())
    def gmemfd_op(self, gmem: Any, data: Any) -> None:
        op = data.draw(st.sampled_from(["mmap", "close", "repr", "fileno"]))
        if op == "mmap":
            ok, mapping = self.call("guest_memfd.mmap", _lazy(gmem, "mmap"), data.draw(hostile_or([None, 0x1000])),
                                    self.draw_int(data, [0, 0x1000], "offset"), names=("length", "offset"))
            if ok:
                mapping.close()
        elif op == "close":
            self.call("guest_memfd.close", _lazy(gmem, "close"))
        elif op == "fileno":
            self.call("guest_memfd.fileno", _lazy(gmem, "fileno"))
        else:
            self.call("repr", repr, gmem)

    @rule(exit=exits, data=st.data())
    def exit_op(self, exit: Any, data: Any) -> None:
        """Read every attribute of a held exit (possibly of a closed vCPU, a later run, another reason)."""
        op = data.draw(st.sampled_from(["fields", "snapshot", "repr", "reply", "describe"]))
        if op == "fields":
            for name in sorted(n for n in dir(type(exit)) if not n.startswith("_")):
                attr = getattr(type(exit), name, None)
                if callable(attr) and not isinstance(attr, property):
                    continue
                self.call(f"{type(exit).__name__}.{name}", getattr, exit, name, names=(name,))
        elif op == "snapshot":
            self.call(f"{type(exit).__name__}.snapshot", _lazy(exit, "snapshot"))
        elif op == "repr":
            self.call("repr", repr, exit)
        elif op == "describe":
            if isinstance(exit, kvm.InternalErrorExit):
                self.call("InternalErrorExit.describe", _lazy(exit, "describe"))
        else:
            self._reply(exit, data)

    @rule(view=views, data=st.data())
    def view_op(self, view: Any, data: Any) -> None:
        """Read and write a held memoryview (of a removed slot, of a closed vCPU's kvm_run, ...)."""
        op = data.draw(st.sampled_from(["bytes", "write", "len", "release"]))
        if id(view) in self.released:
            return  # (released here, by view.release() below: Python's memoryview then refuses everything)
        if op == "bytes":
            self.call("bytes(view)", bytes, view)
        elif op == "len":
            self.call("len(view)", len, view)
        elif op == "write":
            if not view.readonly and view.nbytes:
                self.call("view[0] =", _lazy(view, "__setitem__"), 0, data.draw(st.integers(0, 255)))
        else:
            self.released.add(id(view))
            self.call("view.release", _lazy(view, "release"))

    @rule(cdata=cdatas, data=st.data())
    def cdata_op(self, cdata: Any, data: Any) -> None:
        """Read every member of a held record (kvm_run and synced of a closed vCPU too), copy and write it."""
        op = data.draw(st.sampled_from(["touch", "buffer", "write"]))
        if op == "touch":
            self.call("read members", _touch_cdata, cdata)
        elif op == "buffer":
            self.call("ffi.buffer", lambda: bytes(FFI.buffer(cdata)))
        else:
            ctype = FFI.typeof(cdata)
            record = ctype.item if ctype.kind == "pointer" else ctype
            names = [n for n, f in (record.fields or ()) if n and f.type.kind == "primitive"]
            if names:
                name = data.draw(st.sampled_from(names))
                self.call("cdata member =", setattr, cdata, name, 0)

    @rule(efd=eventfds, data=st.data())
    def eventfd_op(self, efd: Any, data: Any) -> None:
        op = data.draw(st.sampled_from(["notify", "read", "fileno", "close", "closed"]))
        if op == "notify":
            self.call("eventfd.notify", _lazy(efd, "notify"), data.draw(hostile_or([1, 5, (1 << 64) - 2])), names=("value",))
        elif op == "read" and id(efd) in self.blocking_eventfds:
            # a blocking read() waits for a signal: another thread gives one, or closes the eventfd under it
            waker = threading.Timer(0.01, _quietly(efd.notify if self.rng.random() < 0.5 else efd.close))
            waker.start()
            try:
                self.call("eventfd.read (blocking)", _lazy(efd, "read"))
            finally:
                waker.join(10)
        elif op == "read":
            self.call("eventfd.read", _lazy(efd, "read"))
        elif op == "fileno":
            self.call("eventfd.fileno", _lazy(efd, "fileno"))
        elif op == "close":
            self.call("eventfd.close", _lazy(efd, "close"))
        else:
            self.call("eventfd.closed", lambda: efd.closed)

    @rule(device=devices, data=st.data())
    def device_op(self, device: Any, data: Any) -> None:
        op = data.draw(st.sampled_from(["attr", "type", "repr", "close", "fileno"]))
        if op == "attr":
            self._attr_op(device, data, "device")
        elif op == "type":
            self.call("device.type", lambda: device.type)
        elif op == "repr":
            self.call("repr", repr, device)
        elif op == "fileno":
            self.call("device.fileno", _lazy(device, "fileno"))
        else:
            self.call("device.close", _lazy(device, "close"))

    # -- closing, dropping, forking ------------------------------------------------------------------------

    @rule(obj=st.one_of(vcpus, memories, devices, eventfds, gmemfds), data=st.data())
    def close(self, obj: Any, data: Any) -> None:
        try:
            closed = obj.closed
        except Exception:  # noqa: BLE001 - (an EventFd made of a non-int fd: see the finding on EventFd)
            closed = False
        if closed is True and self.rng.random() < 0.75:
            return  # (closing again is idempotent: checked now and then)
        self.call(f"{type(obj).__name__}.close", _lazy(obj, "close"))
        self.call(f"{type(obj).__name__}.closed", lambda: obj.closed)

    @rule(obj=st.one_of(kvms, vms), data=st.data())
    def close_parent(self, obj: Any, data: Any) -> None:
        """Close a Kvm or a VM (and with it everything below): less often, or little else would stay open."""
        if self.rng.random() < 0.25:
            self.close(obj, data)

    @rule(target=exits, vcpu=vcpus, data=st.data())
    def run_more(self, vcpu: Any, data: Any) -> Any:
        return self.run(vcpu, data)

    @rule(obj=st.one_of(consumes(kvms), consumes(vms), consumes(vcpus), consumes(memories), consumes(exits),
                        consumes(views), consumes(cdatas), consumes(eventfds), consumes(devices)))
    def drop(self, obj: Any) -> None:
        """Forget an object without closing it (its fd must go when the last reference does)."""
        referenced = {ref.name for refs in self.bundles.values() for ref in refs}
        for name in [n for n, v in self.names_to_values.items() if v is obj and n not in referenced]:
            del self.names_to_values[name]
        del obj

    @rule(data=st.data())
    def collect(self, data: Any) -> None:
        if self.rng.random() < 1 / 16:  # (a full collection costs ~20 ms here)
            gc.collect()

    @rule(vcpu=vcpus, data=st.data())
    def close_while_running(self, vcpu: Any, data: Any) -> None:
        """run() a spinning guest in a thread and close the vCPU (or its VM) under it."""
        if vcpu.closed or getattr(vcpu, "vm", None) is None:
            return
        self._load(vcpu, "spin")
        result: list[Any] = []

        def runner() -> None:
            try:
                result.append(vcpu.run())
            except Exception as exc:  # noqa: BLE001
                result.append(exc)

        pause = data.draw(st.sampled_from([0, 0.001, 0.005]), label="pause")
        target = vcpu if data.draw(st.booleans(), label="close the vCPU, not the VM") else vcpu.vm
        thread = threading.Thread(target=runner, daemon=True)
        thread.start()
        try:  # (nothing is drawn once the thread runs: a draw or a StopBatch raising here would leave it spinning)
            time.sleep(pause)
            self.call(f"{type(target).__name__}.close (while running)", _lazy(target, "close"))
        finally:
            if thread.is_alive() and not target.closed:
                target.close()
            thread.join(10)
        self.t.calls += 1
        if thread.is_alive():
            self.t.hangs += 1
            self.t.finding("hang", "run() did not return after close()", f"{type(target).__name__}.close() under run()",
                           "the thread in run() is still there 10 s later")
            return
        outcome = result[0] if result else None
        if isinstance(outcome, BaseException):
            self.t.exceptions += 1
            if classify(outcome, ()) is None:
                self.t.good += 1
            else:
                self.t.finding("not a library type", f"run() under close -> {type(outcome).__name__}",
                               f"{type(target).__name__}.close() under run()", repr(outcome)[:160])

    @rule(vcpu=vcpus, data=st.data())
    def close_while_in_use(self, vcpu: Any, data: Any) -> None:
        """Another thread keeps writing a vCPU's registers while this one closes the vCPU (or its VM) and
        makes a new VM, whose vCPU may be given the same fd number: nothing may land on the new vCPU, and
        the racing calls may raise only the library's own exceptions (ClosedError)."""
        vm = getattr(vcpu, "vm", None)
        if vcpu.closed or vm is None or vm.system.closed or not offers(vcpu, "regs"):
            return
        marker = 0xDEAD0000 + self.rng.randrange(0x10000)
        target = vcpu if data.draw(st.booleans(), label="close the vCPU, not the VM") else vm
        outcomes: list[BaseException] = []
        go = threading.Event()
        landed = False

        def hammer() -> None:
            go.wait()
            for _ in range(40):
                try:
                    vcpu.regs = {"rax": marker}
                except Exception as exc:  # noqa: BLE001 - classified below
                    outcomes.append(exc)

        old = sys.getswitchinterval()
        thread = threading.Thread(target=hammer, daemon=True)
        thread.start()
        sys.setswitchinterval(1e-6)  # (switch between the threads as often as the interpreter can)
        try:
            go.set()
            self.call(f"{type(target).__name__}.close (while in use)", _lazy(target, "close"))
            with vm.system.create_vm() as fresh:
                newcomer = fresh.create_vcpu(0)
                thread.join(10)
                landed = newcomer.regs.rax == marker
        finally:
            sys.setswitchinterval(old)
            go.set()
            thread.join(10)
        self.t.calls += 40
        if thread.is_alive():
            self.t.hangs += 1
            self.t.finding("hang", "a call racing close() did not return", f"{type(target).__name__}.close() under "
                           "vcpu.regs = ...", "the thread is still there 10 s later")
        if landed:
            self.harmful("a call racing close() landed on a new vCPU", f"{type(target).__name__}.close() under "
                         "vcpu.regs = ...", "the new VM's vCPU 0 got the old vCPU's register write")
        for exc in outcomes:
            self.t.exceptions += 1
            if classify(exc, ()) is None:
                self.t.good += 1
            else:
                self.t.finding("not a library type", f"vcpu.regs = ... under close -> {type(exc).__name__}",
                               f"{type(target).__name__}.close() under vcpu.regs = ...", repr(exc)[:160])

    @precondition(lambda self: self.forks_here < 1)
    @rule(data=st.data())
    def fork(self, data: Any) -> None:
        """fork(): the child uses every inherited object (all must refuse), the parent checks its own."""
        if self.rng.random() < 2 / 3:
            return
        self.forks_here += 1
        self.t.forks += 1
        objects = [v for v in self.names_to_values.values()]
        before = self._parent_state(objects)
        write_through = data.draw(st.sampled_from([None, "exit.data", "memory.view()", "vcpu.kvm_run", "vcpu.synced"]),
                                  label="what the child writes through")
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            code = 0
            try:
                os.close(read_fd)
                signal.alarm(int(self.MAX_CHILD_SECONDS))
                child = Tally()
                self.t, self.limit = child, math.inf
                self._in_child(objects, write_through)
                payload = json.dumps(child.to_json()).encode()
                while payload:
                    payload = payload[os.write(write_fd, payload):]
            except BaseException:  # noqa: BLE001
                code = 3
            os._exit(code)
        os.close(write_fd)
        chunks = []
        deadline = time.monotonic() + self.MAX_CHILD_SECONDS + 5
        while True:
            ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(read_fd)
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            self.t.hangs += 1
            self.t.finding("hang", "forked child hung", "fork()", "child killed after its timeout")
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGALRM:
                self.t.hangs += 1
                self.t.finding("hang", "forked child hung", "fork()", "the child's alarm went off")
            elif sig != signal.SIGKILL:
                self.t.child_crashes += 1
                self.t.finding("crash", f"forked child killed by {signal.Signals(sig).name}", "fork()",
                               f"see the child's last call in the log (signal {sig})")
        elif chunks:
            self.t.merge(json.loads(b"".join(chunks)))
        elif os.WEXITSTATUS(status) != 0:
            self.t.finding("error", "forked child failed", "fork()", f"exit status {os.WEXITSTATUS(status)}")
        after = self._parent_state(objects)
        for key, value in before.items():
            # (a key missing now is an object closed meanwhile in the parent, e.g. a VM the collector freed
            # while this rule ran: the child cannot close the parent's objects)
            if key in after and after[key] != value:
                what = key.rsplit(":", 1)[0]
                self.harmful(f"a forked child's write through {write_through} changed the parent's {what}",
                             f"fork(); child: write through a held {write_through}",
                             f"the parent's {what} changed")
        self._parent_still_works(objects)

    def _parent_state(self, objects: list[Any]) -> dict[str, bytes]:
        """What a forked child must not change: the kvm_run page of each open vCPU, held views, guest memory."""
        state: dict[str, bytes] = {}
        for obj in objects:
            try:
                if isinstance(obj, kvm.Vcpu) and not obj.closed:
                    state[f"kvm_run page:{id(obj)}"] = bytes(FFI.buffer(obj.kvm_run))
                elif isinstance(obj, memoryview) and id(obj) not in self.released:
                    state[f"{self.view_source.get(id(obj), 'memoryview')}:{id(obj)}"] = bytes(obj[:64])
                elif isinstance(obj, kvm.GuestMemory) and not obj.closed:
                    state[f"guest memory:{id(obj)}"] = obj.read(obj.guest_addr, min(obj.size, 0x2000))
            except (ValueError, kvm.KvmError):
                pass
        return state

    def _parent_still_works(self, objects: list[Any]) -> None:
        for obj in objects:
            if isinstance(obj, kvm.Vcpu) and not obj.closed:
                self.call("vcpu.regs (parent after fork)", lambda: obj.regs)
            elif isinstance(obj, kvm.Vm) and not obj.closed:
                self.call("vm.check_extension (parent after fork)", _lazy(obj, "check_extension"), "IRQCHIP")
            elif isinstance(obj, kvm.GuestMemory) and not obj.closed:
                self.call("memory.read (parent after fork)", _lazy(obj, "read"), obj.guest_addr, 1)

    def _in_child(self, objects: list[Any], write_through: bool) -> None:
        """In the forked child: every operation on every inherited object."""
        def op(label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
            ok, result = self.call(label + " (forked child)", fn, *args, in_child=True, **kwargs)
            if ok and label in REFUSE_IN_CHILD:
                self.t.finding("not refused in a forked child", f"{label} worked in a forked child", f"fork(); child: {label}(...)",
                             f"returned {_short(result)} instead of raising ForkedError")

        for obj in objects:
            if isinstance(obj, kvm.Kvm):
                op("system.check_extension", _lazy(obj, "check_extension"), C["KVM_CAP_IRQCHIP"])
                op("system.check_extension", _lazy(obj, "check_extension"), "IRQCHIP")
                op("system.api_version", lambda: obj.api_version)
                op("system.create_vm", _lazy(obj, "create_vm"))
                op("system.supported_cpuid", _lazy(obj, "supported_cpuid"))
                op("system.fileno", _lazy(obj, "fileno"))
            elif isinstance(obj, kvm.Vm):
                op("vm.add_memory", _lazy(obj, "add_memory"), 0x40000000, 0x1000)
                op("vm.create_vcpu", _lazy(obj, "create_vcpu"), 7)
                op("vm.check_extension", _lazy(obj, "check_extension"), "IRQCHIP")
                op("vm.create_irqchip", _lazy(obj, "create_irqchip"))
                op("vm.stats", _lazy(obj, "stats"))
                op("vm.read", _lazy(obj, "read"), 0, 1)
                op("vm.write", _lazy(obj, "write"), DATA, b"\x99")
                for mem in list(obj.memory):
                    op("vm.remove_memory", _lazy(obj, "remove_memory"), mem)
                    op("vm.get_dirty_log", _lazy(obj, "get_dirty_log"), mem)
                op("vm.irqfd", _lazy(obj, "irqfd"), 0)
            elif isinstance(obj, kvm.Vcpu):
                op("vcpu.run", _lazy(obj, "run"))
                op("vcpu.kick", _lazy(obj, "kick"))
                op("vcpu.regs", lambda: obj.regs)
                op("vcpu.regs =", setattr, obj, "regs", {"rax": 1})
                op("vcpu.kvm_run", lambda: obj.kvm_run)
                op("vcpu.synced", lambda: obj.synced)
                op("vcpu.immediate_exit =", setattr, obj, "immediate_exit", True)
                op("vcpu.sync_regs =", setattr, obj, "sync_regs", 7)
                op("vcpu.mark_synced_dirty", _lazy(obj, "mark_synced_dirty"), 1)
                op("vcpu.coalesced_entries", _lazy(obj, "coalesced_entries"))
                op("vcpu.harvest_dirty_ring", _lazy(obj, "harvest_dirty_ring"))
                op("vcpu.stats", _lazy(obj, "stats"))
            elif isinstance(obj, kvm.GuestMemory):
                op("memory.read", _lazy(obj, "read"), obj.guest_addr, 1)
                op("memory.write", _lazy(obj, "write"), obj.guest_addr, b"\x99")
                op("memory.view", _lazy(obj, "view"))
                op("memory.fill", _lazy(obj, "fill"), obj.guest_addr, 1, 0x99)
                op("memory.read_into", _lazy(obj, "read_into"), obj.guest_addr, bytearray(1))
            elif isinstance(obj, kvm.Exit):
                if isinstance(obj, (kvm.IoExit, kvm.MmioExit)):
                    op("exit.reply", _lazy(obj, "reply"), 0x99)
                    ok, view = self.call("exit.data (forked child)", lambda: obj.data, in_child=True)
                    if ok and write_through == "exit.data" and view.nbytes and not view.readonly:
                        view[0] = (view[0] + 1) & 0xFF
                if isinstance(obj, kvm.RdmsrExit):
                    op("exit.reply", _lazy(obj, "reply"), 5)
                    op("exit.fail", _lazy(obj, "fail"))
                op("exit.snapshot", _lazy(obj, "snapshot"))
            elif isinstance(obj, kvm.Device):
                op("device.has_attr", _lazy(obj, "has_attr"), 0, 0)
            elif isinstance(obj, kvm.EventFd):
                op("eventfd.notify", _lazy(obj, "notify"), 1)
            elif isinstance(obj, memoryview) and write_through == "memory.view()" and id(obj) not in self.released \
                    and self.view_source.get(id(obj), "").startswith("memory.view"):
                try:
                    if obj.nbytes and not obj.readonly:
                        obj[0] = (obj[0] + 1) & 0xFF
                except ValueError:
                    pass
            elif isinstance(obj, FFI.CData) and write_through in ("vcpu.kvm_run", "vcpu.synced"):
                ctype = FFI.typeof(obj)
                wanted = "struct kvm_run" if write_through == "vcpu.kvm_run" else "struct kvm_sync_regs"
                if ctype.kind == "pointer" and ctype.item.cname == wanted:
                    if wanted == "struct kvm_run":
                        obj.immediate_exit = obj.immediate_exit ^ 1
                    else:
                        obj.regs.rax = obj.regs.rax + 1
        # a new Kvm() in the child works
        with kvm.Kvm() as system, system.create_vm() as vm:
            mem, vcpu = real_mode_guest(vm, PROGRAMS["out"])
            exit = vcpu.run()
            self.t.calls += 1
            if not (isinstance(exit, kvm.IoExit) and exit.port == 0x10 and exit.value == 0x42):
                self.t.finding("broken", "a new Kvm() in a forked child does not run a guest", "fork(); kvm.Kvm() ...",
                               repr(exit))

    def teardown(self) -> None:
        if self.explicit_teardown:
            for ref in self.bundle("kvms"):
                try:
                    self.names_to_values[ref.name].close()
                except Exception:  # noqa: BLE001
                    pass


# operations the child must never see succeed (they reach the kernel or the parent's shared pages)
REFUSE_IN_CHILD = {"system.check_extension", "system.api_version", "system.create_vm", "system.supported_cpuid",
                   "vm.add_memory", "vm.create_vcpu", "vm.check_extension", "vm.create_irqchip", "vm.stats",
                   "vm.read", "vm.write", "vm.remove_memory", "vm.get_dirty_log", "vm.irqfd", "vcpu.run",
                   "vcpu.kick", "vcpu.regs", "vcpu.regs =", "vcpu.kvm_run", "vcpu.synced", "vcpu.immediate_exit =",
                   "vcpu.sync_regs =", "vcpu.mark_synced_dirty", "vcpu.coalesced_entries", "vcpu.harvest_dirty_ring",
                   "vcpu.stats", "memory.read", "memory.write", "memory.view", "memory.fill", "memory.read_into",
                   "exit.reply", "exit.fail", "device.has_attr"}


# -- one batch, in this process ----------------------------------------------------------------------------


def kvm_objects() -> dict[str, int]:
    """This process's fds, its anon_inode:kvm-* fds by kind, and its mappings of KVM fds and memfds."""
    counts: dict[str, int] = collections.Counter()
    for name in os.listdir("/proc/self/fd"):
        counts["fds"] += 1
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("anon_inode:kvm") or target.startswith("anon_inode:[kvm") or "kvm" in target:
            kind = target.split(":", 1)[-1].strip("[]").split(":")[0]
            counts[kind] += 1
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "kvm" in line:
                counts["kvm mappings"] += 1
    return dict(counts)


def run_batch(seed: int, calls: int, log_path: str | None = None, examples: int = 100, steps: int = 40) -> dict[str, Any]:
    """Run the machine until `calls` API calls were made (the call after them raises StopBatch, which ends the
    hypothesis run); returns the tally and the fd/object growth."""
    tally = Tally()
    KvmMachine.tally = tally
    KvmMachine.examples = 0
    KvmMachine.limit = calls
    KvmMachine.log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if log_path else -1
    KvmMachine.watchdog = Watchdog()
    # warm up (lazy imports, caches), then measure
    with kvm.Kvm() as system, system.create_vm() as vm:
        real_mode_guest(vm, HALT)[1].run()
    gc.collect()
    before = kvm_objects()
    with tempfile.TemporaryDirectory(prefix="kvm-fuzz-") as tmpdir:
        KvmMachine.tmpdir = tmpdir
        round_ = flaky_rounds = 0
        while tally.calls < calls:
            machine = hypothesis.seed(seed * 100003 + round_)(KvmMachine)
            options = settings(max_examples=examples, stateful_step_count=steps, deadline=None, database=None,
                               phases=[Phase.generate], suppress_health_check=list(HealthCheck), print_blob=False)
            try:
                hypothesis.stateful.run_state_machine_as_test(machine, settings=options)
            except StopBatch:
                break
            except hypothesis.errors.Flaky:
                # hypothesis replays prefixes of examples; a guest's exits depend on timing (the watchdog's kicks),
                # so a replay may draw differently: not a finding, the next round goes on with a new seed
                flaky_rounds += 1
            except Exception as exc:  # noqa: BLE001 - a bug of the machine itself: counted, shown
                tally.finding("machine error", f"machine: {type(exc).__name__}: {str(exc)[:80]}", "(see the log)",
                              f"{type(exc).__name__}: {str(exc)[:200]} [{_where(exc)}]")
            round_ += 1
        gc.collect()
        gc.collect()
    after = kvm_objects()
    growth = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)
              if after.get(k, 0) != before.get(k, 0)}
    return {"seed": seed, "tally": tally.to_json(), "growth": growth, "kicks": KvmMachine.watchdog.kicks,
            "flaky rounds": flaky_rounds,
            "before": before, "after": after}


# -- many batches, each in a subprocess --------------------------------------------------------------------


def _tail(path: str, lines: int = 3) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            return f.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def run_batches(calls: int, batch_calls: int = 2000, jobs: int = 2, timeout: float = 120.0, seed: int = 1,
                progress: Callable[[str], None] | None = None, workdir: str | None = None) -> dict[str, Any]:
    """Run batches of `batch_calls` calls, `jobs` at a time, each in its own process, until `calls` calls
    were made; returns the merged figures."""
    total = Tally()
    summary: dict[str, Any] = {"batches": 0, "crashes": [], "hangs": [], "errors": [], "growth": [], "kicks": 0}
    own_workdir = workdir is None
    logs: str = workdir or tempfile.mkdtemp(prefix="kvm-fuzz-logs-")
    running: list[tuple[subprocess.Popen[bytes], int, float, str, str]] = []
    next_seed = seed
    started = time.monotonic()

    def launch() -> None:
        nonlocal next_seed
        log, out = os.path.join(logs, f"batch-{next_seed}.log"), os.path.join(logs, f"batch-{next_seed}.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--batch", "--seed", str(next_seed), "--calls",
               str(batch_calls), "--log", log, "--out", out]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        running.append((proc, next_seed, time.monotonic(), log, out))
        next_seed += 1

    planned = max(1, -(-calls // batch_calls))
    launched = 0
    while launched < planned or running:
        while launched < planned and len(running) < jobs:
            launch()
            launched += 1
        time.sleep(0.05)
        for entry in list(running):
            proc, batch_seed, t0, log, out = entry
            status = proc.poll()
            if status is None and time.monotonic() - t0 < timeout:
                continue
            running.remove(entry)
            summary["batches"] += 1
            if status is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                summary["hangs"].append({"seed": batch_seed, "last calls": _tail(log)})
            elif status < 0:
                summary["crashes"].append({"seed": batch_seed, "signal": signal.Signals(-status).name,
                                           "last calls": _tail(log)})
            elif status != 0 or not os.path.exists(out):
                err = proc.stderr.read().decode(errors="replace")[-600:] if proc.stderr else ""
                summary["errors"].append({"seed": batch_seed, "status": status, "stderr": err, "last calls": _tail(log)})
            else:
                with open(out) as f:
                    result = json.load(f)
                total.merge(result["tally"])
                summary["kicks"] += result.get("kicks", 0)
                if result["growth"]:
                    summary["growth"].append({"seed": batch_seed, "growth": result["growth"]})
            if proc.stderr:
                proc.stderr.close()
            if progress:
                progress(f"batch {summary['batches']}/{planned}: {total.calls} calls, "
                         f"{len(summary['crashes'])} crashes, {len(summary['hangs'])} hangs")
    summary["seconds"] = time.monotonic() - started
    summary["tally"] = total.to_json()
    if own_workdir and not (summary["crashes"] or summary["hangs"] or summary["errors"]):
        shutil.rmtree(logs, ignore_errors=True)  # (kept, with each batch's call log, when something went wrong)
    summary["workdir"] = logs if os.path.isdir(logs) else None
    return summary


def fd_growth(summary: dict[str, Any]) -> tuple[int, int]:
    """(fd growth, KVM object growth: anon_inode:kvm-* fds and kvm mappings), summed over the batches."""
    fds = sum(max(0, g["growth"].get("fds", 0)) for g in summary["growth"])
    objects = sum(max(0, v) for g in summary["growth"] for k, v in g["growth"].items() if k != "fds")
    return fds, objects


def bad_findings(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return summary["tally"]["findings"]


def format_summary(summary: dict[str, Any], top: int = 30) -> str:
    t = summary["tally"]
    fds, objects = fd_growth(summary)
    share = 100.0 * t["good"] / t["exceptions"] if t["exceptions"] else 100.0
    crashes = len(summary["crashes"]) + t["child_crashes"]
    hangs = len(summary["hangs"]) + t["hangs"]
    lines = [
        f"calls {t['calls']}, batches {summary['batches']}, forks {t['forks']}, {summary['seconds']:.0f} s: "
        f"crashes {crashes}, hangs {hangs}, fd growth {fds}, kernel-object growth {objects}, "
        f"exceptions {t['exceptions']}, good {t['good']} ({share:.2f}%), findings {len(t['findings'])}, "
        f"batch errors {len(summary['errors'])}"
    ]
    for crash in summary["crashes"]:
        lines.append(f"  CRASH seed {crash['seed']} {crash['signal']}: last calls {crash['last calls']}")
    for hang in summary["hangs"]:
        lines.append(f"  HANG seed {hang['seed']}: last calls {hang['last calls']}")
    for error in summary["errors"]:
        lines.append(f"  BATCH ERROR seed {error['seed']} status {error['status']}: {error['stderr'][-300:]!r} "
                     f"last calls {error['last calls']}")
    for growth in summary["growth"]:
        lines.append(f"  GROWTH seed {growth['seed']}: {growth['growth']}")
    ranked = sorted(t["findings"].items(), key=lambda kv: -kv[1]["count"])
    for key, entry in ranked[:top]:
        lines.append(f"  [{entry['kind']}] x{entry['count']}: {entry['example']}  ->  {entry['detail']}")
    if len(ranked) > top:
        lines.append(f"  ... {len(ranked) - top} more findings")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", action="store_true", help="run one batch in this process (the runner's child)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--log")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.batch:
        result = run_batch(args.seed, args.calls, args.log)
        text = json.dumps(result)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
        else:
            print(text)
        return 0
    summary = run_batches(args.calls, seed=args.seed, progress=lambda s: print(s, file=sys.stderr))
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
