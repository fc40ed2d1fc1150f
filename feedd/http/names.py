"""File names a client chooses over the side API (a tus `filename`, a multipart upload's `filename`) that
end up as names of files in a partner's space: checked when the upload is created, by the same rule the
SFTP jail applies to names a partner uses, and counted in bytes with every suffix feedd adds. A name that
would pass here but not there would make an outbox file the partner can list but neither read nor delete.
"""

from __future__ import annotations

from asyncssh import SFTPInvalidFilename

from feedd.http.api import ApiError
from feedd.sftp.jail import MAX_NAME_BYTES, check_name

# What an inbound run writes beside its input's name in the partner's outbox (reports: true)
REPORT_SUFFIXES = (".report.json", ".rejects.csv")


def check_space_name(name: str, what: str, code: str, suffixes: tuple[str, ...] = ()) -> None:
    """400 (`code`, the message naming `what` and the problem) unless `name`, and `name` with each of
    `suffixes`, is a name the SFTP jail accepts: one path component, no control, DEL, bidi-override or
    invalid characters, at most MAX_NAME_BYTES bytes of UTF-8."""
    if name in ("", ".", ".."):
        raise ApiError(400, code, f"{what}: {name!r} is not a file name")
    for sep in ("/", "\\"):
        if sep in name:
            raise ApiError(400, code, f"{what}: a file name may not contain {sep!r}")
    longest = max((name + s for s in suffixes), key=lambda n: len(n.encode("utf-8", "surrogateescape")),
                  default=name)
    size = len(longest.encode("utf-8", "surrogateescape"))
    if size > MAX_NAME_BYTES:
        added = f" with the suffix {longest[len(name):]!r} feedd adds" if longest != name else ""
        raise ApiError(400, code, f"{what}: the name is {size} bytes{added}; at most {MAX_NAME_BYTES} bytes "
                                  "of UTF-8")
    try:
        check_name(name)
    except SFTPInvalidFilename as exc:
        bad = next((c for c in name if _refused(c)), None)
        which = f" (U+{ord(bad):04X})" if bad is not None else ""
        raise ApiError(400, code, f"{what}: {exc.reason}{which}") from None


def _refused(char: str) -> bool:
    try:
        check_name(char)
    except SFTPInvalidFilename:
        return True
    return False
