# Type stub of the compiled module kvm/_speedups.c (same interface as kvm/_pure.py).
from typing import Any

def ioctl(fd: int, request: int, value: int, /) -> int: ...

class Runner:
    tid: int
    view: memoryview
    vcpu: Any
    closed: bool
    def __init__(self, fd: int, request: int, view: memoryview, vcpu: Any, classes: tuple[Any, ...],
                 on_error: Any, on_unknown: Any, on_unusable: Any, reason_offset: int) -> None: ...
    def __call__(self) -> Any: ...
    def close(self) -> None: ...

class ExitBase:
    vcpu: Any
    _page: memoryview
    def __new__(cls, vcpu: Any, *rest: Any) -> Any: ...

class Field:
    name: str
    offset: int
    width: int
    def __init__(self, name: str, kind: str, offset: int, width: int, *, signed: bool = ...,
                 indirect: bool = ..., length_offset: int = ..., length_width: int = ...,
                 times_offset: int = ..., times_width: int = ...) -> None: ...
    def __get__(self, obj: Any, cls: Any = ...) -> Any: ...
    def __set__(self, obj: Any, value: Any) -> None: ...
