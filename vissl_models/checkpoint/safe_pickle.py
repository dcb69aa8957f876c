"""A restricted unpickler that never imports or calls anything outside an explicit allowlist.

Training checkpoints hold more than weights: meters, hook states, loss states, optimizer extras,
sometimes an ``argparse.Namespace`` or a custom class. ``torch.load(weights_only=True)`` refuses
the whole file when it meets one such object. The second pass here reads the same file through
torch's own loader (``torch.load(..., pickle_module=RESTRICTED_PICKLE)``), so tensors are
rebuilt exactly as torch rebuilds them, while every global outside the allowlist is resolved to
an inert :class:`Placeholder` subclass that records the name it stood for, its arguments and
state. Nothing from the file is imported, called or executed: ``find_class`` returns only
allowlisted objects or placeholder classes, and the extension-registry opcodes (which could
reach objects without ``find_class``) are refused.
"""

from __future__ import annotations

import _compat_pickle
import collections
import functools
import io
import pickle
import types
from typing import Any, Dict, List, Optional, Tuple

import torch


class Placeholder:
    """An inert stand-in for an object whose class (or function) is not allowlisted.

    ``class_name`` is the ``module.qualname`` the file asked for; ``args``/``kwargs`` are what
    it would have been called with, ``state`` what ``__setstate__`` would have received, and
    ``items``/``list_items`` what would have been stored into it as a mapping or a list.
    """

    class_name = "<unknown>"
    dump_patches = False  # read by torch's legacy loader for module containers

    def __new__(cls, *args: Any, **kwargs: Any) -> "Placeholder":
        obj = object.__new__(cls)
        obj.args, obj.kwargs = args, kwargs
        obj.state, obj.items, obj.list_items = None, {}, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # the arguments were recorded by __new__; a placeholder does nothing

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.list_items.append(value)

    def extend(self, values: Any) -> None:
        self.list_items.extend(values)

    def add(self, value: Any) -> None:
        self.list_items.append(value)

    def __repr__(self) -> str:
        return f"<Placeholder for {self.class_name}>"


def _placeholder_class(full_name: str) -> type:
    short = full_name.rsplit(".", 1)[-1] or "object"
    return type(f"Placeholder[{short}]", (Placeholder,), {"class_name": full_name})


def _numpy_allowed() -> Dict[str, Any]:
    """numpy arrays, dtypes and scalars, under both the numpy 1.x and 2.x module names."""
    try:
        import numpy as np
    except ImportError:
        return {}
    core = getattr(np, "_core", None)
    multiarray = getattr(core, "multiarray", None) if core is not None else None
    if multiarray is None:  # numpy 1.x
        multiarray = np.core.multiarray
    out: Dict[str, Any] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[f"{mod}._reconstruct"] = multiarray._reconstruct
        out[f"{mod}.scalar"] = multiarray.scalar
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for n in dir(dtypes):
            if n.endswith("DType"):
                out[f"numpy.dtypes.{n}"] = getattr(dtypes, n)
    return out


def _torch_allowed() -> Dict[str, Any]:
    """What ``torch.load(weights_only=True)`` accepts: tensors, storages, dtypes, sizes, devices,
    the tensor rebuild functions and a few builtins."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return dict(_get_allowed_globals())
    except Exception:  # private API; fall back to the same categories spelled out here
        pass
    out: Dict[str, Any] = {
        "collections.OrderedDict": collections.OrderedDict,
        "torch.nn.parameter.Parameter": torch.nn.Parameter,
        "torch.Size": torch.Size,
        "torch.Tensor": torch.Tensor,
        "torch.device": torch.device,
        "torch.UntypedStorage": torch.UntypedStorage,
        "torch.storage.TypedStorage": torch.storage.TypedStorage,
        "torch._tensor._rebuild_from_type_v2": torch._tensor._rebuild_from_type_v2,
    }
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                 "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor",
                 "_rebuild_meta_tensor_no_storage", "_rebuild_device_tensor_from_cpu_tensor"):
        fn = getattr(torch._utils, name, None)
        if fn is not None:
            out[f"torch._utils.{name}"] = fn
    for value in vars(torch).values():
        if isinstance(value, torch.dtype):
            out[str(value)] = value
    return out


def _builtins_allowed() -> Dict[str, Any]:
    import _codecs

    return {
        "collections.OrderedDict": collections.OrderedDict,
        "collections.Counter": collections.Counter,
        "collections.defaultdict": _safe_defaultdict,
        "collections.deque": collections.deque,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "builtins.complex": complex,
        "builtins.bytearray": bytearray,
        "builtins.slice": slice,
        "builtins.range": range,
        "_codecs.encode": _codecs.encode,
        "copyreg._reconstructor": _safe_reconstructor,
    }


def _safe_defaultdict(default_factory: Any = None, *args: Any) -> collections.defaultdict:
    """``defaultdict`` whose factory is only kept when it is a plain builtin type."""
    safe_factories = (int, float, list, dict, set, str, tuple)
    return collections.defaultdict(default_factory if default_factory in safe_factories else None, *args)


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """Protocol 0/1 object reconstruction, limited to placeholder classes."""
    if isinstance(cls, type) and issubclass(cls, Placeholder):
        return cls(state) if state is not None else cls()
    raise pickle.UnpicklingError(f"copyreg._reconstructor refused for {cls!r}: only placeholders are rebuilt this way")


_ALLOWED: Optional[Dict[str, Any]] = None


def allowed_globals() -> Dict[str, Any]:
    """The allowlist: ``"module.name"`` -> object, shared by both loading passes."""
    global _ALLOWED
    if _ALLOWED is None:
        allowed = _torch_allowed()
        allowed.update(_builtins_allowed())
        allowed.update(_numpy_allowed())
        _ALLOWED = allowed
    return _ALLOWED


def extra_safe_globals() -> List[Tuple[Any, str]]:
    """``(object, name)`` pairs to register with ``torch.serialization.safe_globals`` for the first
    (``weights_only=True``) pass: numpy types under every module name their pickles use."""
    return [(obj, name) for name, obj in _numpy_allowed().items()]


_ALLOWED_IDS: Optional[frozenset] = None


def _is_allowed_object(obj: Any) -> bool:
    global _ALLOWED_IDS
    if _ALLOWED_IDS is None:
        _ALLOWED_IDS = frozenset(id(v) for v in allowed_globals().values())
    return id(obj) in _ALLOWED_IDS


def _refuse_extension(self: Any) -> None:
    raise pickle.UnpicklingError("pickle extension-registry opcodes are refused (they bypass find_class)")


class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Unpickler whose ``find_class`` returns allowlisted objects or placeholder classes only.

    Built on the pure-Python unpickler so that every opcode that reaches a global goes through
    ``find_class``; the EXT1/EXT2/EXT4 opcodes, which read a process-wide cache first, are refused.
    ``placeholders`` lists the names that were replaced, in order of first use.
    """

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]
    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _refuse_extension
    del _op

    def load_build(self) -> None:
        # BUILD sets state or attributes on the object below it. Only objects this unpickler made
        # may be changed: never a class, function or module it was handed, which would change
        # them for the whole process.
        inst = self.stack[-2] if len(self.stack) >= 2 else None
        if isinstance(inst, (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                             types.ModuleType, functools.partial)) or _is_allowed_object(inst):
            raise pickle.UnpicklingError(f"refused to set state on {inst!r}: only objects created while "
                                         "unpickling may receive state")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def __init__(self, file: Any, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._placeholder_classes: Dict[str, type] = {}

    @property
    def placeholders(self) -> List[str]:
        return list(self._placeholder_classes)

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:  # names written by Python 2 style protocols
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        full_name = f"{module}.{name}"
        obj = allowed_globals().get(full_name)
        if obj is not None:
            return obj
        cls = self._placeholder_classes.get(full_name)
        if cls is None:
            cls = self._placeholder_classes[full_name] = _placeholder_class(full_name)
        return cls


class _RestrictedPickleModule:
    """The ``pickle_module`` handed to ``torch.load``: ``Unpickler`` and ``load`` restricted."""

    Unpickler = RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError
    __name__ = "vissl_models.checkpoint.safe_pickle"

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()

    @staticmethod
    def loads(data: bytes, **kwargs: Any) -> Any:
        return RestrictedUnpickler(io.BytesIO(data), **kwargs).load()


RESTRICTED_PICKLE = _RestrictedPickleModule()


def find_placeholders(obj: Any, prefix: str = "") -> List[Tuple[str, str]]:
    """``(path, class_name)`` of every placeholder inside plain containers of ``obj``."""
    found: List[Tuple[str, str]] = []
    seen = set()

    def walk(value: Any, path: str) -> None:
        if isinstance(value, Placeholder) or (isinstance(value, type) and issubclass(value, Placeholder)):
            found.append((path or "<top>", value.class_name))  # an object, or a bare class reference
            return
        if isinstance(value, (dict, list, tuple, set, frozenset, collections.deque)):
            if id(value) in seen:
                return
            seen.add(id(value))
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(v, f"{path}.{k}" if path else str(k))
            else:
                for i, v in enumerate(value):
                    walk(v, f"{path}[{i}]")

    walk(obj, prefix)
    return found


__all__ = [
    "Placeholder",
    "RESTRICTED_PICKLE",
    "RestrictedUnpickler",
    "allowed_globals",
    "extra_safe_globals",
    "find_placeholders",
]
