"""Firmware images as the bytes a probe writes: (address, data) segments from an ELF, an Intel
HEX or a raw .bin, plus what the image says about the board it was built for.

The target checks run here, before any probe is touched: an image linked for another board's
memory map, another core, or bigger than the part's flash is refused with one line that names
the difference, so nothing is ever half-written to the wrong chip.
"""

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from dsmn_host.errors import DsmnError

EM_ARM = 40
PT_LOAD = 1
SHT_ARM_ATTRIBUTES = 0x70000003
# What our firmware prints at boot (firmware/app/main.c); the same bytes sit in its .rodata.
BANNER = re.compile(rb"DSMN firmware (\S+) board (\S+) runtime (\S+)\r\n")
# Tag_CPU_arch values of the ARM build attributes (ARM IHI 0045) for the cores we know.
CPU_ARCH = {11: "v6-M", 12: "v6S-M", 10: "v7", 13: "v7E-M", 16: "v8-M.base", 17: "v8-M.main",
            21: "v8.1-M.main"}
CORE_ARCH = {"cortex-m0": "v6-M", "cortex-m0plus": "v6-M", "cortex-m3": "v7", "cortex-m4": "v7E-M",
             "cortex-m7": "v7E-M", "cortex-m33": "v8-M.main", "cortex-m55": "v8.1-M.main"}
# Tag_FP_arch: 6 = VFPv4-D16 (the M4's FPv4-SP), 8 = FP-D16 of Armv8 (the M7's and M55's FPv5).
FP_ARCH = {0: "no FPU", 6: "FPv4", 8: "FPv5"}
BOARD_FP = {"": 0, "fpv4-sp-d16": 6, "fpv5-sp-d16": 8, "fpv5-d16": 8, "auto": 8}


@dataclass
class Image:
    path: Path
    kind: str                                     # "elf", "hex" or "bin"
    segments: list                                # [(address, bytes)], sorted, non-overlapping
    ram: list = field(default_factory=list)       # [(address, size)] the ELF runs from (VMA)
    cpu_name: str = ""                            # Tag_CPU_name of an ELF's build attributes (GCC: "7E-M")
    cpu_arch: str = ""                            # Tag_CPU_arch, as CPU_ARCH names it
    fp_arch: int = 0                              # Tag_FP_arch (0: no FP instructions)
    firmware: dict = None                         # {"version", "board", "runtime"} from the banner

    @property
    def size(self):
        return sum(len(d) for _, d in self.segments)

    @property
    def span(self):
        return self.segments[0][0], self.segments[-1][0] + len(self.segments[-1][1])


def load_image(path, board=None):
    """Read FIRMWARE.elf|.hex|.bin; `board` (a boards.Board) gives a .bin its flash origin."""
    path = Path(path)
    if not path.is_file():
        raise DsmnError(f"{path}: firmware file not found (build it with dsmn-host build-firmware)")
    data = path.read_bytes()
    suffix = path.suffix.lower()
    if data[:4] == b"\x7fELF":
        img = _from_elf(path, data)
    elif suffix in (".hex", ".ihex"):
        img = Image(path, "hex", _merge(_parse_ihex(path, data)))
    elif suffix == ".bin":
        if board is None:
            raise DsmnError(f"{path}: a .bin has no addresses; pass --board NAME (its flash origin is the load address)")
        if not data:
            raise DsmnError(f"{path}: empty .bin")
        img = Image(path, "bin", [(board.flash.origin, data)])
    else:
        raise DsmnError(f"{path}: not an ELF, and not named .hex or .bin; give FIRMWARE.elf, .hex or .bin")
    if not img.segments:
        raise DsmnError(f"{path}: no loadable bytes in the image")
    for _, seg in img.segments:
        m = BANNER.search(seg)
        if m:
            img.firmware = {k: v.decode("ascii", "replace") for k, v in
                            zip(("version", "board", "runtime"), m.groups())}
            break
    return img


def _from_elf(path, data):
    def bad(why):
        return DsmnError(f"{path}: corrupt or unsupported ELF ({why})")

    if len(data) < 52 or data[4] != 1 or data[5] != 1:
        width = {1: "32-bit", 2: "64-bit"}.get(data[4] if len(data) > 4 else 0, "unknown-class")
        order = {1: "little-endian", 2: "big-endian"}.get(data[5] if len(data) > 5 else 0, "unknown-order")
        raise DsmnError(f"{path}: {width} {order} ELF, not a 32-bit little-endian ARM (Cortex-M) firmware")
    (e_type, e_machine, _, _, e_phoff, e_shoff, _, _, e_phentsize, e_phnum, e_shentsize, e_shnum,
     _) = struct.unpack_from("<HHIIIIIHHHHHH", data, 16)
    if e_machine != EM_ARM:
        raise DsmnError(f"{path}: ELF for machine {e_machine}, not a 32-bit little-endian ARM (Cortex-M) firmware")
    segments, ram = [], []
    try:
        for i in range(e_phnum):
            p_type, off, vaddr, paddr, filesz, memsz, _, _ = struct.unpack_from("<8I", data, e_phoff + i * e_phentsize)
            if p_type != PT_LOAD:
                continue
            if filesz:
                if off + filesz > len(data):
                    raise bad(f"segment at 0x{paddr:08x} runs past the end of the file")
                segments.append((paddr, data[off:off + filesz]))
            if memsz and (vaddr != paddr or memsz > filesz):  # .data copied to RAM, .bss
                ram.append((vaddr, memsz))
        attrs = {}
        for i in range(e_shnum):
            sh = struct.unpack_from("<10I", data, e_shoff + i * e_shentsize)
            if sh[1] == SHT_ARM_ATTRIBUTES:
                attrs = _attributes(data[sh[4]:sh[4] + sh[5]])
    except struct.error:
        raise bad("truncated headers") from None
    arch = attrs.get(6)
    return Image(path, "elf", _merge(segments), ram=ram, cpu_name=attrs.get(5, ""),
                 cpu_arch=CPU_ARCH.get(arch, f"arch {arch}") if arch is not None else "", fp_arch=attrs.get(10, 0))


def _uleb(buf, i):
    v = shift = 0
    while True:
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return v, i


def _attributes(sec):
    """{tag: value} of the file-scope "aeabi" build attributes of an .ARM.attributes section."""
    attrs = {}
    try:
        if not sec or sec[0] != ord("A"):
            return attrs
        i = 1
        while i < len(sec):
            (length,) = struct.unpack_from("<I", sec, i)
            end = i + length
            vendor_end = sec.index(b"\0", i + 4)
            if sec[i + 4:vendor_end] == b"aeabi":
                j = vendor_end + 1
                while j < end:
                    tag, j = _uleb(sec, j)
                    (size,) = struct.unpack_from("<I", sec, j)
                    sub_end = j - 1 + size
                    j += 4
                    if tag != 1:  # only file-scope attributes
                        j = sub_end
                        continue
                    while j < sub_end:
                        t, j = _uleb(sec, j)
                        if t in (4, 5, 67) or (t > 32 and t % 2):
                            s_end = sec.index(b"\0", j)
                            attrs[t] = sec[j:s_end].decode("ascii", "replace")
                            j = s_end + 1
                        elif t == 32:
                            _, j = _uleb(sec, j)
                            j = sec.index(b"\0", j) + 1
                        else:
                            attrs[t], j = _uleb(sec, j)
            i = end
    except (IndexError, ValueError, struct.error):
        pass  # malformed attributes only lose the core check; the memory map still decides
    return attrs


def _parse_ihex(path, data):
    segs, base = [], 0
    for n, raw in enumerate(data.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        try:
            if line[:1] != b":":
                raise ValueError("no ':'")
            rec = bytes.fromhex(line[1:].decode("ascii"))
            count, addr, rtype = rec[0], (rec[1] << 8) | rec[2], rec[3]
            if len(rec) != count + 5 or sum(rec) & 0xFF:
                raise ValueError("bad length or checksum")
        except (ValueError, UnicodeDecodeError) as exc:
            raise DsmnError(f"{path}, line {n}: not an Intel HEX record ({exc})") from None
        payload = rec[4:4 + count]
        if rtype == 0:
            segs.append((base + addr, payload))
        elif rtype == 1:
            break
        elif rtype == 2:
            base = int.from_bytes(payload, "big") << 4
        elif rtype == 4:
            base = int.from_bytes(payload, "big") << 16
    return segs


def _merge(segs):
    """Sorted, contiguous runs joined; overlapping records are an error (the image is ambiguous)."""
    out = []
    for addr, data in sorted(segs, key=lambda s: s[0]):
        if out and addr < out[-1][0] + len(out[-1][1]):
            raise DsmnError(f"image has two different contents for address 0x{addr:08x}")
        if out and addr == out[-1][0] + len(out[-1][1]):
            out[-1] = (out[-1][0], out[-1][1] + data)
        else:
            out.append((addr, bytes(data)))
    return out


def to_ihex(img):
    """The image as Intel HEX text (what GDB `load`s for a .bin: a .bin has no addresses)."""
    lines, upper = [], None
    for addr, data in img.segments:
        for off in range(0, len(data), 16):
            a = addr + off
            if a >> 16 != upper:
                upper = a >> 16
                lines.append(_ihex_record(0, 4, upper.to_bytes(2, "big")))
            lines.append(_ihex_record(a & 0xFFFF, 0, data[off:off + 16]))
    lines.append(_ihex_record(0, 1, b""))
    return "\n".join(lines) + "\n"


def _ihex_record(addr, rtype, payload):
    rec = bytes([len(payload), addr >> 8, addr & 0xFF, rtype]) + bytes(payload)
    return ":" + (rec + bytes([(-sum(rec)) & 0xFF])).hex().upper()


def check_target(img, board):
    """Refuse an image that was not built for `board`: its banner's board name, its core, its
    memory map (every byte inside the board's flash, RAM inside its RAM) and its size."""
    where = f"{img.path.name}"
    fw = img.firmware
    if fw and fw["board"] != board.name:
        raise DsmnError(f"{where} was built for board {fw['board']}, not {board.name}; "
                        f"rebuild with dsmn-host build-firmware --board {board.name}")
    # The core, from the ELF's build attributes (GCC records the architecture, not the core):
    # the architecture must be the board's, and the FPU no newer than the board's (an M4F image
    # runs on an M7; an M7 image with double-precision FP faults on an M4F).
    want_arch = CORE_ARCH.get(board.core)
    if img.cpu_arch and want_arch and img.cpu_arch != want_arch:
        raise DsmnError(f"{where} was compiled for Arm {img.cpu_arch}, but {board.name}'s {board.core} is {want_arch}")
    have_fp = BOARD_FP.get(board.fpu, 8)
    if img.fp_arch > have_fp:
        raise DsmnError(f"{where} uses the {FP_ARCH.get(img.fp_arch, f'FP arch {img.fp_arch}')} FPU, but "
                        f"{board.name}'s {board.core} has {board.fpu or 'none'}: it was compiled for another core")
    f0, f1 = board.flash.origin, board.flash.origin + board.flash.length
    lo, hi = img.span
    for addr, data in img.segments:
        end = addr + len(data)
        if addr < f0 or addr >= f1:
            raise DsmnError(f"{where} puts {len(data)} bytes at 0x{addr:08x}, outside {board.name}'s flash "
                            f"0x{f0:08x}-0x{f1 - 1:08x}: it was linked for another board's memory map")
        if end > f1:
            raise DsmnError(f"{where} does not fit {board.name}'s flash: it ends at 0x{end - 1:08x}, "
                            f"{end - f1} bytes past 0x{f1 - 1:08x} ({hi - lo} B image, {board.flash.length} B flash)")
    regions = [board.ram] + ([board.arena_ram] if board.arena_ram else [])
    for vaddr, size in img.ram:
        if not any(r.origin <= vaddr and vaddr + size <= r.origin + r.length for r in regions + [board.flash]):
            raise DsmnError(f"{where} uses RAM 0x{vaddr:08x}-0x{vaddr + size - 1:08x}, which {board.name} does not have "
                            f"(RAM " + ", ".join(f"0x{r.origin:08x}+{r.length}" for r in regions) + ")")
