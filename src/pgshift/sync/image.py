"""Decode the keys and row images the capture triggers write.

An image is SQLite ``quote()`` literals joined by ``,``: ``NULL``, an integer
(``-12``), a real (always with ``.``, ``e`` or ``Inf``: ``1.5``, ``1.0e+300``),
a text (``'it''s'``) or a blob (``X'00FF'``). Decoding gives back the value
and its storage class (integer vs real matters to the conversions), the same
Python objects sqlite3 returns, so :func:`pgshift.copy.convert.convert`
renders them exactly as migrate did.

Limits of ``quote()`` (documented in docs/sync.md): a text is cut at a NUL
byte, and before SQLite 3.43-ish a few reals beyond ~1e100 or below ~1e-300
lose their last digit; ``pgshift verify`` reports either.
"""

from __future__ import annotations

import re

from pgshift.copy.convert import InvalidText

_TOKEN = re.compile(
    rb"NULL|X'(?P<blob>[0-9A-Fa-f]*)'|'(?P<text>(?:[^']|'')*)'"
    rb"|(?P<num>[-+]?(?:Inf|[0-9.]+(?:[eE][-+]?[0-9]+)?))",
    re.DOTALL,
)


class ImageError(ValueError):
    """An image that is not a list of quote() literals (a corrupted change log)."""


def decode(image: bytes | str | None) -> list[object]:
    """The values of one image, in column order."""
    if image is None:
        return []
    data = image.encode("utf-8", "surrogateescape") if isinstance(image, str) else image
    out: list[object] = []
    pos, end = 0, len(data)
    while True:
        m = _TOKEN.match(data, pos)
        if not m:
            raise ImageError(f"bad image literal at byte {pos}: {data[pos:pos + 40]!r}")
        if m.group("blob") is not None:
            out.append(bytes.fromhex(m.group("blob").decode()))
        elif m.group("text") is not None:
            raw = m.group("text").replace(b"''", b"'")
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(InvalidText(raw))
        elif m.group("num") is not None:
            out.append(_number(m.group("num").decode()))
        else:
            out.append(None)
        pos = m.end()
        if pos == end:
            return out
        if data[pos:pos + 1] != b",":
            raise ImageError(f"expected ',' at byte {pos}: {data[pos:pos + 40]!r}")
        pos += 1


def _number(text: str) -> int | float:
    if "Inf" in text:
        return float("-inf") if text.startswith("-") else float("inf")
    if any(ch in text for ch in ".eE"):
        return float(text)
    return int(text)
