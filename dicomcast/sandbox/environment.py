"""Settings as the environment of a `dicomcast` process: how the tests and the benchmark
start workers of their own with the settings they built."""

from __future__ import annotations

import json
import os

from dicomcast.config import Settings


def env_for(settings: Settings) -> dict[str, str]:
    """This process's environment without its DICOMCAST_* variables (save the sandbox's
    DICOMCAST_SEKMET), plus one DICOMCAST_* variable per setting, the source in the flat
    shorthand."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMCAST_")}
    for name in ("DICOMCAST_SEKMET",):
        if name in os.environ:
            env[name] = os.environ[name]
    values = settings.model_dump(exclude_none=True)
    for key, value in (values.pop("source", None) or {}).items():  # the flat shorthand
        values[f"source_{key}"] = value
    for key, value in values.items():
        if key == "source_partitions":
            value = ",".join(value)
        elif isinstance(value, dict | list):
            value = json.dumps(value)
        elif hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"DICOMCAST_{key.upper()}"] = str(value)
    return env
