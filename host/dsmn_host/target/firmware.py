"""`dsmn-host build-firmware`: render the firmware project for a model and a board, build it
with CMake and arm-none-eabi-gcc, and report flash and RAM against the board's limits.

Decisions live here (which sources, how big the buffers, whether the model fits); the Jinja
templates in templates/firmware/ only lay them out. Generated files go to OUT/gen, never into
the source tree. A model whose estimated need exceeds the board is refused before compiling.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

from dsmn_host.errors import DsmnError

ROOT = Path(__file__).resolve().parents[3]
TEMPLATES = ROOT / "templates" / "firmware"
DEFAULT_MODEL = ROOT / "models" / "model1" / "model1_int8.tflite"
TOOLCHAIN_PREFIX = "arm-none-eabi-"
FIRMWARE_VERSION = "1.0.0"
RUNTIME_IDS = {"native": 0, "tflm": 1}
MAX_CHUNK = 512

# Pre-compile estimates (bytes), deliberately a little high and checked against measured maps in
# tests (test_firmware.py asserts estimate >= linked size): the app loop,
# protocol, startup and board code, and the fixed RAM of the app (ring, frame and response
# buffers); TFLM's interpreter and CMSIS-NN kernels are much larger.
APP_CODE_ESTIMATE = 12 * 1024
APP_RAM_FIXED = 2048 + 1100 + 1100 + 1100 + 256
TFLM_CODE_ESTIMATE = 160 * 1024
# codegen measures the kernels at -Os; the firmware builds them at -O2 (measured 1.55x for the
# Cortex-M4 build of model1's kernels), and dsmn_invoke() itself is ~35 bytes of code per step.
NATIVE_KERNEL_O2_FACTOR = 1.8
NATIVE_INVOKE_BYTES_PER_STEP = 48
# A band call statement of a tiled unit (in a loop or not: memory.json units[].call_statements)
# copies its parameter struct and sets the rows first.
NATIVE_INVOKE_BYTES_PER_BAND_CALL = 96
# dsmn_init() checks each kernel call's scratch (measured 32 bytes a check, model1 at -O2).
NATIVE_INIT_BYTES_PER_CHECK = 40
NATIVE_KERNEL_CODE_FALLBACK = 16 * 1024  # when codegen could not measure (no arm-none-eabi-gcc)
TFLM_ARENA_MARGIN_MIN = 4096  # the card measures the arena on a 64-bit host; 32-bit needs a little less


def _card_for(tflite):
    """The model card of `tflite` (measured in memory when none is written next to it)."""
    from dsmn_host.deploy import modelcard

    if not modelcard.card_paths(tflite)["json"].is_file():
        card = modelcard.build_card(tflite)
    else:
        card = modelcard.checked_card(tflite)
    if "labels" not in card:
        raise DsmnError(f"{tflite}: model card has no 'labels'")
    return card


def resolve_model(tflite=None, run_dir=None):
    if tflite and run_dir:
        raise DsmnError("give --tflite or --run, not both")
    if run_dir:
        found = sorted(Path(run_dir).glob("*int8*.tflite")) or sorted(Path(run_dir).glob("*.tflite"))
        if not found:
            raise DsmnError(f"{run_dir}: no .tflite in the run directory (run dsmn-host convert first)")
        return found[0]
    path = Path(tflite) if tflite else DEFAULT_MODEL
    if not path.is_file():
        what = "the shipped demo model" if not tflite else "model"
        raise DsmnError(f"{path}: {what} not found; pass --tflite MODEL.tflite")
    return path


def _prod(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


def other_ram_bytes(card, board):
    """RAM besides the arena: app buffers, the model's input and output, and the stack unless
    the board's CCM holds it."""
    in_bytes = _prod(card["input"]["shape"])
    out_bytes = _prod(card["output"]["shape"])
    return APP_RAM_FIXED + 8 + in_bytes + out_bytes + (0 if board.ccm else board.stack_bytes)


def estimate(card, board, runtime, native_report=None):
    """(flash, arena, other_ram) the build will need, before compiling anything."""
    other_ram = other_ram_bytes(card, board)
    if runtime == "native":
        breakdown = dict(native_report["flash_breakdown"])
        kernel = breakdown.pop("kernel_code", None) or NATIVE_KERNEL_CODE_FALLBACK
        flash = (sum(v for v in breakdown.values() if v) + int(kernel * NATIVE_KERNEL_O2_FACTOR)
                 + NATIVE_INVOKE_BYTES_PER_STEP * len(native_report["ops"]) + APP_CODE_ESTIMATE
                 + NATIVE_INIT_BYTES_PER_CHECK * native_report.get("scratch_checks", 0)
                 + NATIVE_INVOKE_BYTES_PER_BAND_CALL * sum(u["call_statements"]
                                                           for u in native_report.get("units", []) if u["tiled"]))
        arena = native_report["arena_bytes"]
    else:
        if not card.get("tflm_arena_bytes"):
            raise DsmnError(f"model card has no tflm_arena_bytes ({card.get('tflm_error')}); "
                            "TFLM cannot run this model")
        flash = card["model_bytes"] + TFLM_CODE_ESTIMATE + APP_CODE_ESTIMATE
        arena = tflm_arena_bytes(card)
    return flash, arena, other_ram


def tflm_arena_bytes(card):
    """The card's arena plus ~3 % (at least 4 KiB) for allocator alignment and bookkeeping."""
    arena = int(card["tflm_arena_bytes"])
    return (arena + max(TFLM_ARENA_MARGIN_MIN, arena // 32) + 15) // 16 * 16


def default_ram_budget(board, other_ram):
    """The activation arena a board leaves: its arena RAM, or its RAM minus the app's buffers
    and (when it has no CCM for it) the stack."""
    if board.arena_ram is not None:
        return board.arena_ram.length
    return board.ram.length - other_ram


def check_fits(flash, arena, other_ram, board, model):
    problems = []
    if flash > board.flash.length:
        problems.append(f"flash: needs {flash} bytes, {board.name} has {board.flash.length}")
    if board.arena_ram is None:
        if arena + other_ram > board.ram.length:
            problems.append(f"RAM: needs {arena + other_ram} bytes ({arena} activations/arena + {other_ram} "
                            f"buffers and stack), {board.name} has {board.ram.length}")
    else:
        if arena > board.arena_ram.length:
            problems.append(f"RAM: needs {arena} bytes of activation arena, {board.name} has "
                            f"{board.arena_ram.length} in its arena RAM")
        if other_ram > board.ram.length:
            problems.append(f"RAM: needs {other_ram} bytes of buffers and stack, {board.name} has {board.ram.length}")
    if problems:
        raise DsmnError(f"{model} does not fit board {board.name}: " + "; ".join(problems))


def _env():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), trim_blocks=True,
                              lstrip_blocks=True, undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True)


def _dims4(shape):
    return [int(d) for d in shape] + [0] * (4 - len(shape))


def render(gen, card, model_path, board, runtime, tflm_dir=None, native_sources=(), native_includes=(),
           tflm_arena=None):
    env = _env()
    gen.mkdir(parents=True, exist_ok=True)
    ctx = dict(
        board=board, runtime=runtime, runtime_id=RUNTIME_IDS[runtime], card=card,
        model_path=str(model_path), firmware_version=FIRMWARE_VERSION, max_chunk=MAX_CHUNK,
        sha256_bytes=[f"0x{b:02x}" for b in bytes.fromhex(card["sha256"])],
        input_dims=_dims4(card["input"]["shape"]), output_dims=_dims4(card["output"]["shape"]),
        input_bytes=_prod(card["input"]["shape"]), output_bytes=_prod(card["output"]["shape"]),
        labels=list(card["labels"]),
        preprocessing={k: v for k, v in (card.get("preprocessing") or {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)},
        toolchain_prefix=TOOLCHAIN_PREFIX,
        runtime_sources=[str(s) for s in native_sources],
        runtime_include_dirs=[str(d) for d in native_includes],
        tflm_dir=str(tflm_dir or ""),
    )
    files = {"board_config.h": "board_config.h.j2", "memory.ld": "memory.ld.j2",
             "dsmn_config.h": "dsmn_config.h.j2", "arm-none-eabi.cmake": "arm-none-eabi.cmake.j2",
             "project.cmake": "project.cmake.j2"}
    if runtime == "tflm":
        ctx.update(tflm_context(model_path, card))
        if tflm_arena is not None:
            ctx["tflm_arena_bytes"] = int(tflm_arena) // 16 * 16
        files.update({"model_data.cc": "model_data.cc.j2", "model_data.h": "model_data.h.j2",
                      "op_resolver.h": "op_resolver.h.j2"})
    for out, tmpl in files.items():
        (gen / out).write_text(env.get_template(tmpl).render(**ctx))
    return ctx


# TFLite builtin op name -> MicroMutableOpResolver method (micro_mutable_op_resolver.h).
TFLM_RESOLVER_METHODS = {
    "ADD": "AddAdd", "AVERAGE_POOL_2D": "AddAveragePool2D", "BATCH_MATMUL": "AddBatchMatMul",
    "CONCATENATION": "AddConcatenation", "CONV_2D": "AddConv2D", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "DEQUANTIZE": "AddDequantize", "EXPAND_DIMS": "AddExpandDims", "FULLY_CONNECTED": "AddFullyConnected",
    "HARD_SWISH": "AddHardSwish", "LOGISTIC": "AddLogistic", "MAX_POOL_2D": "AddMaxPool2D", "MEAN": "AddMean",
    "MUL": "AddMul", "PACK": "AddPack", "PAD": "AddPad", "PADV2": "AddPadV2", "QUANTIZE": "AddQuantize",
    "RELU": "AddRelu", "RELU6": "AddRelu6", "RESHAPE": "AddReshape", "SHAPE": "AddShape",
    "SOFTMAX": "AddSoftmax", "SPLIT": "AddSplit", "SPLIT_V": "AddSplitV", "SQUEEZE": "AddSqueeze",
    "STRIDED_SLICE": "AddStridedSlice", "SUB": "AddSub", "SUM": "AddSum", "TANH": "AddTanh",
    "TRANSPOSE": "AddTranspose", "UNPACK": "AddUnpack",
}


def tflm_context(model_path, card):
    """What the TFLM templates need: the model bytes, the op list, the arena size."""
    ops = []
    for name, count in sorted(card["ops"].items()):
        if name not in TFLM_RESOLVER_METHODS:
            raise DsmnError(f"{model_path}: op {name} has no MicroMutableOpResolver registration known to "
                            f"dsmn-host (known: {', '.join(sorted(TFLM_RESOLVER_METHODS))})")
        ops.append({"name": name, "method": TFLM_RESOLVER_METHODS[name], "count": count})
    if not card.get("tflm_arena_bytes"):
        raise DsmnError(f"{model_path}: model card has no tflm_arena_bytes ({card.get('tflm_error')})")
    return {"ops": ops, "model_name": Path(model_path).name, "model_bytes": Path(model_path).read_bytes(),
            "tflm_arena_bytes": tflm_arena_bytes(card)}


def _run(cmd, cwd=None, what="command"):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
        raise DsmnError(f"{what} failed ({' '.join(map(str, cmd[:3]))} ...):\n{tail}")
    return proc


def require_toolchain():
    missing = [t for t in (TOOLCHAIN_PREFIX + "gcc", "cmake") if shutil.which(t) is None]
    if missing:
        raise DsmnError(f"missing toolchain: {', '.join(missing)} not on PATH (run scripts/bootstrap.sh)")


# -- memory report from the linker map -------------------------------------------------------

_OUT_SECTION = re.compile(r"^(\.[\w.]+)\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)")
_IN_LINE = re.compile(r"^\s+(\S+)?\s*0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)\s+(\S.*)$")


def _category(obj):
    if "dsmn_model.c" in obj or "model_data.cc" in obj:
        return "model"
    if "/firmware/runtime/" in obj or "libtflm" in obj or "/tflm" in obj:
        return "runtime"
    return "code"


def parse_map(map_path):
    """Bytes per (output section, category) from a GNU ld map file."""
    text = Path(map_path).read_text(errors="replace")
    start = text.find("Linker script and memory map")
    lines = text[start:].splitlines() if start >= 0 else text.splitlines()
    sections = {}
    current = None
    pending_name = None
    for line in lines:
        m = _OUT_SECTION.match(line)
        if m:
            current = m.group(1)
            sections.setdefault(current, {"size": int(m.group(3), 16), "by": {}})
            sections[current]["size"] = int(m.group(3), 16)
            continue
        if current is None:
            continue
        if re.match(r"^\s+\.[\w.]+\s*$", line) or re.match(r"^\s\*?\(?[\w.]+\s*$", line):
            pending_name = line.strip()
            continue
        m = _IN_LINE.match(line)
        if m and not m.group(4).startswith(("0x", "*")) and "=" not in m.group(4):
            size = int(m.group(3), 16)
            obj = m.group(4).strip()
            if size and not obj.startswith("."):
                cat = _category(obj)
                by = sections[current]["by"]
                by[cat] = by.get(cat, 0) + size
            pending_name = None
    return sections


def memory_report(map_path, board, runtime, model_path, card, estimate_flash, estimate_ram):
    secs = parse_map(map_path)

    def size(name):
        return secs.get(name, {}).get("size", 0)

    def by(name, cat):
        return secs.get(name, {}).get("by", {}).get(cat, 0)

    text = size(".text") + size(".ARM.exidx")
    flash = {
        "code": by(".text", "code") + size(".ARM.exidx") + size(".data"),
        "model": by(".text", "model"),
        "runtime": by(".text", "runtime"),
    }
    flash["code"] += text - size(".ARM.exidx") - sum(by(".text", c) for c in ("code", "model", "runtime"))
    ram = {
        ("activations" if runtime == "native" else "arena"): size(".arena"),
        "stack": size(".stack"),
        "buffers": size(".bss") + size(".data"),
    }
    flash_bytes = text + size(".data")
    ram_bytes = size(".data") + size(".bss") + size(".stack") + size(".arena")
    ram_limit = (board.ram.length + (board.arena_ram.length if board.arena_ram else 0)
                 + (board.ccm.length if board.ccm else 0))
    return {
        "board": board.name,
        "runtime": runtime,
        "model": str(model_path),
        "model_sha256": card["sha256"],
        "flash_bytes": flash_bytes,
        "ram_bytes": ram_bytes,
        "flash": flash,
        "ram": ram,
        "board_flash_bytes": board.flash.length,
        "board_ram_bytes": ram_limit,
        "board_ram_regions": {"ram": board.ram.length,
                              **({"ccm": board.ccm.length} if board.ccm else {}),
                              **({"arena_ram": board.arena_ram.length} if board.arena_ram else {})},
        "flash_used_pct": round(100.0 * flash_bytes / board.flash.length, 2),
        "ram_used_pct": round(100.0 * ram_bytes / ram_limit, 2),
        "estimate": {"flash_bytes": estimate_flash, "ram_bytes": estimate_ram},
    }


def format_report(r):
    f, m = r["flash"], r["ram"]
    lines = [
        f"board {r['board']} runtime {r['runtime']} model {Path(r['model']).name} ({r['model_sha256'][:12]})",
        f"flash {r['flash_bytes']:>9} / {r['board_flash_bytes']} B ({r['flash_used_pct']}%): "
        + ", ".join(f"{k} {v}" for k, v in f.items()),
        f"RAM   {r['ram_bytes']:>9} / {r['board_ram_bytes']} B ({r['ram_used_pct']}%): "
        + ", ".join(f"{k} {v}" for k, v in m.items()),
    ]
    t = r.get("tflm")
    if t:
        lines.append(f"TFLM  CMSIS-NN paths {t['cmsis_nn']['paths']}; library of {t['sources']} sources for "
                     f"{len(t['ops'])} ops ({'cached' if t['cached'] else 'compiled'}: {t['library']})")
    return "\n".join(lines)


def build_firmware(tflite=None, run_dir=None, board="qemu-an386", runtime="native", tflm_dir=None,
                   out=None, jobs=2, quiet=False, ram_budget=None, plan=None, front_end=None,
                   tflm_cache=None, tflm_arena=None):
    """Render, configure and build; returns the memory report (also written to OUT/memory.json).

    Native runtime: the compiler picks the fastest plan whose arena fits `ram_budget` (default:
    what the board leaves after buffers and stack), or the end `plan` names (fast / min).
    `front_end`: None builds the on-device front end in when the model and board allow it.
    For TFLM the library is compiled once per core and op set into `tflm_cache` (default
    build/tflm-lib) and reused. `tflm_arena` overrides the arena size (tests use it to make
    AllocateTensors fail on purpose)."""
    from dsmn_host.boards import get_board

    b = get_board(board)
    if runtime not in RUNTIME_IDS:
        raise DsmnError(f"unknown runtime {runtime!r}; choose native or tflm")
    model = resolve_model(tflite, run_dir)
    card = _card_for(model)
    out = Path(out or Path("build") / f"firmware-{b.name}-{runtime}").resolve()
    gen = out / "gen"
    gen.mkdir(parents=True, exist_ok=True)

    # The on-device front end (audio mode): on by default for models that take its 44x256x2
    # input; front_end=False builds features-only firmware. It borrows the native runtime's
    # arena (the two never run together), which grows to its scratch when the plan's is
    # smaller (the tiled plans of the 128 KiB parts): that costs the difference, not a second
    # buffer of the scratch's whole size. Decided before the plan is emitted, so codegen runs
    # once except on the rare path where the board then has no room for it.
    from dsmn_host.target import frontend

    auto = front_end is None
    if front_end and not frontend.fits_model(card):
        raise DsmnError(f"{model}: input {card['input']['shape']} is not the front end's {frontend.INPUT_SHAPE}")
    if auto:
        front_end = frontend.fits_model(card)
    fe_skipped = None
    if auto and front_end and runtime != "native":
        # TFLM lends no arena: the front end would add its whole scratch as RAM of its own,
        # a path no test runs on the board; features-mode TFLM firmware unless asked for.
        front_end, fe_skipped = False, "left out: the TFLM runtime lends it no arena (features mode only)"
    if ram_budget is None and plan is None and runtime == "native":
        ram_budget = default_ram_budget(b, other_ram_bytes(card, b))
    # auto mode does not grow the arena past what was asked for (--plan min, a budget)
    may_grow = not auto or (plan != "min" and (ram_budget is None or frontend.SCRATCH_BYTES <= ram_budget))
    grow = front_end and runtime == "native" and may_grow

    native_report, sources, includes = None, (), ()
    if runtime == "native":
        from dsmn_host.deploy import codegen

        where = (f"{b.name} has {b.arena_ram.length if b.arena_ram else b.ram.length} B of "
                 f"{'arena ' if b.arena_ram else ''}RAM")

        def generate(min_arena):
            return codegen.generate(model, gen, ram_budget=ram_budget, plan=plan, board_ram=where,
                                    min_arena_bytes=min_arena)

        native_report = generate(frontend.SCRATCH_BYTES if grow else 0)
        sources, includes = codegen.runtime_sources(), codegen.runtime_include_dirs()
    est_flash, est_arena, est_other = estimate(card, b, runtime, native_report)
    if front_end and runtime == "native" and not grow and est_arena < frontend.SCRATCH_BYTES:
        asked = "--plan min" if plan == "min" else f"the RAM budget of {ram_budget} B"
        front_end, fe_skipped = False, (f"left out: its scratch ({frontend.SCRATCH_BYTES} B, lent the arena) "
                                        f"would grow the {est_arena} B arena beyond {asked}")
    if auto and front_end:
        try:
            check_fits(est_flash + frontend.FLASH_ESTIMATE, est_arena,
                       est_other + frontend.own_scratch_bytes(runtime), b, model)
        except DsmnError as exc:
            front_end, fe_skipped = False, f"left out: with it, {exc}"
            if native_report and native_report["arena_grown_for"]:
                native_report = generate(0)
                est_flash, est_arena, est_other = estimate(card, b, runtime, native_report)
    if front_end:
        est_flash += frontend.FLASH_ESTIMATE
        est_other += frontend.own_scratch_bytes(runtime)
    check_fits(est_flash, est_arena, est_other, b, model)
    est_ram = est_arena + est_other
    if runtime == "tflm":
        if not tflm_dir:
            render(gen, card, model, b, runtime, None)
            raise DsmnError(f"--runtime tflm needs --tflm-dir DIR, a TFLM tree made by create_tflm_tree.py "
                            f"with the cmsis_nn kernels (the project is rendered in {gen})")
        from dsmn_host.target import tflm

        tflm_dir = tflm.check_tree(tflm_dir)

    ctx = render(gen, card, model, b, runtime, tflm_dir, sources, includes, tflm_arena=tflm_arena)
    fe_info = frontend.render_build(gen, runtime) if front_end else frontend.remove_build(gen)
    require_toolchain()
    tflm_info = None
    if runtime == "tflm":
        cache = Path(tflm_cache or Path("build") / "tflm-lib")
        lib, tflm_info = tflm.build_library(tflm_dir, [op["name"] for op in ctx["ops"]], b.cpu_flags,
                                            gen / "arm-none-eabi.cmake", cache, jobs=jobs)
        tflm_info.update(library=str(lib), ops=[op["name"] for op in ctx["ops"]],
                         arena_bytes=ctx["tflm_arena_bytes"],
                         cmsis_nn=tflm.cmsis_nn_paths(tflm_dir, b.cpu_flags, TOOLCHAIN_PREFIX))
        (gen / "tflm_lib.cmake").write_text(f'set(DSMN_TFLM_LIB "{lib}")\n')
    build = out
    _run(["cmake", "-S", str(ROOT), "-B", str(build), "-G", "Unix Makefiles",
          f"-DCMAKE_TOOLCHAIN_FILE={gen / 'arm-none-eabi.cmake'}", f"-DDSMN_GEN_DIR={gen}"],
         what="CMake configure")
    _run(["cmake", "--build", str(build), "-j", str(jobs)], what="firmware build")
    elf = build / "dsmn_firmware.elf"
    report = memory_report(build / "dsmn_firmware.map", b, runtime, model, card, est_flash, est_ram)
    report["elf"] = str(elf)
    report["bin"] = str(build / "dsmn_firmware.bin")
    report["hex"] = str(build / "dsmn_firmware.hex")
    if native_report is not None:
        report["native"] = {k: native_report[k] for k in ("peak_activation_bytes", "arena_bytes", "flash_bytes", "plan",
                                                          "ram_budget_bytes", "estimated_instructions")}
    if tflm_info is not None:
        report["tflm"] = tflm_info
    report["front_end"] = fe_info or ({"skipped": fe_skipped} if fe_skipped else None)
    if fe_skipped and not quiet:
        print(f"front end {fe_skipped}")
    (out / "memory.json").write_text(json.dumps(report, indent=2) + "\n")
    if not quiet:
        print(format_report(report))
        print(f"wrote {elf} (+ .bin, .hex) and {out / 'memory.json'}")
    return report


def _cmd(args):
    build_firmware(tflite=args.tflite, run_dir=args.run, board=args.board, runtime=args.runtime,
                   tflm_dir=args.tflm_dir, out=args.out, jobs=args.jobs, ram_budget=args.ram_budget,
                   plan=args.plan, front_end=False if args.no_front_end else None,
                   tflm_cache=args.tflm_cache)


def register(subparsers):
    from dsmn_host.clihelp import style
    from dsmn_host.boards import BOARDS, DEFAULT_BOARD

    p = subparsers.add_parser(
        "build-firmware",
        help="render and build the firmware (ELF, BIN, HEX) for a model and a board; print flash/RAM use",
        description="Render the firmware project for an int8 .tflite model and a board into OUT/gen, "
                    "build it with CMake and arm-none-eabi-gcc, and report flash and RAM from the "
                    "linker map against the board's limits (also OUT/memory.json). A model that cannot "
                    "fit is refused before compiling. Boards: " + ", ".join(BOARDS) + ".",
        **style("dsmn-host build-firmware --board qemu-an386", "dsmn-host build-firmware --tflite m_int8.tflite --board nucleo-h743zi2 --runtime tflm --tflm-dir ../shared/tflm"),
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--tflite", metavar="M", help="int8 .tflite model (default: the shipped models/model1)")
    src.add_argument("--run", metavar="RUN_DIR", help="take the converted .tflite of a training run")
    p.add_argument("--board", default=DEFAULT_BOARD, help=f"target board (default {DEFAULT_BOARD})")
    p.add_argument("--runtime", default="native", choices=sorted(RUNTIME_IDS),
                   help="native: the ahead-of-time generated graph; tflm: TFLite-Micro (default native)")
    p.add_argument("--tflm-dir", metavar="DIR",
                   help="TFLM source tree from create_tflm_tree.py (with cmsis_nn kernels), for --runtime tflm")
    p.add_argument("--tflm-cache", metavar="DIR",
                   help="where the TFLM library is compiled once per core and op set and reused "
                        "(default build/tflm-lib)")
    p.add_argument("--out", metavar="DIR", help="build directory (default build/firmware-BOARD-RUNTIME)")
    p.add_argument("--jobs", type=int, default=2, help="parallel compile jobs (default 2)")
    from dsmn_host.deploy.codegen import ram_budget_arg
    p.add_argument("--ram-budget", type=ram_budget_arg, metavar="BYTES",
                   help="native runtime: largest activation arena (e.g. 90000 or 88K); default: the "
                        "board's RAM minus buffers and stack. The fastest plan that fits is built")
    p.add_argument("--plan", choices=("fast", "min"),
                   help="native runtime: force the untiled (fast) or smallest-arena (min) plan")
    p.add_argument("--no-front-end", action="store_true",
                   help="leave out the on-device log-mel front end (features mode only; default: built in "
                        "for models with the 44x256x2 input when it fits the board, else left out with a note)")
    p.set_defaults(func=_cmd)
