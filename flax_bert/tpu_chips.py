"""TPU chips and slice names: what each chip has (Google's datasheets) and the topology a
name a user types (`v5e-16`, `v5litepod-16`, `v4-8`, `v5e:4x4`) stands for.

Names: for v4 and v5p the number after "-" counts TensorCores (2 a chip: v4-8 is 4 chips,
2x2x1); for v5e (v5litepod) and v6e it counts chips (v5e-16 is 16 chips, 4x4). The
`gen:AxB[xC]` form gives the chips' grid itself. flax_bert/aot.py compiles for these.
"""

from __future__ import annotations

import dataclasses
import math
import re

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One chip's published figures. `devices_per_chip`: the jax devices a chip is in the
    compile-only topology (libtpu's v4 topology has one per TensorCore; every other chip is
    one device)."""

    generation: str  # libtpu's topology prefix: v4, v5e, v5p, v6e
    hbm_bytes: float
    peak_bf16_flops: float  # per second
    hbm_bytes_per_s: float
    ici_bytes_per_s: float  # bidirectional, all of the chip's ICI links together
    dcn_bytes_per_s: float  # the host's data-center network share of one chip
    dims: int  # 2: a 2D torus (AxB), 3: a 3D torus (AxBxC)
    cores_in_name: bool  # "-N" counts TensorCores (2 a chip), not chips
    devices_per_chip: int
    source: str

    def per_device(self, value: float) -> float:
        return value / self.devices_per_chip


# Sources (Google Cloud TPU documentation, docs.cloud.google.com/tpu/docs/<generation>):
# - v4: "Peak compute per chip 275 teraflops (bf16)", "HBM2 capacity and bandwidth 32 GiB,
#   1200 GBps". ICI is not on that page: 6 links a chip at 400 Gbps (50 GB/s) each way
#   (Jouppi et al., "TPU v4: An Optically Reconfigurable Supercomputer", ISCA 2023), so
#   600 GB/s bidirectional. DCN per chip: not published; taken as v5p's 50 Gbps.
# - v5e: "Peak compute per chip (bf16) 197 TFLOPs", "HBM2 capacity and bandwidth 16 GB,
#   819 GBps", "Bidirectional inter-chip interconnect (ICI) bandwidth (per chip) 400 GBps",
#   "Per-host NIC configuration 2 x 100 Gbps NIC", 8 chips a host: 25 Gbps a chip.
# - v5p: "Peak compute per chip (BF16) 459 TFLOPs", "HBM capacity per chip (GiB) 95",
#   "HBM bandwidth per chip (GBps) 2765", "Bidirectional ICI bandwidth per chip (GBps)
#   1200", "Data center network (DCN) bandwidth per chip (Gbps) 50".
# - v6e: "Peak compute per chip (bf16) 918 TFLOPs", "HBM capacity per chip 32 GB", "HBM
#   bandwidth per chip 1638 GBps", "Bidirectional ICI bandwidth (per chip) 800 GBps"; DCN
#   per chip taken as v5e's 25 Gbps (not found on the page).
# Google writes "GB" for HBM capacity where it means GiB (the chips report 16 / 32 GiB);
# capacities here are GiB. libtpu keeps a few hundred MB of each for itself, so a program
# within ~3% of the capacity may still not load.
CHIPS = {
    "v4": Chip("v4", 32 * GiB, 275e12, 1200e9, 600e9, 50e9 / 8, 3, True, 2,
               "cloud.google.com/tpu/docs/v4; ICI: Jouppi et al. ISCA 2023"),
    "v5e": Chip("v5e", 16 * GiB, 197e12, 819e9, 400e9, 25e9 / 8, 2, False, 1,
                "cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("v5p", 95 * GiB, 459e12, 2765e9, 1200e9, 50e9 / 8, 3, True, 1,
                "cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("v6e", 32 * GiB, 918e12, 1638e9, 800e9, 25e9 / 8, 2, False, 1,
                "cloud.google.com/tpu/docs/v6e"),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6litepod": "v6e", "trillium": "v6e",
           "v4": "v4", "v5e": "v5e", "v5p": "v5p", "v6e": "v6e"}

# Slice shapes Google offers, by chips (docs pages' configuration tables).
GRIDS_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
            128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
            2048: (8, 16, 16), 4096: (16, 16, 16)}
GRIDS_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
            128: (8, 16), 256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A slice: its chip and its chips' grid."""

    chip: Chip
    grid: tuple[int, ...]

    @property
    def chips(self) -> int:
        return math.prod(self.grid)

    @property
    def topology_name(self) -> str:
        """The name jax.experimental.topologies.get_topology_desc takes: "v5e:4x4"."""
        return f"{self.chip.generation}:{'x'.join(map(str, self.grid))}"

    @property
    def accelerator_type(self) -> str:
        """Google Cloud's name of the slice: v5litepod-16, v4-8, v6e-8, v5p-32."""
        gen = {"v5e": "v5litepod"}.get(self.chip.generation, self.chip.generation)
        return f"{gen}-{self.chips * (2 if self.chip.cores_in_name else 1)}"


def parse(name: str) -> Topology:
    """The slice of a user's name: `v4-8`, `v5p-32`, `v5e-16`, `v5litepod-16`, `v6e-8`, or
    `v5e:4x4` / `v4:2x2x1`; a ValueError, one line, for any other."""
    text = name.strip().lower()
    known = ", ".join(sorted(CHIPS))
    if match := re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+){1,2})", text):
        gen, grid = match[1], tuple(int(n) for n in match[2].split("x"))
        chip = _chip(gen, name, known)
        if len(grid) == 3 and chip.dims == 2 and grid[2] == 1:
            grid = grid[:2]
        if len(grid) == 2 and chip.dims == 3:
            grid = grid + (1,)
        if len(grid) != chip.dims or min(grid) < 1:
            raise ValueError(f"--topology {name}: a {chip.generation} slice is a "
                             f"{'AxBxC' if chip.dims == 3 else 'AxB'} grid of chips")
        return Topology(chip, grid)
    if match := re.fullmatch(r"([a-z0-9]+)-(\d+)", text):
        chip, count = _chip(match[1], name, known), int(match[2])
        per = 2 if chip.cores_in_name else 1
        grids = GRIDS_3D if chip.dims == 3 else GRIDS_2D
        if count % per or count // per not in grids:
            sizes = ", ".join(f"{chip.generation}-{n * per}" for n in grids)
            raise ValueError(f"--topology {name}: not a {chip.generation} slice; one of "
                             f"{sizes}" + (" (the number counts TensorCores, 2 a chip)"
                                           if per == 2 else " (the number counts chips)"))
        return Topology(chip, grids[count // per])
    raise ValueError(f"--topology {name}: use a slice name such as v5e-16, v5litepod-16, "
                     f"v4-8, v5p-32, v6e-8, or a chip grid such as v5e:4x4 ({known})")


def _chip(gen: str, name: str, known: str) -> Chip:
    if gen not in ALIASES:
        raise ValueError(f"--topology {name}: unknown TPU {gen!r}; one of {known} "
                         f"(or v5litepod)")
    return CHIPS[ALIASES[gen]]


def quiet_libtpu(accelerator_type: str = "v5litepod-1") -> None:
    """Where libtpu is installed but no TPU is attached (a CPU or GPU host, or one that
    compiles for a TPU ahead of time), keeps libtpu's start-up quiet: it would look up
    TPU_ACCELERATOR_TYPE and TPU_WORKER_HOSTNAMES on a Cloud TPU VM's metadata server and,
    without them, print "WARNING: could not determine TPU accelerator type" and an
    INVALID_ARGUMENT error about the worker hostnames (harmless, but alarming). Sets only
    values not set already; does nothing where a TPU is attached. Before jax's first use."""
    import os

    from jax._src import hardware_utils

    if hardware_utils.num_available_tpu_chips_and_device_id()[0]:
        return
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # No TPU, so no lock on one: without this, libtpu refuses to start ("multi-process
    # lockfile") while another process on the machine has it loaded.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
