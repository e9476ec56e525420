"""safetensors bytes without building them: the header, then the tensors' own memory.

`safetensors.torch.save` copies every tensor into one `bytes` object (twice, through
numpy and Rust): at 2.7 GB per shard that is most of a writer thread's time. `parts`
returns the same file as a header plus zero-copy views of the tensors, which a writer
hashes and writes one after another (`write_parts`). The header is laid out as
safetensors lays it out (tensors ordered by dtype, largest first in its enum order, then
by name; compact JSON with `__metadata__` first; padded with spaces to 8 bytes);
`tests/test_store_fast.py` checks the bytes against `safetensors.torch.save`.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import BinaryIO

import torch

# safetensors' Dtype enum order (its sort key) and names
_ORDER = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64"]
_NAMES = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.float16: "F16",
    torch.bfloat16: "BF16", torch.int32: "I32", torch.float32: "F32", torch.float64: "F64", torch.int64: "I64",
}


def _bytes_view(t: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, without a copy."""
    t = t.detach()
    if not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError("serialize needs contiguous CPU tensors")
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy()).cast("B")


def parts(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> list[memoryview | bytes]:
    """[header, tensor bytes...]: concatenated, exactly `safetensors.torch.save(tensors, metadata)`."""
    for name, t in tensors.items():
        if t.dtype not in _NAMES:
            raise ValueError(f"tensor {name}: dtype {t.dtype} is not handled here; use safetensors.torch.save")
    names = sorted(tensors, key=lambda n: (-_ORDER.index(_NAMES[tensors[n].dtype]), n))
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    views, offset = [], 0
    for name in names:
        t = tensors[name]
        v = _bytes_view(t)
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + v.nbytes]}
        offset += v.nbytes
        views.append(v)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return [struct.pack("<Q", len(text)) + text, *views]


def write_parts(fh: BinaryIO, chunks: list[memoryview | bytes], block: int = 64 << 20) -> tuple[int, str]:
    """Write `chunks` to `fh` and hash them on the way (sha256): (bytes written, hex digest)."""
    h = hashlib.sha256()
    n = 0
    for c in chunks:
        mv = memoryview(c)
        for lo in range(0, mv.nbytes, block):
            piece = mv[lo : lo + block]
            h.update(piece)  # releases the GIL on large buffers, as does the write
            fh.write(piece)
        n += mv.nbytes
    return n, h.hexdigest()
