"""`accelerate launch` arguments for the multi-process tests (2 CPU processes, no GPU).

Each launch gets a port the OS just handed out instead of accelerate's fixed default (29500), so a test never
meets a rendezvous store left over from an earlier launch, or another job on the machine, on the same port.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on localhost that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accelerate_launch(num_processes: int = 2) -> list[str]:
    """``python`` arguments that start ``accelerate launch`` with ``num_processes`` CPU processes."""
    return ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
            "--dynamo_backend", "no"]
