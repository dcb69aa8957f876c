"""A restricted unpickler that never imports or calls anything outside an explicit allowlist.

Training checkpoints hold more than weights: meters, hook states, loss states, optimizer extras,
sometimes an ``argparse.Namespace`` or a custom class. ``torch.load(weights_only=True)`` refuses
the whole file when it meets one such object. Files are read instead through torch's own loader
with this module as its ``pickle_module`` (``torch.load(..., pickle_module=RESTRICTED_PICKLE)``),
so tensors are rebuilt exactly as torch rebuilds them, while every global outside the allowlist
is resolved to an inert :class:`Placeholder` subclass that records the name it stood for, its
arguments and state. Nothing from the file is imported, called or executed: ``find_class``
returns only allowlisted objects or placeholder classes, and the extension-registry opcodes
(which could reach objects without ``find_class``) are refused.

Loading is bounded by the file: allowlisted constructors only take containers the file itself
stores (never a ``range``, iterator or tensor to expand), tensor, array and storage classes
cannot be called with a size, tensor rebuilds cannot materialise a view larger than its storage,
and :func:`walk_containers` refuses nesting deeper than :data:`MAX_DEPTH`. Everything is decided
per call: torch's process-wide safe-globals list is neither read nor changed.
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


class RefusedByAllowlist(pickle.UnpicklingError):
    """The file asked for something the restricted unpickler refuses (not a damaged file)."""


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


def _wrap_reconstruct(fn: Any) -> Any:
    @functools.wraps(fn)
    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
        # numpy pickles an empty array and sets its data afterwards; a large shape would allocate.
        if not isinstance(shape, tuple) or len(shape) != 1 or shape[0] not in (0, 1):
            raise RefusedByAllowlist(f"numpy _reconstruct with shape {shape!r:.80} refused (numpy writes (0,))")
        return fn(subtype, shape, dtype)

    return reconstruct


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
    reconstruct = _wrap_reconstruct(multiarray._reconstruct)
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[f"{mod}._reconstruct"] = reconstruct
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


# Plain containers already built from the file's own bytes: the only arguments the constructors
# below accept. A ``range``, an iterator, a tensor or a placeholder would let a few bytes of pickle
# expand into unbounded time or memory (``deque(range(10**18), 0)``, ``set(tensor.expand(...))``).
_MATERIALIZED = (list, tuple, dict, set, frozenset, str, bytes, bytearray)


def _refuse_expansion(what: str, value: Any) -> None:
    raise RefusedByAllowlist(
        f"{what}({type(value).__name__}) refused: constructors only take containers stored in the file, "
        "never a range, iterator, tensor or other object that could expand data")


def _materialized(what: str, args: Tuple[Any, ...], limit: int = 1) -> None:
    if len(args) > limit:
        raise RefusedByAllowlist(f"{what} takes at most {limit} argument(s) here, got {len(args)}")
    for value in args[:1]:
        if not isinstance(value, _MATERIALIZED):
            _refuse_expansion(what, value)


def _bounded_set(*args: Any) -> set:
    _materialized("set", args)
    return set(*args)


def _bounded_frozenset(*args: Any) -> frozenset:
    _materialized("frozenset", args)
    return frozenset(*args)


def _bounded_deque(iterable: Any = (), maxlen: Any = None) -> collections.deque:
    _materialized("deque", (iterable,))
    if maxlen is not None and not isinstance(maxlen, int):
        raise RefusedByAllowlist(f"deque maxlen must be an int or None, got {type(maxlen).__name__}")
    return collections.deque(iterable, maxlen)


def _bounded_counter(*args: Any) -> collections.Counter:
    _materialized("Counter", args)
    return collections.Counter(*args)


def _bounded_ordered_dict(*args: Any) -> collections.OrderedDict:
    _materialized("OrderedDict", args)
    return collections.OrderedDict(*args)


def _bounded_bytearray(*args: Any) -> bytearray:
    # bytearray(n) allocates n bytes: only bytes, or (str, encoding) as protocols < 3 write it.
    if len(args) > 2 or (args and not isinstance(args[0], (bytes, bytearray, str, list, tuple))):
        _refuse_expansion("bytearray", args[0] if args else None)
    if args and isinstance(args[0], str):
        return bytearray(_bounded_encode(*args))
    return bytearray(*args[:1])


_PICKLE_ENCODINGS = frozenset({"latin1", "latin-1", "iso-8859-1", "ascii", "utf-8", "utf8"})


def _bounded_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` limited to strings and the encodings pickle itself writes (a codec name
    could otherwise import any module of the ``encodings`` package)."""
    if not isinstance(obj, str) or not isinstance(encoding, str) or encoding.lower() not in _PICKLE_ENCODINGS:
        raise RefusedByAllowlist(f"_codecs.encode refused for ({type(obj).__name__}, {encoding!r:.40})")
    import _codecs

    return _codecs.encode(obj, encoding, errors if errors in ("strict", "surrogatepass") else "strict")


def _bounded_size(*args: Any) -> torch.Size:
    _materialized("torch.Size", args)
    return torch.Size(*args)


def _check_no_expansion(what: str, data: Any) -> None:
    """A tensor about to be copied (``.to``) must not be a view larger than its storage."""
    if isinstance(data, torch.Tensor) and data.layout == torch.strided and data.device.type != "meta":
        if data.numel() * data.element_size() > data.untyped_storage().nbytes():
            raise RefusedByAllowlist(f"{what}: a view of {data.numel()} elements over a storage of "
                                         f"{data.untyped_storage().nbytes()} bytes would be expanded: refused")


def _wrap_device_rebuild(fn: Any) -> Any:
    @functools.wraps(fn)
    def rebuild(data: Any, *args: Any, **kwargs: Any) -> Any:
        _check_no_expansion(fn.__name__, data)
        return fn(data, *args, **kwargs)

    return rebuild


def _wrap_qtensor(fn: Any) -> Any:
    @functools.wraps(fn)
    def rebuild(storage: Any, storage_offset: Any, size: Any, *args: Any, **kwargs: Any) -> Any:
        # The original allocates ``size`` before viewing the storage: bound it by the storage.
        numel = 1
        for n in tuple(size):
            if not isinstance(n, int) or n < 0:
                raise RefusedByAllowlist(f"quantized tensor size {size!r:.80} is not a list of sizes")
            numel *= n
        untyped = getattr(storage, "_untyped_storage", storage)  # TypedStorage.nbytes() warns
        nbytes = untyped.nbytes() if isinstance(untyped, torch.UntypedStorage) else 0
        if numel > 2 * nbytes + 2:
            raise RefusedByAllowlist(f"quantized tensor of {numel} elements over {nbytes} stored bytes: refused")
        return fn(storage, storage_offset, size, *args, **kwargs)

    return rebuild


def _allocates_by_size(obj: Any) -> bool:
    """Classes whose constructor allocates whatever size it is given (tensors, arrays, storages)."""
    if not isinstance(obj, type):
        return False
    classes: Tuple[type, ...] = (torch.Tensor, torch.UntypedStorage, torch.storage.TypedStorage)
    try:
        import numpy as np

        classes += (np.ndarray,)
    except ImportError:
        pass
    return issubclass(obj, classes) or obj.__name__.endswith("Storage")


def _wrap_from_type(fn: Any) -> Any:
    @functools.wraps(fn)
    def rebuild(func: Any, new_type: Any, args: Any, state: Any) -> Any:
        if _allocates_by_size(func) or not isinstance(args, tuple):
            raise RefusedByAllowlist(f"_rebuild_from_type_v2 with {func!r:.80} refused")
        return fn(func, new_type, args, state)

    return rebuild


def _builtins_allowed() -> Dict[str, Any]:
    # No ``range``: nothing in a checkpoint needs one, and it is the usual way to expand data.
    return {
        "collections.OrderedDict": _bounded_ordered_dict,
        "collections.Counter": _bounded_counter,
        "collections.defaultdict": _safe_defaultdict,
        "collections.deque": _bounded_deque,
        "builtins.set": _bounded_set,
        "builtins.frozenset": _bounded_frozenset,
        "builtins.complex": complex,
        "builtins.bytearray": _bounded_bytearray,
        "builtins.slice": slice,
        "_codecs.encode": _bounded_encode,
        "copyreg._reconstructor": _safe_reconstructor,
        "torch.Size": _bounded_size,
    }


def _safe_defaultdict(default_factory: Any = None, *args: Any) -> collections.defaultdict:
    """``defaultdict`` whose factory is only kept when it is a plain builtin type."""
    _materialized("defaultdict", args)
    safe_factories = (int, float, list, dict, set, str, tuple)
    return collections.defaultdict(default_factory if default_factory in safe_factories else None, *args)


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """Protocol 0/1 object reconstruction, limited to placeholder classes."""
    if isinstance(cls, type) and issubclass(cls, Placeholder):
        return cls(state) if state is not None else cls()
    raise RefusedByAllowlist(f"copyreg._reconstructor refused for {cls!r}: only placeholders are rebuilt this way")


_ALLOWED: Optional[Dict[str, Any]] = None


def allowed_globals() -> Dict[str, Any]:
    """The allowlist: ``"module.name"`` -> object, shared by both loading passes."""
    global _ALLOWED
    if _ALLOWED is None:
        allowed = _torch_allowed()
        for name in ("_rebuild_device_tensor_from_cpu_tensor", "_rebuild_device_tensor_from_numpy"):
            if f"torch._utils.{name}" in allowed:
                allowed[f"torch._utils.{name}"] = _wrap_device_rebuild(allowed[f"torch._utils.{name}"])
        if "torch._tensor._rebuild_from_type_v2" in allowed:
            allowed["torch._tensor._rebuild_from_type_v2"] = _wrap_from_type(allowed["torch._tensor._rebuild_from_type_v2"])
        if "torch._utils._rebuild_qtensor" in allowed:
            allowed["torch._utils._rebuild_qtensor"] = _wrap_qtensor(allowed["torch._utils._rebuild_qtensor"])
        allowed.update(_builtins_allowed())
        allowed.update(_numpy_allowed())
        _ALLOWED = allowed
    return _ALLOWED


_ALLOWED_IDS: Optional[frozenset] = None


def _is_allowed_object(obj: Any) -> bool:
    global _ALLOWED_IDS
    if _ALLOWED_IDS is None:
        _ALLOWED_IDS = frozenset(id(v) for v in allowed_globals().values())
    return id(obj) in _ALLOWED_IDS


def _refuse_extension(self: Any) -> None:
    raise RefusedByAllowlist("pickle extension-registry opcodes are refused (they bypass find_class)")


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
            raise RefusedByAllowlist(f"refused to set state on {inst!r}: only objects created while "
                                         "unpickling may receive state")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def load_reduce(self) -> None:
        # Calling a tensor, array or storage class directly allocates the size it is given.
        if len(self.stack) >= 2 and _allocates_by_size(self.stack[-2]):
            raise RefusedByAllowlist(f"calling {self.stack[-2].__name__} from a pickle is refused "
                                         "(it would allocate whatever size the file names)")
        super().load_reduce()

    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_newobj(self) -> None:
        if len(self.stack) >= 2 and _allocates_by_size(self.stack[-2]):
            raise RefusedByAllowlist(f"creating {self.stack[-2].__name__} from a pickle is refused")
        super().load_newobj()

    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        if len(self.stack) >= 3 and _allocates_by_size(self.stack[-3]):
            raise RefusedByAllowlist(f"creating {self.stack[-3].__name__} from a pickle is refused")
        super().load_newobj_ex()

    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

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



MAX_DEPTH = 64  # VISSL training checkpoints nest about ten deep


class TooDeepError(ValueError):
    """Containers nested deeper than :data:`MAX_DEPTH` (``path`` says where)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"containers nested more than {MAX_DEPTH} deep at {path[:200]}")
        self.path = path


_CONTAINERS = (dict, list, tuple, set, frozenset, collections.deque)


def _key_text(key: Any) -> str:
    return key[:120] if isinstance(key, str) else str(key) if isinstance(key, int) else f"<{type(key).__name__}>"


def walk_containers(obj: Any, prefix: str = ""):
    """``(path, value)`` for every value inside plain containers of ``obj``, each container once
    (shared references are not walked again, so a DAG costs its size, not its expansion).

    Iterative, so nesting cannot exhaust the interpreter stack; deeper than :data:`MAX_DEPTH`
    raises :class:`TooDeepError`.
    """
    seen = set()
    stack = [(obj, prefix, 0)]
    while stack:
        value, path, depth = stack.pop()
        yield path, value
        if not isinstance(value, _CONTAINERS) or id(value) in seen:
            continue
        seen.add(id(value))
        if depth >= MAX_DEPTH:
            raise TooDeepError(path or "<top>")
        if isinstance(value, dict):
            children = [(f"{path}.{_key_text(k)}" if path else _key_text(k), v) for k, v in value.items()]
        else:
            children = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
        stack.extend((v, p, depth + 1) for p, v in reversed(children))


def find_placeholders(obj: Any, prefix: str = "") -> List[Tuple[str, str]]:
    """``(path, class_name)`` of every placeholder inside plain containers of ``obj``."""
    found: List[Tuple[str, str]] = []
    for path, value in walk_containers(obj, prefix):
        if isinstance(value, Placeholder) or (isinstance(value, type) and issubclass(value, Placeholder)):
            found.append((path or "<top>", value.class_name))  # an object, or a bare class reference
    return found


__all__ = [
    "Placeholder",
    "RefusedByAllowlist",
    "RESTRICTED_PICKLE",
    "RestrictedUnpickler",
    "allowed_globals",
    "find_placeholders",
    "walk_containers",
    "MAX_DEPTH",
    "TooDeepError",
]
