"""torchrun's environment: is this process one rank of several, and which (no torch needed, so
that the command line can ask before it imports torch).

torchrun starts one process per rank and tells each where it stands in its environment:

    RANK                      this process's rank, 0 .. WORLD_SIZE - 1 (rank 0 leads)
    WORLD_SIZE                how many processes the job has, on every machine together
    LOCAL_RANK                its rank on this machine
    MASTER_ADDR, MASTER_PORT  where the job's rendezvous store listens

``torchrun_launch()`` reads them, and returns None when they are absent: a plain ``refbp
report`` starts no process group (refbp.distributed.launch joins one when it is not None).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["TORCHRUN_VARIABLES", "Launch", "leads", "torchrun_launch"]

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""What torchrun sets in every rank's environment and a process group needs (``env://``). All
four present: this process is a rank; none: a plain process; some: a broken launch, refused."""


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a job torchrun started.

    Attributes:
        rank: 0 .. world_size - 1; rank 0 leads (gathers and writes).
        world_size: the number of processes in the job.
        local_rank: its rank on this machine.
        run_id: torchrun's id of the run and attempt, so that keys in a shared store never meet
            those of an earlier attempt.
    """

    rank: int
    world_size: int
    local_rank: int = 0
    run_id: str = ""

    @property
    def leader(self) -> bool:
        """True on rank 0, which gathers the results and writes the files."""
        return self.rank == 0


def torchrun_launch(environ: Mapping[str, str] | None = None) -> Launch | None:
    """This process's place in a torchrun job, or None when torchrun did not start it.

    A ValueError names a variable that is set wrongly, or missing beside the others."""
    env = os.environ if environ is None else environ
    present = [name for name in TORCHRUN_VARIABLES if env.get(name)]
    if not present:
        return None
    missing = [name for name in TORCHRUN_VARIABLES if name not in present]
    if missing:
        raise ValueError(
            f"the environment sets {', '.join(present)} but not {', '.join(missing)}: start the ranks with "
            f"torchrun (torchrun --standalone --nproc-per-node=2 -m refbp ...), which sets all of "
            f"{', '.join(TORCHRUN_VARIABLES)}"
        )
    world_size = _integer(env, "WORLD_SIZE", minimum=1)
    rank = _integer(env, "RANK", minimum=0)
    if rank >= world_size:
        raise ValueError(f"RANK={rank} but WORLD_SIZE={world_size}; expected 0 <= RANK < WORLD_SIZE")
    local_rank = _integer(env, "LOCAL_RANK", minimum=0) if env.get("LOCAL_RANK") else 0
    run_id = f"{env.get('TORCHELASTIC_RUN_ID', 'run')}.{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return Launch(rank, world_size, local_rank, run_id)


def _integer(env: Mapping[str, str], name: str, *, minimum: int) -> int:
    text = env[name]
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an integer; expected an int >= {minimum}") from None
    if value < minimum:
        raise ValueError(f"{name}={value} is out of range; expected an int >= {minimum}")
    return value


def leads(environ: Mapping[str, str] | None = None) -> bool:
    """True unless this process is a rank other than 0 of a torchrun job: the process that
    speaks for the job when every rank meets the same error (a broken environment counts as
    leading, so that its error is said)."""
    try:
        launch = torchrun_launch(environ)
    except ValueError:
        return True
    return launch is None or launch.leader
