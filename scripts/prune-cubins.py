#!/usr/bin/env python3
"""Zero the machine code of every GPU architecture but one in a CUDA library's fat binary.

    prune-cubins.py LIBRARY OUT SM        e.g. libonnxruntime_providers_cuda.so out.so 90

onnxruntime-gpu's CUDA provider (284 MB) carries compressed cubins for sm_75, 80, 86, 89, 90
and 120 in its .nv_fatbin section. A GPU machine that takes a small upload (scripts/
gpu-bundle.sh --only-sm) needs only its own architecture's: the others' payloads are zeroed,
every header, offset and size left as it was, so the library loads and runs as before on that
GPU and compresses to a fifth (xz: 60 MB instead of 244). The driver picks the cubin matching
the device from the entry headers and never reads the zeroed ones; on any other architecture
the result has no usable kernels. No PTX is in this library, so there is nothing to JIT from.

Fat binary layout (as CUDA's fatbinary.h and open-source readers describe it): a container is
a 16-byte header (magic 0xBA55ED50, u16 version, u16 header size, u64 payload size) followed by
entries, each with a header (u16 kind, u16 version, u32 header size, u64 payload size, ...,
u32 sm_arch at byte 28) and its payload.
"""
import re
import struct
import subprocess
import sys

MAGIC = 0xBA55ED50


def fatbin_section(path):
    out = subprocess.run(["readelf", "-SW", path], capture_output=True, text=True, check=True).stdout
    found = re.search(r"\.nv_fatbin\s+PROGBITS\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)", out)
    if not found:
        sys.exit(f"{path}: no .nv_fatbin section")
    return int(found.group(1), 16), int(found.group(2), 16)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    src, dst, keep = sys.argv[1], sys.argv[2], int(sys.argv[3])
    start, size = fatbin_section(src)
    data = bytearray(open(src, "rb").read())
    kept = zeroed = 0
    archs = set()
    pos, end_section = start, start + size
    while pos + 16 <= end_section:
        magic, _, header, payload = struct.unpack_from("<IHHQ", data, pos)
        if magic != MAGIC:  # containers are 8-byte aligned, with padding between them
            pos += 8
            continue
        entry, end = pos + header, pos + header + payload
        while entry < end:
            _, _, entry_header, entry_payload = struct.unpack_from("<HHIQ", data, entry)
            arch = struct.unpack_from("<I", data, entry + 28)[0]
            archs.add(arch)
            body = entry + entry_header
            if arch == keep:
                kept += entry_payload
            else:
                data[body:body + entry_payload] = bytes(entry_payload)
                zeroed += entry_payload
            entry = body + entry_payload
        pos = end
    if not kept:
        sys.exit(f"{src}: no sm_{keep} code (found {sorted(archs)}); nothing written")
    open(dst, "wb").write(data)
    print(f"{dst}: kept {kept >> 20} MiB of sm_{keep}, zeroed {zeroed >> 20} MiB "
          f"of {sorted(a for a in archs if a != keep)}")


if __name__ == "__main__":
    main()
