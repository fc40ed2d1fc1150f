"""Failpoints for crash tests: `FEEDD_FAILPOINT=<name>` makes the daemon SIGKILL itself at that point;
`FEEDD_FAILPOINT=<name>:raise` makes that step fail instead, as a full disk would (OSError ENOSPC).

Only honoured when the variable is set (read once, at import); `hit()` is then a string compare, and
nothing at all otherwise. The names, in the order a file meets them:

- `intake.after_spool`     the input is in the spool, its run not yet recorded
- `intake.after_commit`    the run is recorded, nobody has been told
- `runner.mid_processing`  a worker is processing the run
- `runner.before_record`   outputs are written, the outcome not yet recorded
- `delivery.mid`           a webhook delivery has sent its first batch, not the rest
- `delivery.before_done`   a delivery reached its destination, not yet marked delivered
- `tus.mid_patch`          a tus PATCH has written part of its body, the offset is not recorded
- `upload.mid_complete`    a multipart complete has joined the parts, not yet taken them in

Some points raise `FailpointError` instead of killing (`RAISES`): they test that the loop around them
carries on after an unexpected error.

- `watcher.scan`           a reconciliation scan of the spaces fails
- `runner.claim`           the runner's claim loop, before it looks for queued runs
- `due.delivery`           the dispatcher's loop, before it looks for due deliveries
- `due.events`             the event sender's loop, before it looks for due events

`TIMES`, when set (in-process tests), is how many more times the armed point fires; it is disarmed after.
"""

from __future__ import annotations

import errno
import os
import signal
import sys

NAMES = ("intake.after_spool", "intake.after_commit", "runner.mid_processing", "runner.before_record",
         "delivery.mid", "delivery.before_done", "tus.mid_patch", "upload.mid_complete")
RAISES = ("watcher.scan", "runner.claim", "due.delivery", "due.events")
_SETTING = os.environ.get("FEEDD_FAILPOINT", "").partition(":")
ARMED: str | None = _SETTING[0] or None
RAISE = _SETTING[2] == "raise"
TIMES: int | None = None


class FailpointError(RuntimeError):
    pass


def hit(name: str) -> None:
    global ARMED, TIMES
    if ARMED is not None and name == ARMED:
        if TIMES is not None:
            TIMES -= 1
            if TIMES <= 0:
                ARMED, TIMES = None, None
        if name in RAISES:
            raise FailpointError(f"failpoint {name}")
        if RAISE:
            raise OSError(errno.ENOSPC, f"failpoint {name}: {os.strerror(errno.ENOSPC)}")
        sys.stderr.write(f"feedd: failpoint {name}: SIGKILL\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
