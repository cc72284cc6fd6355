"""URLs that leave the process (FHIR resources, logs, status, error messages) must not
carry credentials."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

# `scheme://user:password@` (any scheme, any number of slashes, however malformed the
# rest) and secret-looking query parameters.
_USERINFO = re.compile(r"(?P<pre>[A-Za-z][A-Za-z0-9+.-]*:/*)(?P<user>[^\s:/@]*):[^\s@/]*@")
_SECRET_PARAM = re.compile(
    r"(?i)(?P<key>[?&;](?:password|passwd|pwd|secret|token|access_token|sslpassword)=)"
    r"[^&;#\s]*"
)


def mask_url(text: str) -> str:
    """Hide passwords in a URL, or in any text quoting one (`postgresql://u:secret@h/db` ->
    `u:***@h`; `?password=secret` -> `?password=***`). Works on malformed URLs too: it
    never parses the port, so a typo cannot turn masking into a crash."""
    text = _USERINFO.sub(lambda m: f"{m['pre']}{m['user']}:***@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['key']}***", text)


def without_userinfo(url: str) -> str:
    """The URL with any `user:password@` taken out (`http://u:pw@h:8042/x` -> `http://h:8042/x`)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def has_userinfo(url: str) -> bool:
    parts = urlsplit(url)
    return parts.username is not None or parts.password is not None


_ABSOLUTE_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]+$")


def is_absolute_uri(text: str) -> bool:
    """`scheme:rest` with no whitespace: what FHIR accepts as an identifier system."""
    return bool(_ABSOLUTE_URI.match(text))


_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")


def system_problem(value: str) -> str | None:
    """Why `value` cannot be a FHIR identifier system (None: it can). A bare OID or a
    name such as `MRN` would be written as `Identifier.system`, which must be a URI."""
    if is_absolute_uri(value):
        return None
    if _OID.fullmatch(value):
        return f"{value!r} is an OID, not a URI: write urn:oid:{value}"
    return (
        f"{value!r} must be an absolute URI such as urn:oid:1.2.3.4 or "
        "https://hospital.example.org/mrn"
    )


def http_url_problem(value: str) -> str | None:
    """Why `value` is not an absolute http(s) URL (None: it is one)."""
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.hostname:
        return None
    return f"{mask_url(value)!r} is not an absolute http(s) URL (such as https://host/path)"
