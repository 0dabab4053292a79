"""`NamedTuple`: typing.NamedTuple's class syntax, without importing `typing` at run time.

On Python 3.11, `import typing` pulls in `re`, `contextlib` and `functools` with it and costs a fresh
interpreter about 10 ms, more than a third of `import kvm` (bench/README.md). kvm's modules import
`NamedTuple` from here; type checkers see typing's.

The modules that use it have `from __future__ import annotations`, which keeps the annotations of a class
body in its namespace on every Python. The classes made are those typing.NamedTuple makes:
collections.namedtuple classes, fields in the order of the class's annotations, defaults from the values
assigned to them, and the class body's methods, properties and docstring.
"""

from __future__ import annotations

import collections

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NamedTuple as NamedTuple

# (called through a name of its own: type checkers take a direct call for a definition of their own)
_make_class: Callable[..., Any] = collections.namedtuple

# what collections.namedtuple makes, which a class body may not replace
_PROHIBITED = frozenset({"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults", "_make",
                         "_replace", "_asdict", "_source"})
# what the class statement puts in every namespace
_STATEMENT = frozenset({"__module__", "__qualname__", "__annotations__", "__orig_bases__"})


class _NamedTupleMeta(type):
    def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> Any:
        if bases != (_Base,):
            raise TypeError(f"{name}: a NamedTuple class derives from NamedTuple alone")
        if "__annotations__" not in namespace and "__annotate__" in namespace:
            # (from Python 3.14 on, a class body evaluates its annotations lazily unless the module says otherwise)
            raise TypeError(f"{name}: its module needs `from __future__ import annotations`")
        annotations = namespace.get("__annotations__", {})
        fields = tuple(annotations)
        with_default = [field for field in fields if field in namespace]
        if fields[len(fields) - len(with_default):] != tuple(with_default):
            raise TypeError(f"{name}: a field without a default follows one with a default")
        cls = _make_class(name, fields, defaults=[namespace[field] for field in with_default],
                                     module=namespace["__module__"])
        cls.__qualname__ = namespace.get("__qualname__", name)
        cls.__annotations__ = cls.__new__.__annotations__ = dict(annotations)
        for key, value in namespace.items():
            if key in _PROHIBITED:
                raise AttributeError(f"{name}: cannot overwrite NamedTuple attribute {key}")
            if key not in _STATEMENT and key not in fields:
                setattr(cls, key, value)
        return cls


# (made without running _NamedTupleMeta.__new__: it is the marker the class statement derives from)
_Base = type.__new__(_NamedTupleMeta, "NamedTuple", (), {})
if not TYPE_CHECKING:
    NamedTuple = _Base
