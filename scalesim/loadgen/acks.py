"""The writes the app acknowledged, recorded on the client side: what an integrity audit checks.

A load run rents and returns books. Every write the app *acknowledged* is a promise: a rent
answered ``201`` with a rental id means that rental exists, a return answered ``200`` means that
rental is closed, whatever happens to the servers afterwards. The load generator writes each
acknowledgement as it arrives, one JSON object per line, into a file of its own per Locust
process (``<acks_dir>/<pid>.jsonl``; in distributed mode each worker writes its own file, the
master none)::

    {"op": "rent", "rental": 1234, "user": 17, "book": 88, "at": 1733000000.125}
    {"op": "return", "rental": 1234, "at": 1733000001.5}

A request whose answer never arrived (a time-out, a reset connection, a balancer's 502 after the
app died) is *not* recorded: the write may or may not have happened, so the audit can demand
neither its presence nor its absence. Only answers that promise a committed write are.

:class:`AckLog` buffers the lines and writes them in batches (the locustfile flushes about once a
second and at exit), so the cost per request is an append to a list, not a system call.
:func:`read_acks` reads a folder of such files back for :mod:`scalesim.audit`; a torn last line
(a process killed in mid-write) is counted, not fatal.

This module is pure Python and never imports Locust.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["AckLog", "AckSet", "read_acks"]


class AckLog:
    """Acknowledged writes of one process, buffered and appended to ``<folder>/<name>.jsonl``.

    With *folder* ``None`` nothing is kept. The file is created on the first flush that has
    something to write, so a process that made no write leaves no file.
    """

    def __init__(self, *, folder: str | Path | None, name: str) -> None:
        self.path = Path(folder) / f"{name}.jsonl" if folder else None
        self._pending: list[str] = []
        self.written = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _add(self, record: dict[str, object]) -> None:
        if self.path is not None:
            record["at"] = round(time.time(), 3)
            self._pending.append(json.dumps(record, separators=(",", ":")))

    def rented(self, *, rental_id: int, user_id: int, book_id: int) -> None:
        """A rent answered 201 with this rental id."""
        self._add({"op": "rent", "rental": int(rental_id), "user": int(user_id), "book": int(book_id)})

    def returned(self, *, rental_id: int) -> None:
        """A return of this rental answered 200."""
        self._add({"op": "return", "rental": int(rental_id)})

    def flush(self) -> None:
        """Append every pending line with one write (O_APPEND: whole batches never interleave)."""
        if self.path is None or not self._pending:
            return
        count = len(self._pending)
        payload = ("\n".join(self._pending) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            while payload:
                payload = payload[os.write(fd, payload):]
        finally:
            os.close(fd)
        # cleared only once written: after a failed write the next flush tries again (a line
        # written twice is harmless, the audit reads them into sets)
        del self._pending[:count]
        self.written += count


@dataclass
class AckSet:
    """Every acknowledgement of a folder: rental id -> (user id, book id), and returned rental ids."""

    rentals: dict[int, tuple[int, int]] = field(default_factory=dict)
    returns: set[int] = field(default_factory=set)
    files: int = 0
    unreadable_lines: int = 0


def read_acks(folder: str | Path) -> AckSet:
    """Read every ``*.jsonl`` file of *folder* (missing folder: nothing was acknowledged)."""
    acks = AckSet()
    root = Path(folder)
    if not root.is_dir():
        return acks
    for path in sorted(root.glob("*.jsonl")):
        acks.files += 1
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    op, rental = record["op"], int(record["rental"])
                    if op == "rent":
                        acks.rentals[rental] = (int(record["user"]), int(record["book"]))
                    elif op == "return":
                        acks.returns.add(rental)
                    else:
                        acks.unreadable_lines += 1
                except (ValueError, KeyError, TypeError):
                    acks.unreadable_lines += 1
    return acks
