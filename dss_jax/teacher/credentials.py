"""The HTTP teacher's credentials: where they go in a request, and how they stay out of output.

A credential is the API key (sent as `Authorization: Bearer KEY`), a user name and
password in `--base_url` (sent as `Authorization: Basic ...`) or a query parameter whose
name says it is one (`?api_key=`, `?key=`, `?token=`, Azure's `api-key`, a SAS `sig`),
kept on every request. None is ever shown: the URL is displayed as `http://***@HOST/v1?key=***`
and anything a server sends back is redacted in every form it may echo a credential in
(as sent, JSON-escaped, URL-encoded, as a Python repr, base64 for Basic auth), before it
is cut to a snippet.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import re
import urllib.parse
from typing import Iterable, Optional

# A query parameter whose value is a credential, by its name.
_CREDENTIAL_PARAM = re.compile(r"key|token|secret|pass|auth|sig|credential", re.IGNORECASE)
MASK = "***"


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A base_url taken apart: where requests go, what they carry, how it is shown."""

    https: bool
    host: str
    port: Optional[int]
    path: str  # before /chat/completions, without a trailing slash
    query: str  # sent with every request, as given
    origin_shown: str  # scheme://HOST:PORT, `***@` before the host if the URL has credentials
    query_shown: str  # the query with credential values masked
    basic_auth: Optional[str] = dataclasses.field(default=None, repr=False)  # "user:password", decoded
    secrets: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    query_credentials: bool = False  # a query parameter named like a credential

    def shown(self, path: Optional[str] = None) -> str:
        """The URL (with `path` instead of the base path) as it may be printed: credentials masked."""
        path = self.path if path is None else path
        return f"{self.origin_shown}{path}{'?' + self.query_shown if self.query_shown else ''}"

    @property
    def display(self) -> str:
        return self.shown()

    @property
    def loopback(self) -> bool:
        """This machine only: `localhost` or a loopback address (127.0.0.0/8, ::1)."""
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.split("%")[0]).is_loopback
        except ValueError:
            return False


def _masked_query(query: str) -> tuple[str, list[str]]:
    """The query with credential values masked, and those values (as given and decoded)."""
    pieces, secrets = [], []
    for piece in query.split("&"):
        name, eq, value = piece.partition("=")
        if eq and value and _CREDENTIAL_PARAM.search(urllib.parse.unquote_plus(name)):
            secrets += [value, urllib.parse.unquote_plus(value)]
            piece = f"{name}={MASK}"
        pieces.append(piece)
    return "&".join(pieces), secrets


def parse_base_url(base_url: str) -> Endpoint:
    """Raises ValueError (never quoting a credential) for a URL no request could be sent to."""
    if any(not "!" <= c <= "~" for c in base_url):
        # urllib drops tabs and line breaks silently and http.client refuses the rest
        # quoting the whole URL, credentials included.
        raise ValueError(
            "--base_url holds a space, a control character or a non-ASCII character: percent-encode it "
            "(a space is %20), and give a non-ASCII host name in its xn-- form"
        )
    if "#" in base_url:
        # A '#' ends the URL: the rest of a password that holds one would be read as a fragment.
        raise ValueError("--base_url holds a '#': percent-encode it (%23) if it is part of a password or key")
    parts = urllib.parse.urlsplit(base_url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    query, query_secrets = _masked_query(parts.query) if parts.query else ("", [])
    origin = f"{parts.scheme}://{MASK + '@' if at else ''}{hostport}"
    display = f"{origin}{parts.path}{'?' + query if query else ''}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        if "://" in base_url:
            shown = f", got {display!r}"
        else:  # not parsed as a URL: shown only if nothing in it can be a credential
            shown = "" if "@" in base_url or "?" in base_url else f", got {base_url!r}"
        raise ValueError(f"base_url must look like http://HOST:PORT/v1 or https://HOST/v1{shown}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"base_url {display!r}: the port must be a number from 0 to 65535") from None
    basic_auth, secrets = None, list(query_secrets)
    if at:
        user, colon, password = userinfo.partition(":")
        basic_auth = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
        # Without a password the user name is the credential (https://TOKEN@host).
        secret = password if colon else user
        secrets += [secret, urllib.parse.unquote(secret), base64.b64encode(basic_auth.encode("utf-8")).decode()]
    return Endpoint(
        https=parts.scheme == "https",
        host=parts.hostname,
        port=port,
        path=parts.path.rstrip("/"),
        query=parts.query,
        origin_shown=origin,
        query_shown=query,
        basic_auth=basic_auth,
        secrets=tuple(s for s in secrets if s),
        query_credentials=bool(query_secrets),
    )


def header_problem(value: str) -> Optional[str]:
    """What keeps `value` out of an HTTP header (as http.client would say, quoting it), or None."""
    for i, c in enumerate(value):
        where = "at its end" if value[i:].strip("\r\n\t ") == "" else f"at character {i + 1}"
        if c in "\r\n":
            return f"a {'carriage return' if c == chr(13) else 'line break'} {where}"
        if ord(c) < 0x20 or ord(c) == 0x7F:
            return f"a control character (U+{ord(c):04X}) {where}"
        if ord(c) > 0xFF:
            return f"a character outside latin-1 (U+{ord(c):04X}) {where}"
    return None


def _echo_forms(secret: str) -> set[str]:
    """The forms a server or a library may write `secret` in."""
    forms = {secret}
    for ensure_ascii in (True, False):
        escaped = json.dumps(secret, ensure_ascii=ensure_ascii)[1:-1]
        forms |= {escaped, escaped.replace("/", "\\/")}  # some encoders escape '/'
    for encoding in ("utf-8", "latin-1"):
        try:
            raw = secret.encode(encoding)
        except UnicodeEncodeError:
            continue
        forms |= {urllib.parse.quote(raw, safe=""), urllib.parse.quote(raw), urllib.parse.quote_plus(raw)}
        forms.add(repr(raw)[2:-1])  # b'...' in a Python error
    forms.add(repr(secret)[1:-1])
    return forms


class Redactor:
    """Replaces every form of every secret with `***`, in text and in raw bytes."""

    def __init__(self, secrets: Iterable[str]):
        forms = set()
        for secret in secrets:
            if secret:
                forms |= _echo_forms(secret)
        # Longest first, so a form that contains another is replaced whole.
        texts = sorted(forms, key=len, reverse=True)
        raws = sorted({t.encode(e) for t in texts for e in ("utf-8", "latin-1") if _encodes(t, e)}, key=len)[::-1]
        # Case-blind: percent-encoding and \u escapes come in either case.
        self._text = re.compile("|".join(map(re.escape, texts)), re.IGNORECASE) if texts else None
        self._bytes = re.compile(b"|".join(map(re.escape, raws)), re.IGNORECASE) if raws else None

    def text(self, text: str) -> str:
        return self._text.sub(MASK, text) if self._text else text

    def bytes(self, raw: bytes) -> bytes:
        return self._bytes.sub(MASK.encode(), raw) if self._bytes else raw


def _encodes(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
        return True
    except UnicodeEncodeError:
        return False
