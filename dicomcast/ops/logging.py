"""Log set-up: JSON lines off a terminal, readable lines on one, and no PHI by default.

dicomcast logs UIDs, counts and codes as structured fields; messages carry no patient
data. What may (a server's own words about a failure) travels in the `detail` field, which
is dropped unless `log_phi` is on; values quoted inside messages are masked as well. The
libraries' loggers pass the same rule (`PhiFilter`).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
# What libraries print values in: DICOM dumps (`(0010,0010) PN [Doe^John]`), `key=value`.
_BRACKETED = re.compile(r"\[[^\]]*\]|=\s*\S+")
OWN = "dicomcast"
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def redact(text: str) -> str:
    return _QUOTED.sub("'***'", text)


def _library(record: logging.LogRecord) -> bool:
    return record.name != OWN and not record.name.startswith(OWN + ".")


class PhiFilter(logging.Filter):
    """The one PHI rule, for every logger in the process, the libraries' too.

    dicomcast's own records carry no patient data by construction (UIDs, counts, codes).
    Libraries make no such promise: pynetdicom dumps every C-FIND identifier at INFO and
    DEBUG, pydicom quotes the values it cannot parse, and SQLAlchemy echoes parameters.
    Without LOG_PHI, a library's records below WARNING are dropped, and the rest have
    every quoted or bracketed value masked."""

    def __init__(self, phi: bool) -> None:
        super().__init__()
        self.phi = phi

    def filter(self, record: logging.LogRecord) -> bool:
        if self.phi or not _library(record):
            return True
        if record.levelno < logging.WARNING:
            return False
        message = _BRACKETED.sub("[***]", redact(record.getMessage()))
        record.msg, record.args = message, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(type(record.exc_info[1]).__name__)
            record.exc_info = None
        return True


PHI_FIELDS = frozenset({"detail"})  # fields that may hold patient data: LOG_PHI=true only


def _fields(record: logging.LogRecord, phi: bool) -> dict[str, Any]:
    return {
        k: v
        for k, v in record.__dict__.items()
        if k not in _STANDARD and v is not None and (phi or k not in PHI_FIELDS)
    }


class JsonFormatter(logging.Formatter):
    def __init__(self, phi: bool) -> None:
        super().__init__()
        self.phi = phi

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": message if self.phi else redact(message),
            **_fields(record, self.phi),
        }
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line["exc"] = trace if self.phi else redact(trace)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, phi: bool) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")
        self.phi = phi

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if not self.phi:
            text = redact(text)
        extra = " ".join(f"{k}={v}" for k, v in _fields(record, self.phi).items())
        return f"{text}  {extra}" if extra else text


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to `sys.stderr` as it is at each record: a live progress bar (`run --once`
    on a terminal) puts a proxy there that prints lines above the bar, where a handler
    holding the stream it was given would write through the bar."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup_logging(level: str = "INFO", fmt: str = "auto", phi: bool = False) -> None:
    handler = _Stderr()
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JsonFormatter(phi) if use_json else TextFormatter(phi))
    handler.addFilter(PhiFilter(phi))
    logging.captureWarnings(True)  # pydicom's warnings quote values: through the same rule
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries' own chatter only when asked for with both DEBUG and LOG_PHI (it may dump
    # datasets and parameters); otherwise their warnings and errors.
    library_level = logging.DEBUG if phi and level.upper() == "DEBUG" else logging.WARNING
    for noisy in ("httpx", "httpcore", "alembic", "botocore", "boto3", "urllib3", "pynetdicom"):
        logging.getLogger(noisy).setLevel(library_level)
    # "Skipped: maximum number of running instances" only means a long cycle; not news.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
