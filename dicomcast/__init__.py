"""dicomcast: keep a FHIR R4 server in sync with a DICOM archive."""

__version__ = "0.1.0"
