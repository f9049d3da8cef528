"""What puts an agent on a device: balena fleet, Dockerfiles, systemd, first-boot files.

The files live beside this module and ship inside the package (`edgepilot flash` and
`edgepilot balena` read them from an installed wheel). A template's placeholders are written
`{{NAME}}`: shell scripts and YAML use `$` and `{}` themselves, so neither `string.Template`
nor `str.format` fits. `render` fills every placeholder and refuses a template that would
leave one unfilled or a value the template does not use, so no file ships half-rendered.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

__all__ = ["TemplateError", "placeholders", "read", "render", "root"]

_PLACEHOLDER = re.compile(r"\{\{([A-Z][A-Z0-9_]*)\}\}")


class TemplateError(ValueError):
    """A template and its values do not match; the message names the placeholders."""


def root() -> Path:
    """The folder holding the firmware files (inside the installed package)."""
    return Path(str(resources.files(__name__)))


def read(name: str) -> str:
    """A file of the folder by its relative path, e.g. `systemd/edgepilot-agent.service`."""
    path = (root() / name).resolve()
    if root().resolve() not in path.parents:
        raise TemplateError(f"{name!r} is outside firmware_configs")
    return path.read_text()


def placeholders(text: str) -> set[str]:
    return set(_PLACEHOLDER.findall(text))


def render(name_or_text: str, values: dict[str, str], *, text: bool = False) -> str:
    """Fill a template (a file name under firmware_configs, or the text itself with
    `text=True`). Every placeholder must get a value and every value must be used."""
    template = name_or_text if text else read(name_or_text)
    wanted = placeholders(template)
    missing = sorted(wanted - values.keys())
    unused = sorted(values.keys() - wanted)
    if missing or unused:
        where = "template" if text else name_or_text
        raise TemplateError(
            f"{where}: "
            + "; ".join(
                part
                for part in (
                    f"no value for {missing}" if missing else "",
                    f"values not in the template: {unused}" if unused else "",
                )
                if part
            )
        )
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
