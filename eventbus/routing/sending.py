"""What a sender is: it takes a batch of object files for one destination
and says, per object, whether the destination took it."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from eventbus.routing.objects import ObjectFile


@dataclass
class Outcome:
    """Per object (by object key): None when delivered, else why not.
    Objects not named were not tried (the worker was stopped). `down` says
    why the destination could not be reached at all, or stopped answering:
    then the worker waits out its backoff before trying anything else."""

    results: dict[str, str | None] = field(default_factory=dict)
    down: str = ""


class Sender(Protocol):
    def send(self, objects: Sequence[ObjectFile], stop: threading.Event) -> Outcome: ...
