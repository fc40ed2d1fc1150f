"""The check of one outbound upload part: a JSON array of objects, read as a stream.

A part is read a block at a time and its elements decoded one by one, so the memory the check takes is
bounded by the block and the largest element, whatever the part's size (parsing a whole 16 MiB part at
once builds every record's objects together: hundreds of MiB). The check is strict, as the parts are
joined byte for byte afterwards: one array, elements separated by commas, nothing after it.
"""

from __future__ import annotations

import json
import os
from typing import IO, Any

import orjson

from feedd.pipeline.read import MAX_LINE, long_int

BLOCK = 256 * 1024  # characters read at a time
MAX_ELEMENT = MAX_LINE  # characters in one element: the run reading the joined parts allows no more
# A part up to this size is parsed whole with orjson first: three times faster than the stream for the
# usual parts (10,000 records, about 1.6 MiB: 8 ms against 26 ms, which set the pace of part ingest),
# with its memory bounded by the size (about 15x it at most). Anything orjson refuses (a syntax error,
# an integer past 64 bits) goes to the stream, which decides and words the problem.
WHOLE = 2 * 1024**2
_SPACE = " \t\r\n"
_NUMBER = "0123456789.eE+-"


class _NotJson(ValueError):
    pass


def _refuse(name: str) -> Any:
    raise _NotJson(f"{name} is not valid JSON")


# NaN and Infinity are refused (they are not JSON); an integer past Python's digit limit is decoded too.
_DECODER = json.JSONDecoder(parse_constant=_refuse)
_LONG = json.JSONDecoder(parse_constant=_refuse, parse_int=long_int)


class PartProblem(Exception):
    """What is wrong with a part, in words for the client."""


def check_part(path: str) -> tuple[int, str | None]:
    """(records, problem): a part must be a JSON array of objects; the problem names the first bad element."""
    if (whole := _whole(path)) is not None:
        return whole, None
    try:
        with open(path, encoding="utf-8", errors="strict", newline="") as f:
            return _Scan(f).objects(), None
    except PartProblem as exc:
        return 0, str(exc)
    except UnicodeDecodeError as exc:
        return 0, f"the part is not valid JSON: bytes that are not UTF-8 ({exc.reason})"


def _whole(path: str) -> int | None:
    """The number of objects when the part is small and orjson finds it plainly fine, else None."""
    if os.path.getsize(path) > WHOLE:
        return None
    with open(path, "rb") as f:
        data = f.read()
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if value.__class__ is not list or any(item.__class__ is not dict for item in value):
        return None
    if len(data) > MAX_ELEMENT and any(len(orjson.dumps(item)) > MAX_ELEMENT for item in value):
        return None  # the stream names the element that is too large
    return len(value)


class _Scan:
    def __init__(self, text: IO[str]) -> None:
        self._text = text
        self._buffer = ""
        self._pos = 0
        self._eof = False

    def _more(self) -> bool:
        """Read the next block onto what is left unread; False at the end of the part."""
        if self._eof:
            return False
        block = self._text.read(BLOCK)
        self._buffer = self._buffer[self._pos:] + block
        self._pos = 0
        self._eof = not block
        return bool(block)

    def _next(self) -> str:
        """The next character that is not white space (not consumed), or "" at the end."""
        while True:
            buffer, pos = self._buffer, self._pos
            while pos < len(buffer) and buffer[pos] in _SPACE:
                pos += 1
            self._pos = pos
            if pos < len(buffer):
                return buffer[pos]
            if not self._more():
                return ""

    def _value(self, index: int) -> Any:
        self._next()  # the decoder takes no white space before a value
        while True:
            try:
                try:
                    value, end = _DECODER.raw_decode(self._buffer, self._pos)
                except json.JSONDecodeError:
                    raise
                except _NotJson as exc:
                    raise PartProblem(f"the part is not valid JSON: element {index}: {exc}") from None
                except ValueError:  # an integer past the digit limit
                    value, end = _LONG.raw_decode(self._buffer, self._pos)
            except json.JSONDecodeError as exc:
                if len(self._buffer) - self._pos > MAX_ELEMENT:
                    raise PartProblem(f"element {index} is larger than {MAX_ELEMENT} characters") from None
                if self._more():
                    continue  # the element may go on in the next block
                raise PartProblem(f"the part is not valid JSON: {exc.msg} (element {index})") from None
            except RecursionError:
                raise PartProblem(f"element {index} is nested too deeply") from None
            if not self._eof and value.__class__ in (int, float) \
                    and not self._buffer[end:].lstrip(_NUMBER):
                self._more()  # a number cut at the block's end may go on (`12` of `12e5`): read it again whole
                continue
            self._pos = end
            return value

    def objects(self) -> int:
        first = self._next()
        if first != "[":
            raise PartProblem("the part must be a JSON array of objects" if first else
                              "the part is not valid JSON: it is empty")
        self._pos += 1
        count = 0
        if self._next() == "]":
            self._pos += 1
        else:
            while True:
                value = self._value(count)
                if value.__class__ is not dict:
                    kind = type(value).__name__.replace("NoneType", "null")
                    raise PartProblem(f"element {count} is not an object (a {kind})")
                count += 1
                after = self._next()
                self._pos += 1
                if after == "]":
                    break
                if after != ",":
                    raise PartProblem(f"the part is not valid JSON: expected ',' or ']' after element {count - 1}")
        if self._next():
            raise PartProblem("the part is not valid JSON: text after the array's closing ']'")
        return count
