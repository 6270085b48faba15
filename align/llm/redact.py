"""Scrubbing an API key from text a server sent back, in every form a server may echo it.

A server that reflects the key (an error page quoting the Authorization header, a body that
repeats the request) may encode it: JSON escapes (`\\/`, `\\u0041`, doubly escaped too), URL
encoding (`%2F`, `+` for a space), HTML character references (`&#47;`, `&#x2F;`, `&amp;`),
base64 (also inside a longer base64 run, as in `Basic base64(user:key)`), or only part of it.
`Redactor` replaces each of those with `***`.
"""

from __future__ import annotations

import base64
import bisect
import html
import re

MASK = "***"
MIN_PARTIAL = 8  # a run of this many consecutive key characters counts as a leak
# one escaped character: JSON \uXXXX or \/ (any number of backslashes: escaped again), %XX,
# an HTML character reference
_ESCAPE = re.compile(r"\\+u([0-9a-fA-F]{4})|\\+(/)|%([0-9a-fA-F]{2})|(&#?[xX]?[0-9a-zA-Z]{1,8};)")


def _base64_forms(secret: bytes) -> list[str]:
    """The base64 text that encodes `secret` wherever it starts in a longer encoded run: for
    each of the 3 alignments, the characters that depend on the secret's bytes alone, in the
    standard and URL-safe alphabets."""
    forms = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + secret).decode()
        start = (shift * 8 + 5) // 6  # first character with no pad bits mixed in
        end = ((shift + len(secret)) * 8) // 6  # last character fully from the secret
        core = encoded[start:end]
        if len(core) >= MIN_PARTIAL:
            forms += [core, core.replace("+", "-").replace("/", "_")]
    return forms


def _decoded(text: str) -> tuple[str, list[int], list[int]]:
    """`text` with every escaped character decoded, and the map back: segment starts in the
    decoded text and the matching offsets in `text` (an escape is one segment of length 1)."""
    out, dec_starts, src_starts = [], [0], [0]
    pos = dec = 0
    for m in _ESCAPE.finditer(text):
        hex4, slash, pct, ref = m.groups()
        if ref is not None:
            char = html.unescape(ref)
            if len(char) != 1:
                continue  # not a character reference html knows
        else:
            char = chr(int(hex4 or pct, 16)) if (hex4 or pct) else slash
        out.append(text[pos : m.start()])
        dec += m.start() - pos
        out.append(char)
        dec_starts += [dec, dec + 1]
        src_starts += [m.start(), m.end()]
        dec, pos = dec + 1, m.end()
    out.append(text[pos:])
    return "".join(out), dec_starts, src_starts


class Redactor:
    """Replaces `secret` (whole, or any run of >= MIN_PARTIAL of its characters) in its plain,
    escaped, URL-, HTML- and base64-encoded forms with MASK."""

    def __init__(self, secret: str):
        self.secret = secret
        width = min(MIN_PARTIAL, len(secret))
        windows = {secret[i : i + width] for i in range(len(secret) - width + 1)}
        if " " in secret:  # URL form encoding writes a space as '+'
            windows |= {w.replace(" ", "+") for w in windows}
        self._windows = sorted(windows)
        self._base64 = _base64_forms(secret.encode())

    def _spans(self, text: str, needles: list[str]) -> list[tuple[int, int]]:
        spans = []
        for needle in needles:
            at = text.find(needle)
            while at != -1:
                spans.append((at, at + len(needle)))
                at = text.find(needle, at + 1)
        return spans

    def __call__(self, text: str) -> str:
        if not text or not self.secret:
            return text
        spans = self._spans(text, self._windows + self._base64)
        if _ESCAPE.search(text):
            decoded, dec_starts, src_starts = _decoded(text)

            def source(i: int) -> int:  # decoded index -> index in `text`
                k = bisect.bisect_right(dec_starts, i) - 1
                return src_starts[k] + (i - dec_starts[k])

            for start, end in self._spans(decoded, self._windows):
                spans.append((source(start), source(end - 1) + 1))
            # the end of an escaped character is the end of its escape, not its first byte
            spans = [(s, _escape_end(text, e)) for s, e in spans]
        return _mask(text, spans)


def _escape_end(text: str, end: int) -> int:
    """Extend `end` over an escape that starts just before it."""
    m = _ESCAPE.match(text, end - 1) if end > 0 else None
    return m.end() if m else end


def _mask(text: str, spans: list[tuple[int, int]]) -> str:
    if not spans:
        return text
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, last = [], 0
    for start, end in merged:
        out += [text[last:start], MASK]
        last = end
    return "".join([*out, text[last:]])
