"""Settings, as values: `Settings` (everything the worker can be told), `SourceSettings`
(one DICOM server), and `load_settings` (flags > environment > file > secrets > defaults)."""

from dicomcast.config.settings import Settings, load_settings
from dicomcast.config.source import (
    AZURE_DICOM_SCOPE,
    DEFAULT_PARTITION,
    PARTITION_NAME,
    SourceSettings,
    resolve_token_url,
)
from dicomcast.model import DeletedStudyPolicy, PatientPolicy
from dicomcast.urls import mask_url

__all__ = [
    "AZURE_DICOM_SCOPE",
    "DEFAULT_PARTITION",
    "PARTITION_NAME",
    "DeletedStudyPolicy",
    "PatientPolicy",
    "Settings",
    "SourceSettings",
    "load_settings",
    "mask_url",
    "resolve_token_url",
]
