"""Scrubbing an API key from text a server sent back, in every form a server may echo it.

A server that reflects the key (an error page quoting the Authorization header, a body that
repeats the request) may encode it: JSON escapes (`\\/`, `\\u0041`, doubly escaped too), URL
encoding (`%2F`), HTML character references, base64 (also inside a longer base64 run, as in
`Basic base64(user:key)`), or only part of it. `Redactor` replaces each of those with `***`.
"""

from __future__ import annotations

import base64
import re

MASK = "***"
MIN_PARTIAL = 8  # a run of this many consecutive key characters counts as a leak


def _char_forms(ch: str) -> str:
    """A regex for one key character in any of its echoed spellings."""
    code = ord(ch)
    forms = [
        re.escape(ch),
        rf"\\+u{code:04x}",  # JSON \uXXXX, maybe escaped again
        rf"%{code:02x}",  # URL encoding
        rf"&#0*{code};",
        rf"&#x0*{code:x};",  # HTML character references
    ]
    if ch == "/":
        forms.append(r"\\+/")  # JSON's optional escape of '/'
    return "(?:" + "|".join(forms) + ")"


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


class Redactor:
    """Replaces `secret` (whole, or any run of >= MIN_PARTIAL of its characters) in its plain,
    escaped, URL-, HTML- and base64-encoded forms with MASK. Case-insensitive for the escapes'
    hex digits, exact for the key's own characters."""

    def __init__(self, secret: str):
        self.secret = secret
        width = min(MIN_PARTIAL, len(secret))
        windows = {secret[i : i + width] for i in range(len(secret) - width + 1)}
        char = {ch: _char_forms(ch) for ch in set(secret)}
        partial = "|".join("".join(char[c] for c in w) for w in sorted(windows))
        encoded = "|".join(re.escape(f) for f in _base64_forms(secret.encode()))
        # a zero-width lookahead finds every start, so overlapping windows all count
        self._start = re.compile(f"(?=({partial}{'|' + encoded if encoded else ''}))")
        self._hex = re.compile(r"(\\+u|%|&#x)([0-9a-fA-F]+)")

    def __call__(self, text: str) -> str:
        if not text or not self.secret:
            return text
        spans: list[list[int]] = []
        for m in self._start.finditer(_lower_hex(text)):
            start, end = m.start(1), m.end(1)
            if spans and start <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([start, end])
        if not spans:
            return text
        out, last = [], 0
        for start, end in spans:
            out += [text[last:start], MASK]
            last = end
        return "".join([*out, text[last:]])


def _lower_hex(text: str) -> str:
    """`text` with the hex digits of its escapes in lower case (same length, same positions),
    so `%2F` and `\\u002F` match the patterns' lower-case forms."""
    return re.sub(
        r"(\\+u[0-9a-fA-F]{4}|%[0-9a-fA-F]{2}|&#[xX][0-9a-fA-F]+;)",
        lambda m: m.group(0).lower(),
        text,
    )
