"""What a local weights file is, when it cannot be a model's weights: read safely (safetensors, or torch's weights-only
unpickler), then compared with the architecture's keys and shapes, so that ``load_clip`` can say what the file is
instead and how to fix it (``WeightsError``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import WeightsError


def _short(text: object, limit: int = 90) -> str:
    """First line of ``text``, cut to ``limit`` characters (for one-line 'found' descriptions)."""
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _read_weights_file(path: Path) -> tuple[Any, str | None]:
    """(object in the file, None), or (None, what the file is instead). Only safe loads (weights_only)."""
    import pickle
    import zipfile
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as err:
        return None, f"a file that cannot be read ({err.strerror or type(err).__name__})"
    looks_safetensors = len(head) > 8 and head[8:9] == b"{"
    if path.suffix == ".safetensors" or looks_safetensors:
        try:
            from safetensors.torch import load_file
            return load_file(str(path), device="cpu"), None
        except Exception as err:  # noqa: BLE001 - any failure means "not a readable safetensors file"
            if path.suffix == ".safetensors":
                return None, f"not a valid safetensors file ({_short(err)})"
    if head[:2] == b"PK" and not zipfile.is_zipfile(path):
        return None, "a damaged or truncated PyTorch file (an incomplete zip archive)"
    if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
        return None, "not a PyTorch or safetensors file"
    try:
        return torch.load(path, map_location="cpu", weights_only=True), None
    except pickle.UnpicklingError:  # the safe unpickler refused the stream: objects, or not a pickle at all
        refused = _refused_globals(path)
        if refused:
            return None, (f"a pickle of Python objects ({', '.join(refused[:3])}), not a plain state dict of tensors; "
                          "unpickling objects can run code hidden in the file, so it is refused for safety. Save the "
                          "weights as safetensors (safetensors.torch.save_file) or as a plain state dict of tensors")
        return None, "a damaged PyTorch file (its pickled contents cannot be read)"
    except Exception as err:  # noqa: BLE001 - truncated zip, bad records, ...
        detail = "" if "weights_only" in str(err) or not str(err).strip() else f": {_short(err)}"
        return None, f"a damaged or truncated PyTorch file ({type(err).__name__}{detail})"


def _pickle_streams(path: Path) -> list[bytes]:
    """The pickle bytes of a torch file: the zip format's ``data.pkl``, else the whole (legacy or raw) file."""
    import zipfile
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return [z.read(n) for n in z.namelist() if n.endswith("data.pkl")]
    return [path.read_bytes()]


def _pickled_globals(data: bytes) -> list[str]:
    """Every ``module.name`` a pickle stream imports (GLOBAL, INST, STACK_GLOBAL), read opcode by opcode without
    executing anything; a malformed or truncated stream yields what was read before the damage."""
    import io
    import pickletools
    found: list[str] = []
    strings: list[str] = []
    memo: dict[int, str | None] = {}
    stream = io.BytesIO(data)
    try:
        while stream.tell() < len(data):  # a legacy torch file is several pickles in a row
            last: str | None = None
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(".".join(strings[-2:]))
                elif op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                    memo[len(memo) if op.name == "MEMOIZE" else int(arg)] = last
                elif op.name in ("GET", "BINGET", "LONG_BINGET") and memo.get(int(arg)) is not None:
                    strings.append(memo[int(arg)])
                last = arg if isinstance(arg, str) and "UNICODE" in op.name else None
                if last is not None:
                    strings.append(last)
    except Exception:  # noqa: BLE001 - storage bytes after the pickles, or damage: what was read stands
        pass
    return found


def _refused_globals(path: Path) -> list[str]:
    """The globals in ``path`` that torch's safe (weights-only) unpickler does not allow: pickled Python objects."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
        allowed = set(_get_allowed_globals()) | {f"{g.__module__}.{g.__qualname__}" for g in
                                                 torch.serialization.get_safe_globals() if hasattr(g, "__qualname__")}
    except (ImportError, AttributeError):  # another torch: anything outside torch and OrderedDict is an object
        allowed = set()
    try:
        streams = _pickle_streams(path)
    except (OSError, ValueError):
        return []
    names = [g for data in streams for g in _pickled_globals(data)]
    refused = [g for g in names if g not in allowed and not (not allowed and (g.startswith("torch.")
                                                                             or g == "collections.OrderedDict"))]
    return list(dict.fromkeys(refused))


def _shape(t: Any) -> str:
    return str(list(getattr(t, "shape", ())))


def _state_dict_mismatch(name: str, obj: Any) -> str | None:
    """What keeps ``obj`` (a loaded checkpoint) from being ``name``'s weights, or None if it would fit."""
    import logging
    import open_clip
    if isinstance(obj, torch.jit.ScriptModule):
        obj = obj.state_dict()
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        return f"a file holding a {type(obj).__name__}, not a state dict"
    if not obj:
        return "an empty state dict"
    if not any(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = ", ".join(f"'{k}'" for k in list(obj)[:4])
        return f"a dict without tensors (keys {keys}), not a state dict"
    if all(str(k).startswith("module.") for k in obj):
        obj = {k[7:]: v for k, v in obj.items()}
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip warns "initialized randomly": true but beside the point here
    try:
        with torch.device("meta"):  # the architecture's keys and shapes, without allocating or initialising
            expected = open_clip.create_model(name, device="meta").state_dict()
    finally:
        logging.disable(previous)
    lenient = {"logit_bias", "text.transformer.embeddings.position_ids"}  # open_clip fills in / drops these
    unexpected = [k for k in obj if k not in expected and k not in lenient]
    missing = [k for k in expected if k not in obj and k not in lenient]
    shapes = []
    for k, want in expected.items():
        got = obj.get(k)
        if not isinstance(got, torch.Tensor) or tuple(got.shape) == tuple(want.shape):
            continue
        if k.startswith("logit_") and got.numel() == want.numel():
            continue  # scalar vs 1-d: open_clip reshapes it
        if k.endswith("positional_embedding") and got.shape[-1:] == want.shape[-1:]:
            continue  # same width, other length: open_clip interpolates it
        shapes.append(k)
    if not (unexpected or missing or shapes):
        return None
    parts = []
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key{'s' * (len(unexpected) > 1)} such as '{unexpected[0]}'")
    if missing:
        parts.append(f"{len(missing)} missing such as '{missing[0]}'")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} shape mismatch{'es' * (len(shapes) > 1)}, e.g. '{k}' "
                     f"{_shape(obj[k])} in the file vs {_shape(expected[k])} expected")
    what = "a state dict for another architecture" if unexpected or missing else f"a state dict that does not fit '{name}'"
    return f"{what}: {', '.join(parts)}"


def weights_problem(name: str, path: Path) -> str | None:
    """One line saying what is wrong with the local weights file ``path`` for ``name``, or None if nothing is."""
    obj, found = _read_weights_file(path)
    return found if found is not None else _state_dict_mismatch(name, obj)


def weights_error(name: str, path: Path, found: str, tag: str) -> WeightsError:
    """The ``WeightsError`` for a local file that cannot be ``name``'s weights (``tag``: a tag it does have)."""
    return WeightsError(
        f"Cannot load the weights file '{path}' into model '{name}'. Expected: an open_clip state dict (or "
        f"checkpoint with a 'state_dict') for the architecture '{name}'. Found: {found}. Fix: check the path; "
        f"pass the weights of a {name} model (a file saved with torch.save(model.state_dict(), path)); or use "
        f"pretrained='random' / a tag such as '{tag}'."
    )
