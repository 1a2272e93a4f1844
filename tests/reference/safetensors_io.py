"""Hand-written safetensors reader/writer for the float64 reference (no `safetensors` package needed).

File layout: 8-byte little-endian u64 header length N, N bytes of JSON
    {name: {"dtype": str, "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {str: str}}
then the raw little-endian tensor bytes; offsets are relative to the end of the header.

Everything is decoded to float64 (or int64 for integer dtypes) so that the reference never
inherits rounding from a narrower compute type: the only rounding left is what the file stores.
"""
import json
import math
import os
import struct

import numpy as np
import torch

FP8_MAX = 448.0  # largest finite e4m3fn value: 0b0_1111_110 = 1.75 * 2^8
FP8_BLOCK = 128  # DeepSeek-V3 block size for weight_scale_inv


def _build_e4m3fn_table():
    """Value of every e4m3fn byte: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits.
    The 'fn' variant has no infinities; only S.1111.111 is NaN, which buys the extra
    top binade (up to 448)."""
    table = np.empty(256, dtype=np.float64)
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        exponent = (code >> 3) & 0xF
        mantissa = code & 0x7
        if exponent == 0xF and mantissa == 0x7:
            table[code] = np.nan
        elif exponent == 0:  # subnormal: no implicit leading 1, exponent fixed at 1 - bias
            table[code] = sign * (mantissa / 8.0) * 2.0 ** (1 - 7)
        else:
            table[code] = sign * (1.0 + mantissa / 8.0) * 2.0 ** (exponent - 7)
    return table


E4M3FN_TABLE = _build_e4m3fn_table()

# Non-negative finite codes sorted by value, used for round-to-nearest encoding.
_POS_CODES = np.arange(0, 0x7F, dtype=np.uint8)  # 0x00 .. 0x7E (0x7F is NaN)
_POS_VALUES = E4M3FN_TABLE[_POS_CODES]
assert np.all(np.diff(_POS_VALUES) > 0)


def encode_e4m3fn(values):
    """Round float values to the nearest e4m3fn code (ties to the even code, i.e. even mantissa,
    like IEEE round-to-nearest-even). Values beyond +-448 saturate, as DeepSeek's quantizer
    clamps before casting. Returns uint8 codes."""
    v = np.asarray(values, dtype=np.float64)
    if np.isnan(v).any():
        raise ValueError("NaN cannot be quantized to e4m3fn here")
    mag = np.minimum(np.abs(v), FP8_MAX)
    hi = np.searchsorted(_POS_VALUES, mag, side="left")  # first value >= mag
    hi = np.clip(hi, 0, len(_POS_VALUES) - 1)
    lo = np.clip(hi - 1, 0, len(_POS_VALUES) - 1)
    d_hi = _POS_VALUES[hi] - mag
    d_lo = mag - _POS_VALUES[lo]
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (_POS_CODES[hi] % 2 == 0))
    idx = np.where(pick_hi, hi, lo)
    codes = _POS_CODES[idx].astype(np.uint8)
    # -0.0 is kept as 0x80 only for a negative zero input; any other sign goes with the value.
    negative = np.signbit(v)
    return np.where(negative, codes | 0x80, codes).astype(np.uint8)


def float_to_bf16_bits(values):
    """float -> bf16 bit patterns (uint16) with round-to-nearest-even on the float32 value.
    (Going through float32 first double-rounds from float64, which is how any real
    pipeline produces bf16; the reference reads back whatever bits are stored anyway.)"""
    f32 = np.ascontiguousarray(np.asarray(values, dtype=np.float32))
    bits = f32.view(np.uint32).astype(np.uint64)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(f32)
    if nan.any():  # keep NaN a NaN (rounding could carry it into infinity)
        out = np.where(nan, ((bits >> 16) | 0x40).astype(np.uint16), out)
    return out


def bf16_bits_to_float(bits):
    """bf16 is the top half of a float32: shift the 16 bits into place and reinterpret."""
    u32 = np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16
    return u32.view(np.float32)


# dtype string -> (numpy storage dtype, bytes per element)
_STORAGE = {
    "F64": (np.dtype("<f8"), 8),
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),
    "F8_E4M3": (np.dtype("u1"), 1),
    "I64": (np.dtype("<i8"), 8),
    "I32": (np.dtype("<i4"), 4),
    "I16": (np.dtype("<i2"), 2),
    "I8": (np.dtype("i1"), 1),
    "U8": (np.dtype("u1"), 1),
    "BOOL": (np.dtype("u1"), 1),
}


def decode(raw, dtype):
    """Raw storage array -> float64 (floats) or int64 (integers) numpy array."""
    if dtype == "BF16":
        return bf16_bits_to_float(raw).astype(np.float64)
    if dtype == "F8_E4M3":
        return E4M3FN_TABLE[raw]
    if dtype in ("F64", "F32", "F16"):
        return raw.astype(np.float64)
    if dtype in ("I64", "I32", "I16", "I8", "U8", "BOOL"):
        return raw.astype(np.int64)
    raise ValueError(f"unsupported safetensors dtype {dtype}")


class SafetensorsFile:
    """One .safetensors file; tensors are decoded on demand so a large checkpoint is not
    materialised in float64 all at once."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError(f"{path}: truncated (no header length)")
            (n,) = struct.unpack("<Q", head)
            header = json.loads(f.read(n).decode("utf-8"))
        self.data_start = 8 + n
        self.metadata = header.pop("__metadata__", None) or {}
        self.entries = header
        size = os.path.getsize(path)
        for name, e in self.entries.items():
            begin, end = e["data_offsets"]
            storage, width = _STORAGE[e["dtype"]]
            expected = width * math.prod(e["shape"])
            if end - begin != expected or self.data_start + end > size:
                raise ValueError(f"{path}: tensor {name} has inconsistent offsets")
        self._map = None

    def names(self):
        return list(self.entries)

    def dtype(self, name):
        return self.entries[name]["dtype"]

    def shape(self, name):
        return tuple(self.entries[name]["shape"])

    def raw(self, name):
        """The stored elements as a numpy array of the storage type (bf16 as uint16 bits,
        fp8 as uint8 codes), shaped."""
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        e = self.entries[name]
        begin, end = e["data_offsets"]
        storage, _ = _STORAGE[e["dtype"]]
        buf = np.array(self._map[self.data_start + begin:self.data_start + end])  # copy: aligned
        return buf.view(storage).reshape(e["shape"])

    def get(self, name):
        """float64 / int64 numpy array (no fp8 block-scale handling at this level)."""
        return decode(self.raw(name), self.dtype(name))


def write_safetensors(path, tensors, metadata=None):
    """tensors: dict name -> (numpy array, dtype string). Floats are rounded to the target dtype
    (nearest-even); a uint16 array for BF16 or uint8 array for F8_E4M3 is taken as raw bits.
    Tensors are written in the given order; the header is space-padded to a multiple of 8 so
    the data section is 8-byte aligned, as the reference implementation does."""
    blobs = []
    header = {}
    offset = 0
    for name, (array, dtype) in tensors.items():
        a = np.asarray(array)
        if dtype == "BF16":
            data = a.astype(np.uint16) if a.dtype == np.uint16 else float_to_bf16_bits(a)
        elif dtype == "F8_E4M3":
            data = a.astype(np.uint8) if a.dtype == np.uint8 else encode_e4m3fn(a)
        elif dtype in _STORAGE:
            data = a.astype(_STORAGE[dtype][0])
        else:
            raise ValueError(f"unsupported dtype {dtype} for {name}")
        data = np.ascontiguousarray(data.astype(data.dtype.newbyteorder("<")))
        nbytes = data.nbytes
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + nbytes]}
        blobs.append(data.tobytes())
        offset += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """Whole file as dict name -> float64 torch tensor (int64 for integer dtypes).
    No fp8 dequantization: use ModelWeights for that."""
    st = SafetensorsFile(path)
    return {n: torch.from_numpy(st.get(n)) for n in st.names()}


def model_files(model_dir):
    """The safetensors files of a HF model directory: the shards named by
    model.safetensors.index.json, else model.safetensors, else every *.safetensors."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return sorted(set(weight_map.values())), weight_map
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(single):
        return ["model.safetensors"], None
    files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors files in {model_dir}")
    return files, None


class ModelWeights:
    """Name -> float64 torch tensor over a (possibly sharded) HF checkpoint.

    FP8 weights are dequantized with their sibling `<name>_scale_inv` (for `x.weight`, the
    tensor `x.weight_scale_inv`): w[i, j] = fp8[i, j] * scale_inv[i // 128, j // 128]."""

    def __init__(self, model_dir):
        self.model_dir = model_dir
        files, weight_map = model_files(model_dir)
        self.files = {f: SafetensorsFile(os.path.join(model_dir, f)) for f in files}
        self.location = {}
        for fname, st in self.files.items():
            for name in st.names():
                if name in self.location:
                    raise ValueError(f"tensor {name} appears in two files")
                self.location[name] = fname
        if weight_map is not None:
            for name, fname in weight_map.items():
                if self.location.get(name) != fname:
                    raise ValueError(f"index says {name} is in {fname}, found in {self.location.get(name)}")
        self._cache = {}

    def __contains__(self, name):
        return name in self.location

    def names(self):
        return list(self.location)

    def dtype(self, name):
        return self.files[self.location[name]].dtype(name)

    def __getitem__(self, name):
        if name not in self._cache:
            self._cache[name] = torch.from_numpy(self._load(name))
        return self._cache[name]

    def _load(self, name):
        st = self.files[self.location[name]]
        value = st.get(name)
        if st.dtype(name) == "F8_E4M3":
            scale_name = name + "_scale_inv"
            if scale_name not in self.location:
                raise KeyError(f"fp8 tensor {name} has no {scale_name}")
            scale = self.files[self.location[scale_name]].get(scale_name)
            value = dequantize_blocks(value, scale)
        return value

    def get(self, name, default=None):
        return self[name] if name in self else default


def dequantize_blocks(values, scale_inv, block=FP8_BLOCK):
    """values [R, C] times scale_inv [ceil(R/block), ceil(C/block)] broadcast per block."""
    rows, cols = values.shape
    expect = (-(-rows // block), -(-cols // block))
    if tuple(scale_inv.shape) != expect:
        raise ValueError(f"scale_inv shape {tuple(scale_inv.shape)} does not match {expect} for {values.shape}")
    full = np.repeat(np.repeat(scale_inv, block, axis=0), block, axis=1)[:rows, :cols]
    return values * full


def quantize_blocks(weight, block=FP8_BLOCK):
    """DeepSeek-V3-style block quantization: per 128x128 block, scale_inv = max|w| / 448 (float32),
    codes = nearest e4m3fn of w / scale_inv. Returns (uint8 codes, float32 scale_inv)."""
    w = np.asarray(weight, dtype=np.float64)
    rows, cols = w.shape
    br, bc = -(-rows // block), -(-cols // block)
    padded = np.zeros((br * block, bc * block))
    padded[:rows, :cols] = np.abs(w)
    blockmax = padded.reshape(br, block, bc, block).max(axis=(1, 3))
    scale_inv = (blockmax / FP8_MAX).astype(np.float32)
    scale_inv[scale_inv == 0] = 1.0  # all-zero block: any scale works, avoid 0/0
    full = np.repeat(np.repeat(scale_inv.astype(np.float64), block, axis=0), block, axis=1)[:rows, :cols]
    codes = encode_e4m3fn(w / full)
    return codes, scale_inv
