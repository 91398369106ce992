"""The boards we build firmware for, as data: core, FPU, clock, memory, UART, QEMU machine.

Board differences live here (esptool-style), not in #ifdefs: `firmware.py` turns a `Board` into
compiler flags, `board_config.h` and the linker's MEMORY block; `emulate.py` turns it into a
QEMU command line. Adding a board of a known family is one entry in BOARDS.
"""

from dataclasses import dataclass, field, replace

from dsmn_host.errors import DsmnError

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class Region:
    origin: int
    length: int


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    core: str                 # -mcpu
    fpu: str                  # -mfpu ("auto" lets -mcpu decide, e.g. M55 with MVE)
    family: str               # firmware/boards/<family>/
    clock_hz: int             # the clock the firmware configures (and reports in HELLO)
    flash: Region
    ram: Region
    uart: str                 # what the host opens, for the user
    uart_rx_irq: int
    num_irq: int              # vectors after the 16 system ones
    baud: int = 115200
    counter: str = "dwt"      # "dwt" (real silicon) or "systick" (QEMU: DWT reads 0 there)
    uart_base: int = 0        # CMSDK UART base (mps2 family)
    stack_bytes: int = 8 * KiB
    qemu_machine: str = ""    # set for boards that run in qemu-system-arm
    qemu_serial_index: int = 0  # which -serial of the machine our UART is
    qemu_cpu_hz: int = 0      # the emulated core clock SysTick counts (for instructions)
    defines: dict = field(default_factory=dict)  # family-specific numbers for board_config.h
    arena_ram: Region = None  # a separate RAM for the activation arena, when one region is too small
    # How `dsmn-host flash` reaches the part (the flash origin and size are `flash` above).
    pyocd_target: str = ""       # pyOCD target type (`pyocd list --targets`)
    pyocd_pack: str = ""         # part to `pyocd pack install` when the target is not built into pyOCD
    openocd_interface: str = ""  # OpenOCD interface config, e.g. interface/stlink.cfg
    openocd_target: str = ""     # OpenOCD target config, e.g. target/stm32f4x.cfg
    ccm: Region = None        # core-coupled RAM (no DMA): the linker puts the stack there

    @property
    def cpu_flags(self):
        flags = [f"-mcpu={self.core}", "-mthumb"]
        if self.fpu:
            flags += [f"-mfpu={self.fpu}", "-mfloat-abi=hard"]
        return flags


def _stm32f4(name, description, clock_hz, flash_kib, ram_kib, *, pll_n, pll_q, overdrive,
             qemu=False, ccm_kib=0):
    # PLL from the 16 MHz HSI: /8 -> 2 MHz VCO input, xN, /2 -> clock_hz. APB1 <= 45 MHz,
    # APB2 <= 90 MHz; 5 wait states cover both 168 and 180 MHz at 3.3 V (RM0090/RM0390 3.5.1).
    assert 16_000_000 // 8 * pll_n // 2 == clock_hz
    return Board(
        name=name, description=description, core="cortex-m4", fpu="fpv4-sp-d16", family="stm32f4",
        clock_hz=clock_hz, flash=Region(0x08000000, flash_kib * KiB),
        ram=Region(0x20000000, ram_kib * KiB), uart="USART2 (PA2/PA3, ST-LINK VCP: /dev/ttyACM0)",
        uart_rx_irq=38, num_irq=82 if not qemu else 82, baud=115200 if qemu else 921600,
        counter="systick" if qemu else "dwt",
        qemu_machine="netduinoplus2" if qemu else "", qemu_serial_index=1 if qemu else 0,
        qemu_cpu_hz=168_000_000 if qemu else 0,
        defines=dict(BOARD_PLL_M=8, BOARD_PLL_N=pll_n, BOARD_PLL_P=2, BOARD_PLL_Q=pll_q,
                     BOARD_APB1_DIV=4, BOARD_APB2_DIV=2, BOARD_FLASH_WS=5,
                     BOARD_OVERDRIVE=int(overdrive)),
        ccm=Region(0x10000000, ccm_kib * KiB) if ccm_kib else None,
    )


BOARDS = {b.name: b for b in [
    Board(name="qemu-an386", description="QEMU mps2-an386 (Cortex-M4F, 25 MHz FPGA image)",
          core="cortex-m4", fpu="fpv4-sp-d16", family="mps2", clock_hz=25_000_000,
          flash=Region(0x00000000, 4 * MiB), ram=Region(0x20000000, 4 * MiB),
          uart="CMSDK UART0", uart_base=0x40004000, uart_rx_irq=0, num_irq=32, counter="systick",
          qemu_machine="mps2-an386", qemu_cpu_hz=25_000_000),
    Board(name="qemu-an500", description="QEMU mps2-an500 (Cortex-M7, 25 MHz FPGA image)",
          core="cortex-m7", fpu="fpv5-d16", family="mps2", clock_hz=25_000_000,
          flash=Region(0x00000000, 4 * MiB), ram=Region(0x20000000, 4 * MiB),
          uart="CMSDK UART0", uart_base=0x40004000, uart_rx_irq=0, num_irq=32, counter="systick",
          qemu_machine="mps2-an500", qemu_cpu_hz=25_000_000),
    # AN547 (SSE-300): code in the 512 KiB ITCM at 0, data in the 512 KiB DTCM; the core boots
    # Secure, so the UART is used through its Secure alias 0x59303000 (NS: 0x49303000).
    Board(name="qemu-an547", description="QEMU mps3-an547 (Cortex-M55 with MVE, 32 MHz FPGA image)",
          core="cortex-m55", fpu="auto", family="mps2", clock_hz=32_000_000,
          flash=Region(0x00000000, 512 * KiB), ram=Region(0x20000000, 512 * KiB),
          uart="CMSDK UART0", uart_base=0x59303000, uart_rx_irq=33, num_irq=96, counter="systick",
          qemu_machine="mps3-an547", qemu_cpu_hz=32_000_000),
    _stm32f4("qemu-stm32f405", "QEMU netduinoplus2 (STM32F405, Cortex-M4F); same USART/RCC code as the Nucleos",
             168_000_000, 1024, 128, pll_n=168, pll_q=7, overdrive=False, qemu=True),
    # (The real STM32F405 has 64 KiB of CCM at 0x10000000; QEMU's netduinoplus2 does not map
    # it - measured over its GDB stub - so the QEMU board has none.)
    _stm32f4("nucleo-f446re", "ST NUCLEO-F446RE (STM32F446RE, Cortex-M4F @ 180 MHz)",
             180_000_000, 512, 128, pll_n=180, pll_q=8, overdrive=True),
    _stm32f4("nucleo-f429zi", "ST NUCLEO-F429ZI (STM32F429ZI, Cortex-M4F @ 180 MHz)",
             180_000_000, 2048, 192, pll_n=180, pll_q=8, overdrive=True, ccm_kib=64),
    # H743: the activation arena gets the whole AXI SRAM (512 KiB at 0x24000000), the one region
    # that holds TFLM's ~450-490 KiB arena for model1; everything else lives in the 128 KiB DTCM.
    Board(name="nucleo-h743zi2", description="ST NUCLEO-H743ZI2 (STM32H743ZI, Cortex-M7 @ 64 MHz HSI)",
          core="cortex-m7", fpu="fpv5-d16", family="stm32h7", clock_hz=64_000_000,
          flash=Region(0x08000000, 2 * MiB), ram=Region(0x20000000, 128 * KiB),
          arena_ram=Region(0x24000000, 512 * KiB),
          uart="USART3 (PD8/PD9, ST-LINK VCP: /dev/ttyACM0)", uart_rx_irq=39, num_irq=150,
          baud=921600, counter="dwt"),
]}

# The Nucleos' probe settings (dsmn-host flash). F429 and H743 are built into pyOCD 0.46; the
# F446 comes from ST's CMSIS pack (Keil.STM32F4xx_DFP), installed once by `pyocd pack install`.
for _name, _probe in {
    "nucleo-f446re": dict(pyocd_target="stm32f446retx", pyocd_pack="stm32f446re"),
    "nucleo-f429zi": dict(pyocd_target="stm32f429xi"),
    "nucleo-h743zi2": dict(pyocd_target="stm32h743xx", openocd_target="target/stm32h7x.cfg"),
}.items():
    _probe = {"openocd_interface": "interface/stlink.cfg", "openocd_target": "target/stm32f4x.cfg", **_probe}
    BOARDS[_name] = replace(BOARDS[_name], **_probe)

DEFAULT_BOARD = "qemu-an386"


def get_board(name):
    try:
        return BOARDS[name]
    except KeyError:
        raise DsmnError(f"unknown board {name!r}; known boards: {', '.join(BOARDS)}") from None
