"""Where settings come from, and which wins: command-line flags, then the environment,
then the config file, then the secrets dir, then defaults.

pydantic-settings' own sources read flags (init), the environment and the secrets dir;
the config file is read here (TOML or YAML, at the top level or under a `[dicomcast]`
table, with `file: reason` errors) and handed in as one more source. A single source may
be given flat, as `source_<field>` (`DICOMCAST_SOURCE_URL`, a `source_url` key, a
`source_password` secrets file) or as a `source` table; every source folds the flat form
into the nested one, so the same precedence holds field by field.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import os
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from dicomcast.config.source import SourceSettings
from dicomcast.errors import ConfigError
from dicomcast.urls import mask_url

PREFIX = "source_"
SOURCE_FIELDS = frozenset(SourceSettings.model_fields)
_FILE_VALUES: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "config_file_values", default=None
)


def fold(values: Mapping[str, Any]) -> dict[str, Any]:
    """`source_<field>` keys become fields of the `source` table (merged with one given)."""
    out: dict[str, Any] = {}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        field = key[len(PREFIX) :] if key.startswith(PREFIX) else None
        if field in SOURCE_FIELDS:
            flat[field] = value
        else:
            out[key] = value
    if flat:
        given = out.get("source")
        out["source"] = {**flat, **given} if isinstance(given, Mapping) else flat
    return out


class _Folded(PydanticBaseSettingsSource):
    """Another settings source's values, with the flat source fields folded in, plus the
    flat fields it cannot see (it reads only declared fields): `extra` supplies those."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        inner: PydanticBaseSettingsSource | None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(settings_cls)
        self.inner = inner
        self.extra = extra or {}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values = dict(self.extra)
        if self.inner is not None:
            values.update(self.inner())
        return fold(values)


def _flat_env() -> dict[str, str]:
    """`DICOMCAST_SOURCE_<FIELD>` variables, by field (case-insensitive, as the others)."""
    found = {}
    for name, value in os.environ.items():
        key = name.lower()
        if (
            key.startswith("dicomcast_" + PREFIX)
            and key[len("dicomcast_") :][len(PREFIX) :] in SOURCE_FIELDS
        ):
            found[key[len("dicomcast_") :]] = value
    return found


def _flat_secrets(folder: str | Path | None) -> dict[str, str]:
    """`DICOMCAST_SOURCE_<FIELD>` files in the secrets dir, named like the variables (any
    case) as pydantic-settings names the others; a trailing newline is stripped."""
    if not folder or not Path(folder).is_dir():
        return {}
    found = {}
    for path in Path(folder).iterdir():
        name = path.name.lower()
        key = name.removeprefix("dicomcast_")
        prefixed = name.startswith("dicomcast_") and key.startswith(PREFIX)
        if prefixed and key[len(PREFIX) :] in SOURCE_FIELDS and path.is_file():
            found[key] = path.read_text(encoding="utf-8").strip()
    return found


@contextlib.contextmanager
def config_file_values(values: Mapping[str, Any]) -> Iterator[None]:
    """The config file's values, for the settings built inside this block."""
    token = _FILE_VALUES.set(values)
    try:
        yield
    finally:
        _FILE_VALUES.reset(token)


def precedence(
    settings_cls: type[BaseSettings],
    flags: PydanticBaseSettingsSource,
    env: PydanticBaseSettingsSource,
    secrets: PydanticBaseSettingsSource,
) -> tuple[PydanticBaseSettingsSource, ...]:
    """The settings sources, highest precedence first."""
    secrets_dir = getattr(secrets, "secrets_dir", None)
    return (
        _Folded(settings_cls, flags),
        _Folded(settings_cls, env, _flat_env()),
        _Folded(settings_cls, None, _FILE_VALUES.get() or {}),
        _Folded(settings_cls, secrets, _flat_secrets(secrets_dir)),
    )


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of settings at the top level")
    dicomcast_table = data.get("dicomcast")
    return dict(dicomcast_table) if isinstance(dicomcast_table, dict) else dict(data)


def public_value(value: Any) -> Any:
    """A setting as `public_dict` shows it: secrets masked, credentials cut from URLs."""
    if isinstance(value, SecretStr):
        return "**********" if value.get_secret_value() else ""
    if isinstance(value, str):
        return mask_url(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: public_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [public_value(v) for v in value]
    return value


# Variables dicomcast reads that are no setting: where the settings come from, and the
# sandbox's own (the demo's and the tests' servers).
OTHER_VARIABLES = frozenset(
    {"DICOMCAST_CONFIG", "DICOMCAST_SECRETS_DIR", "DICOMCAST_SEKMET", "DICOMCAST_ORTHANC_BIN"}
)


def stray_variables(environ: Mapping[str, str], fields: Iterable[str]) -> list[str]:
    """A warning for each `DICOMCAST_*` variable that is no setting (a typo is otherwise
    ignored in silence, where the same typo in a config file is refused), with the
    setting it most resembles."""
    known = {f"DICOMCAST_{f.upper()}" for f in fields}
    known |= {f"DICOMCAST_SOURCE_{f.upper()}" for f in SOURCE_FIELDS} | OTHER_VARIABLES
    found = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith("DICOMCAST_") or upper in known:
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.8)
        hint = f": did you mean {close[0]}?" if close else ""
        found.append(f"{name} is not a dicomcast setting and is ignored{hint}")
    return found
