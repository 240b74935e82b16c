"""Reads an ONNX model's metadata_props (ModelProto field 14) with a minimal protobuf
walk, so the reference harness needs no `onnx` package."""


def _varint(b, i):
    shift = result = 0
    while True:
        c = b[i]
        i += 1
        result |= (c & 0x7F) << shift
        if c < 0x80:
            return result, i
        shift += 7


def _fields(b):
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(b, i)
        elif wire == 1:
            value, i = b[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(b, i)
            value, i = b[i:i + n], i + n
        elif wire == 5:
            value, i = b[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, value


def metadata(path):
    out = {}
    with open(path, "rb") as f:
        data = f.read()
    for field, value in _fields(data):
        if field == 14:  # metadata_props: StringStringEntryProto {1: key, 2: value}
            entry = dict(_fields(value))
            out[entry[1].decode()] = entry.get(2, b"").decode()
    return out
