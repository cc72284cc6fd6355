"""Every error dicomcast raises, grouped by what the caller should do about it.

```
DicomcastError
├── FatalError            stop at start-up with a one-line message and a non-zero exit
│   ├── ConfigError           settings are missing or invalid
│   ├── MappingFileError      a mapping file cannot be loaded or compiled (file:line: reason)
│   └── StateSchemaError      the state database was written by a newer dicomcast
├── RetriableError        transient: retry in-process briefly, then back off durably
│   ├── SourceUnavailable     the DICOM server did not answer / answered 5xx
│   ├── FhirUnavailable       the FHIR server did not answer / answered 429, 5xx
│   ├── FhirConflict          412 / concurrent change: re-read and try again
│   └── StateUnavailable      the state database failed; nothing was recorded, try again
├── OperatorError         an operator command cannot be done as asked; nothing changed
└── StudyError            this study cannot be synced as it is: park it, keep the others going
    ├── MappingError          the study's data cannot satisfy a required rule
    └── Rejected              a server refused a request about this study (4xx)
        ├── FhirRejected          the FHIR server refused the study's resources (400/422)
        └── SourceRejected        the DICOM server refused to give the study (4xx)
```

A `RetriableError` with `outage=True` says the whole server is unreachable, throttling or
refusing our credentials: that is nobody's study's fault, so the worker pauses instead of
spending the studies' attempts. Without it (a 500, a conflict) the study backs off alone.

A `StudyError` is deterministic: retrying without a change (new data, new mappings, an
operator's decision) gives the same answer, so it is recorded as failed at once.

Messages carry no patient data: `str(exc)` goes to logs, metrics, `/readyz` and `failures
list`. What may carry it (a server's OperationOutcome, an identifier value, an offending
value) goes in `detail`, which only `failures show` and logs with LOG_PHI=true print.
"""

from __future__ import annotations


class DicomcastError(Exception):
    """Base of every dicomcast error. `detail` may hold patient data; the message never."""

    def __init__(self, message: str = "", *, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class FatalError(DicomcastError):
    """The process cannot work at all; say why in one line and exit non-zero."""


class ConfigError(FatalError):
    """Settings are missing, malformed or contradictory."""


class MappingFileError(FatalError):
    """A mapping file is broken; the message names the file, line and rule."""


class StateSchemaError(FatalError):
    """The state database's schema is not one this version can use."""


class RetriableError(DicomcastError):
    """A transient failure: the same call may succeed later.

    `retry_after` carries a server's Retry-After hint in seconds, when it gave one;
    `outage` says the server as a whole is unavailable (not this one request's fault);
    `status` is the HTTP status when a response came back.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        outage: bool = False,
        status: int | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(message, detail=detail)
        self.retry_after = retry_after
        self.outage = outage
        self.status = status


class SourceUnavailable(RetriableError):
    """The DICOM server could not be reached or failed on its side."""


class FhirUnavailable(RetriableError):
    """The FHIR server could not be reached, throttled us, or failed on its side."""


class FhirConflict(RetriableError):
    """A version conflict (412) or a concurrent create; re-read and reconcile again."""


class StateUnavailable(RetriableError):
    """The state database could not be read or written; the transaction was rolled back."""


class OperatorError(DicomcastError):
    """An operator command was refused (e.g. moving a cursor a running worker holds)."""


class StoredValueError(DicomcastError):
    """A value in the state DB this version cannot use (a feed cursor): that source's feed
    stops and says so in `/readyz` and `status` until an operator sets it again; the other
    sources, and the syncing of studies already marked, go on."""


class StudyError(DicomcastError):
    """This study cannot be synced as it stands; record it as failed and go on."""


class MappingError(StudyError):
    """The study's DICOM data cannot satisfy a required mapping rule."""


class Rejected(StudyError):
    """A server refused a request about this study; `status` and `outcome` say how."""

    def __init__(self, message: str, *, status: int, outcome: str = "") -> None:
        super().__init__(message, detail=outcome)
        self.status = status
        self.outcome = outcome


class FhirRejected(Rejected):
    """The FHIR server refused the resources (4xx other than 401/403/412/429); `outcome`
    (the `detail`) keeps the server's OperationOutcome text for the operator. `stored` lists
    the answers of the entries a non-atomic server created anyway (to be undone)."""

    def __init__(self, message: str, *, status: int, outcome: str = "") -> None:
        super().__init__(message, status=status, outcome=outcome)
        self.stored: list[dict[str, object]] = []


class SourceRejected(Rejected):
    """The DICOM server refused a request about this study (4xx other than 401/403/429)."""


def failure_label(kind: str, status: int | None) -> str:
    """A kind of failure and its HTTP status, with no words of the server's:
    `FhirUnavailable HTTP 503`."""
    return f"{kind} HTTP {status}" if status else kind


def failure_class(exc: BaseException) -> str:
    """The failure class of an exception, as `failure_label` says it."""
    return failure_label(type(exc).__name__, getattr(exc, "status", None))
