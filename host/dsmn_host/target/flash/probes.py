"""The ways to get an image into a board's flash, one class each, all with the same three steps:
`write(img)`, `verify(img)` (read back, or the probe's own verify) and `reset()`.

- `PyocdProbe`: pyOCD's Python API on a CMSIS-DAP / ST-LINK / J-Link probe.
- `OpenocdProbe`: `openocd ... -c "program FILE verify reset exit"` (one process does all three).
- `GdbProbe`: gdb-multiarch against any GDB server (OpenOCD's, pyOCD's, J-Link's, ST-LINK's,
  QEMU's -gdb): `load`, `compare-sections` plus a byte-for-byte read-back, then a reset.
- `MountProbe`: the ST-LINK / DAPLink USB drive: copy a .bin, wait for the drive to come back,
  read FAIL.TXT.

Every failure is a DsmnError of one line that says which probe, and what to do.
"""

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from dsmn_host.errors import DsmnError

GDB = "gdb-multiarch"
OPENOCD = "openocd"
AIRCR = 0xE000ED0C


def parse_probe(spec, board):
    """A probe object from --probe (pyocd[:UID] | openocd | gdb://HOST:PORT | mount:PATH)."""
    if spec is None:
        if board.qemu_machine:
            raise DsmnError(f"board {board.name} is a QEMU machine: start it blank with "
                            f"`dsmn-host emulate --board {board.name} --wait-for-flash --gdb PORT` and pass "
                            "--probe gdb://127.0.0.1:PORT")
        spec = "pyocd"
    if spec == "pyocd" or spec.startswith("pyocd:"):
        return PyocdProbe(board, spec.partition(":")[2] or None)
    if spec == "openocd":
        return OpenocdProbe(board)
    if spec.startswith("gdb://"):
        host, _, port = spec[len("gdb://"):].rpartition(":")
        if not host or not port.isdigit():
            raise DsmnError(f"--probe {spec}: give gdb://HOST:PORT, e.g. gdb://127.0.0.1:3333")
        return GdbProbe(host, int(port))
    if spec.startswith("mount:"):
        return MountProbe(Path(spec[len("mount:"):]))
    raise DsmnError(f"--probe {spec}: unknown probe; use pyocd, pyocd:UID, openocd, gdb://HOST:PORT or mount:PATH")


def _first_difference(want, got, base):
    n = sum(a != b for a, b in zip(want, got)) + abs(len(want) - len(got))
    for i, (a, b) in enumerate(zip(want, got)):
        if a != b:
            return (f"0x{base + i:08x} reads 0x{b:02x} but the image has 0x{a:02x} "
                    f"({n} of {len(want)} bytes differ in the segment at 0x{base:08x})")
    return f"read {len(got)} of {len(want)} bytes at 0x{base:08x}"


def compare_readback(img, read, who):
    """Raise on the first segment whose bytes `read(addr, n)` does not return exactly."""
    for addr, data in img.segments:
        got = read(addr, len(data))
        if got != data:
            raise DsmnError(f"verify failed on {who}: " + _first_difference(data, got, addr)
                            + "; the flash was not written correctly (flash again; if it repeats, erase the chip)")
    return img.size


# ----------------------------------------------------------------------------------------------
# GDB remote protocol (gdb-multiarch)


class GdbProbe:
    """Any GDB server. Each step is one batch gdb session that ends with `disconnect` (the target
    stays halted) except `reset`, which ends with `detach` (the target runs)."""

    def __init__(self, host, port, timeout=300.0, connect_timeout=8.0):
        # `timeout` covers a whole step (erasing 2 MiB of STM32H7 flash takes tens of seconds);
        # `connect_timeout` the handshake, so a server busy with another client is told quickly.
        self.host, self.port = host, port
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.name = f"GDB server {host}:{port}"

    def _gdb(self, commands, elf=None, what="gdb", end="disconnect"):
        if shutil.which(GDB) is None:
            raise DsmnError(f"{GDB} not found on PATH (apt-get install gdb-multiarch, or run scripts/bootstrap.sh)")
        # The steps run from gdb's Python (a "py:" step is Python itself) so that a failing one
        # stops the rest but never the final `disconnect`: a plain gdb script stops at the error,
        # and gdb's exit would then resume the target with a half-written image.
        steps = "\n".join([
            "python",
            f"steps = {list(commands)!r}",
            "for step in steps:",
            "    try:",
            "        exec(step[3:]) if step.startswith('py:') else gdb.execute(step)",
            "    except gdb.error as exc:",
            "        what = ('python step' if step.startswith('py:') else",
            "                'read-back ' + ' - '.join(step.split()[-2:]) if step.startswith('dump') else step)",
            "        print('@@ERROR %s: %s' % (what, exc))",
            "        break",
            f"gdb.execute({end!r})",
            "end"])
        script = ["set pagination off", "set confirm off", "set width 0", "set remotetimeout 5",
                  "set tcp connect-timeout 3",
                  f"target extended-remote {self.host}:{self.port}", "echo @@CONNECTED\\n", steps]
        with tempfile.NamedTemporaryFile("w", suffix=".gdb", delete=False) as f:
            f.write("\n".join(script) + "\n")
        argv = [GDB, "-nx", "-batch", "-x", f.name] + ([str(elf)] if elf else [])
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        lines, connected = [], threading.Event()

        def pump():
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("@@CONNECTED"):
                    connected.set()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            t0 = time.monotonic()
            while not connected.is_set() and proc.poll() is None and time.monotonic() - t0 < self.connect_timeout:
                connected.wait(0.05)
            if not connected.is_set() and proc.poll() is None:
                raise DsmnError(f"{self.name} accepted the connection but did not answer within "
                                f"{self.connect_timeout:.0f} s: busy with another debugger? (a GDB server "
                                "serves one client at a time)")
            try:
                proc.wait(max(1.0, self.timeout - (time.monotonic() - t0)))
            except subprocess.TimeoutExpired:
                raise DsmnError(f"{self.name} did not finish the {what} within {self.timeout:.0f} s") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(2)
            os.unlink(f.name)
        out = "".join(lines)
        if "@@CONNECTED" not in out:
            why = next((ln for ln in out.splitlines() if f"{self.host}:{self.port}" in ln or "refused" in ln
                        or "timed out" in ln), None) or (out.strip().splitlines() or ["no output"])[-1]
            raise DsmnError(f"no GDB server at {self.host}:{self.port} ({why.strip()}); start one "
                            "(openocd, pyocd gdbserver, JLinkGDBServer, ST-LINK_gdbserver, or "
                            "dsmn-host emulate --wait-for-flash --gdb PORT)")
        err = next((ln for ln in out.splitlines() if ln.startswith("@@ERROR ")), None)
        if err:
            raise DsmnError(f"{what} through {self.name} failed: {err[len('@@ERROR '):].strip()}")
        return out

    def _load(self, img, tmp):
        """gdb commands that write `img` (a .bin has no addresses: gdb gets it as Intel HEX at
        the flash origin), and the ELF to give gdb."""
        if img.kind == "elf":
            return ["load"], img.path
        from dsmn_host.target.flash.image import to_ihex

        hexfile = Path(tmp) / "image.hex"
        hexfile.write_text(to_ihex(img))
        return [f"load {hexfile}"], None

    def write(self, img):
        with tempfile.TemporaryDirectory() as tmp:
            cmds, elf = self._load(img, tmp)
            return self._gdb(cmds, elf=elf, what=f"writing {img.path.name}")

    def read(self, ranges, extra=(), elf=None, what="reading memory back"):
        """Bytes at each (address, size) in one gdb session (after the `extra` commands);
        returns (list of bytes, gdb output)."""
        with tempfile.TemporaryDirectory() as tmp:
            cmds = list(extra)
            for i, (addr, size) in enumerate(ranges):
                cmds.append(f"dump binary memory {tmp}/seg{i}.bin 0x{addr:x} 0x{addr + size:x}")
            out = self._gdb(cmds, elf=elf, what=what)
            files = [Path(tmp) / f"seg{i}.bin" for i in range(len(ranges))]
            return [f.read_bytes() if f.is_file() else b"" for f in files], out

    def verify(self, img, load=False):
        """Read every segment back (after writing it, in the same session, with `load`) and
        compare; for an ELF also gdb's compare-sections (the server's CRC where it has one)."""
        with tempfile.TemporaryDirectory() as tmp:
            cmds, elf = self._load(img, tmp) if load else ([], img.path if img.kind == "elf" else None)
            if elf:
                cmds.append("compare-sections")
            got, out = self.read([(a, len(d)) for a, d in img.segments], extra=cmds, elf=elf,
                                 what=f"writing and reading back {img.path.name}" if load else "reading back")
        by_addr = {a: g for (a, _), g in zip(img.segments, got)}
        n = compare_readback(img, lambda a, size: by_addr[a], self.name)
        if "MIS-MATCHED" in out:  # read-back agreed but the server's CRC did not: trust neither
            bad = next(ln for ln in out.splitlines() if "MIS-MATCHED" in ln)
            raise DsmnError(f"verify failed on {self.name}: compare-sections says {bad.strip()}")
        return f"read back {n} bytes in {len(img.segments)} segment(s)" + (", compare-sections matched"
                                                                           if img.kind == "elf" else "")

    def poke(self, addr, value):
        """Write one byte through the stub (tests: a corrupted flash that verify must catch)."""
        self._gdb([f"set *(unsigned char *)0x{addr:x} = {value}"], what="write")

    def reset(self):
        # `monitor reset` is the reset of OpenOCD, pyOCD, J-Link and ST-LINK gdbservers; QEMU's
        # stub hands monitor commands to its HMP, where the command is `system_reset`. A server
        # without monitor commands gets a core reset: SP and PC from the vector table.
        script = [
            "py:"
            "try:\n"
            "    out = gdb.execute('monitor reset', to_string=True)\n"
            "    if 'unknown command' in out:\n"
            "        gdb.execute('monitor system_reset', to_string=True)\n"
            "        print('@@RESET system_reset')\n"
            "    else:\n"
            "        print('@@RESET monitor reset')\n"
            "except gdb.error:\n"
            "    gdb.execute('set $sp = *(unsigned int *)0')\n"
            "    gdb.execute('set $pc = *(unsigned int *)4')\n"
            "    print('@@RESET core (vector table)')\n",
        ]
        out = self._gdb(script, what="reset", end="detach")
        line = next((ln for ln in out.splitlines() if ln.startswith("@@RESET")), None)
        if line is None:
            raise DsmnError(f"reset through {self.name} failed: {out.strip().splitlines()[-1]}")
        return line.split(" ", 1)[1]

    def program(self, img, log):
        # Write and read back in one gdb session (the comparison runs here, before the reset, so
        # a board whose flash did not take is left halted, not started); then reset in another.
        t0 = time.monotonic()
        how = self.verify(img, load=True)
        t1 = time.monotonic()
        log(f"wrote {img.size} bytes through {self.name}; verified: {how} ({t1 - t0:.2f} s)")
        log(f"reset ({self.reset()})")
        self.timings = {"write_verify_s": round(t1 - t0, 3), "reset_s": round(time.monotonic() - t1, 3)}
        return how


# ----------------------------------------------------------------------------------------------
# pyOCD


class PyocdProbe:
    def __init__(self, board, unique_id=None):
        self.board, self.unique_id = board, unique_id
        self.name = "pyOCD" + (f" probe {unique_id}" if unique_id else "")

    def _target(self):
        if not self.board.pyocd_target:
            raise DsmnError(f"board {self.board.name} has no pyOCD target in the board table; use "
                            "--probe openocd or gdb://HOST:PORT")
        return self.board.pyocd_target

    def session(self):
        try:
            from pyocd.core.helpers import ConnectHelper
        except ImportError:
            raise DsmnError("pyOCD is not installed (pip install pyocd==0.46.0, or run scripts/bootstrap.sh)") from None
        target = self._target()
        probes = ConnectHelper.get_all_connected_probes(blocking=False, unique_id=self.unique_id,
                                                        print_wait_message=False)
        if not probes:
            raise DsmnError("no debug probe found by pyOCD" + (f" with id {self.unique_id}" if self.unique_id else "")
                            + f": connect {self.board.name}'s ST-LINK by USB (`pyocd list` shows the probes "
                            "pyOCD sees; on Linux the udev rules must give you access)")
        if len(probes) > 1:
            ids = ", ".join(p.unique_id for p in probes)
            raise DsmnError(f"{len(probes)} debug probes connected ({ids}); choose one with --probe pyocd:UID")
        options = {"target_override": target}
        try:
            session = ConnectHelper.session_with_chosen_probe(blocking=False, unique_id=probes[0].unique_id,
                                                              auto_open=False, options=options)
            session.open()
        except Exception as exc:  # pyOCD raises its own exceptions and USB ones
            raise self._explain(exc) from None
        return session

    def _explain(self, exc):
        text = f"{type(exc).__name__}: {exc}"
        low = text.lower()
        if "not recognized" in low or "targetsupporterror" in low:
            pack = self.board.pyocd_pack
            return DsmnError(f"pyOCD does not know target {self._target()}"
                             + (f"; install its CMSIS pack once: pyocd pack install {pack}" if pack else ""))
        if "busy" in low or "access denied" in low or "resource" in low and "use" in low:
            return DsmnError(f"{self.name} is busy or not accessible ({exc}); close the other debugger "
                             "(OpenOCD, STM32CubeProgrammer, another pyOCD) or fix the udev permissions")
        if "idcode" in low or "no ack" in low or "transfer" in low:
            return DsmnError(f"{self.name} found no {self._target()} on the other end ({exc}): is it "
                             f"a {self.board.name}, powered, and its SWD jumpers on?")
        return DsmnError(f"{self.name}: {text}")

    def program(self, img, log):
        from pyocd.flash.file_programmer import FileProgrammer

        session = self.session()
        try:
            target = session.board.target
            t0 = time.monotonic()
            kwargs = {"base_address": self.board.flash.origin} if img.kind == "bin" else {}
            FileProgrammer(session, chip_erase="auto", smart_flash=True, no_reset=True).program(
                str(img.path), file_format=img.kind, **kwargs)
            log(f"wrote {img.size} bytes with {self.name} ({self._target()}) in {time.monotonic() - t0:.1f} s")
            n = compare_readback(img, lambda a, size: bytes(target.read_memory_block8(a, size)), self.name)
            how = f"read back {n} bytes in {len(img.segments)} segment(s)"
            log(f"verified: {how}")
            target.reset()
            log("reset (pyOCD target reset)")
            return how
        except DsmnError:
            raise
        except Exception as exc:
            raise self._explain(exc) from None
        finally:
            session.close()


# ----------------------------------------------------------------------------------------------
# OpenOCD


class OpenocdProbe:
    def __init__(self, board, timeout=120.0):
        self.board, self.timeout = board, timeout
        self.name = "OpenOCD"

    def command(self, img):
        b = self.board
        if not (b.openocd_interface and b.openocd_target):
            raise DsmnError(f"board {b.name} has no OpenOCD interface/target config in the board table; "
                            "use --probe gdb://HOST:PORT with your own OpenOCD")
        addr = f" 0x{b.flash.origin:08x}" if img.kind == "bin" else ""
        return [OPENOCD, "-f", b.openocd_interface, "-f", b.openocd_target,
                "-c", f"program {{{img.path}}}{addr} verify reset exit"]

    def program(self, img, log):
        cmd = self.command(img)
        if shutil.which(OPENOCD) is None:
            raise DsmnError(f"{OPENOCD} not found on PATH (apt-get install openocd, or run scripts/bootstrap.sh)")
        log("running " + " ".join(cmd))
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DsmnError(f"OpenOCD did not finish within {self.timeout:.0f} s") from None
        out = r.stdout + r.stderr
        if r.returncode == 0 and "Verified OK" in out:
            log("verified: OpenOCD verify (read back), reset")
            return "OpenOCD program ... verify: ** Verified OK **"
        raise self._explain(out)

    def _explain(self, out):
        low = out.lower()
        errors = [ln.strip() for ln in out.splitlines() if ln.startswith("Error")]
        last = errors[-1] if errors else (out.strip().splitlines() or ["no output"])[-1]
        iface = Path(self.board.openocd_interface).stem
        if "libusb_error_busy" in low or "resource busy" in low:
            return DsmnError(f"OpenOCD: the {iface} probe is busy ({last}); close the other debugger using it")
        if "open failed" in low or "no device found" in low or "unable to open" in low or "not found" in low \
                and "device" in low:
            return DsmnError(f"no debug probe found by OpenOCD ({iface}: {last}): connect {self.board.name}'s "
                             "ST-LINK by USB (`lsusb` should list it)")
        if "verify failed" in low or "checksum mismatch" in low:
            return DsmnError(f"verify failed on OpenOCD: {last}; the flash was not written correctly")
        if "idcode" in low or "target voltage" in low or "examination failed" in low:
            return DsmnError(f"OpenOCD found no {Path(self.board.openocd_target).stem} target ({last}): "
                             f"is it a {self.board.name}, powered?")
        return DsmnError(f"OpenOCD failed: {last}")


# ----------------------------------------------------------------------------------------------
# USB mass storage (ST-LINK V2-1 / V3, DAPLink)


class MountProbe:
    def __init__(self, mount, timeout=30.0):
        self.mount, self.timeout = Path(mount), timeout
        self.name = f"drive {mount}"

    def program(self, img, log):
        if not self.mount.is_dir():
            raise DsmnError(f"{self.mount}: not a mounted directory; mount the board's USB drive "
                            "(NODE_F446RE or similar) and pass mount:/media/$USER/NODE_...")
        lo, hi = img.span
        blob = bytearray(b"\xff" * (hi - lo))  # erased-flash value in the gaps
        for addr, data in img.segments:
            blob[addr - lo:addr - lo + len(data)] = data
        dest = self.mount / (img.path.stem + ".bin")
        try:
            with open(dest, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise DsmnError(f"cannot copy the image to {dest}: {exc.strerror}") from None
        log(f"copied {len(blob)} bytes to {dest}; waiting for the drive to program and come back")
        deadline = time.monotonic() + self.timeout
        # The probe programs the part, then re-enumerates its drive: the copied file is gone from
        # the listing it shows afterwards, and a FAIL.TXT is there if it rejected the image.
        while time.monotonic() < deadline:
            time.sleep(0.25)
            try:
                names = {p.name.upper() for p in self.mount.iterdir()}
            except OSError:
                continue  # the drive is away, re-enumerating
            if dest.name.upper() in names:
                continue  # not taken yet
            if "FAIL.TXT" in names:
                text = (self.mount / "FAIL.TXT").read_text(errors="replace").strip().replace("\n", " ")
                raise DsmnError(f"the board's drive rejected the image: FAIL.TXT says {text!r}")
            log("drive came back without the file and without FAIL.TXT: programmed")
            return "the probe's own check (no FAIL.TXT)"
        raise DsmnError(f"{dest} is still on {self.mount} after {self.timeout:.0f} s: the drive did not take the "
                        "image (is this the ST-LINK/DAPLink drive, not a plain folder?)")
