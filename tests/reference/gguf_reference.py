"""An independent GGUF reader and llama.cpp's reference block quantizers, in numpy, written from
the format's description (ggml's docs/gguf.md, ggml-quants.c's quantize_row_*_ref), for checking
what `deepmoe convert --to gguf` writes. Not shared with the C++ code in any way.
"""
import struct

import numpy as np

VALUE_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
TYPE_NAMES = {0: "U8", 1: "I8", 2: "U16", 3: "I16", 4: "U32", 5: "I32", 6: "F32", 7: "BOOL", 8: "STRING",
              9: "ARRAY", 10: "U64", 11: "I64", 12: "F64"}
GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q8_0 = 0, 1, 2, 8
BLOCK_BYTES = {GGML_F32: (1, 4), GGML_F16: (1, 2), GGML_Q4_0: (32, 18), GGML_Q8_0: (32, 34)}


class Reader:
    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, fmt):
        value = struct.unpack_from(fmt, self.data, self.at)[0]
        self.at += struct.calcsize(fmt)
        return value

    def string(self):
        n = self.take("<Q")
        s = self.data[self.at:self.at + n].decode("utf-8")
        self.at += n
        return s

    def value(self, vtype):
        if vtype == 8:
            return self.string()
        if vtype == 9:
            etype, n = self.take("<I"), self.take("<Q")
            return ("ARRAY", TYPE_NAMES[etype], [self.value(etype) for _ in range(n)])
        return self.take(VALUE_FORMATS[vtype])


def read_gguf(path):
    """Returns (metadata {key: (type name, value)}, tensors {name: (ggml type, dims, raw bytes)})."""
    data = open(path, "rb").read()
    r = Reader(data)
    assert r.take("<I") == 0x46554747, "magic"
    version = r.take("<I")
    assert version == 3, version
    n_tensors, n_kv = r.take("<Q"), r.take("<Q")
    metadata = {}
    for _ in range(n_kv):
        key = r.string()
        vtype = r.take("<I")
        metadata[key] = (TYPE_NAMES[vtype], r.value(vtype))
    alignment = metadata.get("general.alignment", ("U32", 32))[1]
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.take("<I")
        dims = [r.take("<Q") for _ in range(n_dims)]
        infos.append((name, dims, r.take("<I"), r.take("<Q")))
    start = (r.at + alignment - 1) // alignment * alignment
    tensors, expected_offset = {}, 0
    for name, dims, gtype, offset in infos:
        assert offset == expected_offset, f"{name}: offset {offset}, llama.cpp expects {expected_offset}"
        per_block, block_bytes = BLOCK_BYTES[gtype]
        n_bytes = int(np.prod(dims)) // per_block * block_bytes
        tensors[name] = (gtype, dims, data[start + offset:start + offset + n_bytes])
        expected_offset = (offset + n_bytes + alignment - 1) // alignment * alignment
    return metadata, tensors


def f16(x):
    """IEEE binary16 with round-to-nearest-even, as numpy (and F16C) convert."""
    return np.asarray(x, dtype=np.float32).astype(np.float16)


def quantize_q8_0(x):
    """ggml quantize_row_q8_0_ref: d = max|x| / 127, q = round half away from zero of x / d."""
    blocks = np.asarray(x, dtype=np.float32).reshape(-1, 32)
    out = bytearray()
    for b in blocks:
        d = np.float32(np.abs(b).max()) / np.float32(127)
        inv = np.float32(1) / d if d != 0 else np.float32(0)
        scaled = (b * inv).astype(np.float64)  # the float32 product, rounded exactly in float64
        q = (np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)).astype(np.int8)
        out += f16(d).tobytes() + q.tobytes()
    return bytes(out)


def quantize_q4_0(x):
    """ggml quantize_row_q4_0_ref: d = (the x of largest |x|) / -8; level = min(15, trunc(x/d + 8.5));
    byte j = level(x[j]) | level(x[j + 16]) << 4."""
    blocks = np.asarray(x, dtype=np.float32).reshape(-1, 32)
    out = bytearray()
    for b in blocks:
        m = b[int(np.argmax(np.abs(b)))]
        d = np.float32(m) / np.float32(-8)
        inv = np.float32(1) / d if d != 0 else np.float32(0)
        levels = np.minimum(15, np.trunc(b * inv + np.float32(8.5)).astype(np.int32)).astype(np.uint8)
        out += f16(d).tobytes() + (levels[:16] | (levels[16:] << 4)).astype(np.uint8).tobytes()
    return bytes(out)


def encode(x, gtype):
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    if gtype == GGML_F32:
        return x.tobytes()
    if gtype == GGML_F16:
        return f16(x).tobytes()
    if gtype == GGML_Q8_0:
        return quantize_q8_0(x)
    return quantize_q4_0(x)
