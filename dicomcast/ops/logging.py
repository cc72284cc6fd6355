"""Log set-up: JSON lines off a terminal, readable lines on one, and no PHI by default.

dicomcast logs UIDs, counts and codes as structured fields; messages carry no patient
data. What may (a server's own words about a failure) travels in the `detail` field, which
is dropped unless `log_phi` is on; values quoted inside messages are masked as well.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def redact(text: str) -> str:
    return _QUOTED.sub("'***'", text)


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


def setup_logging(level: str = "INFO", fmt: str = "auto", phi: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JsonFormatter(phi) if use_json else TextFormatter(phi))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "alembic", "botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # "Skipped: maximum number of running instances" only means a long cycle; not news.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
