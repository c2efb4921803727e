"""The systems, one package each with the same file names, over the shared layers.

``SPECS`` lists every system's SPEC, for the code that serves them all (the overview, the
registry CLI, ``mmpipe serve``); systems never import each other.
"""

from mmpipe.systems.chan import SPEC as CHAN
from mmpipe.systems.ctr import SPEC as CTR
from mmpipe.systems.mac import SPEC as MAC
from mmpipe.systems.moment import SPEC as MOMENT
from mmpipe.systems.pinclip import SPEC as PINCLIP
from mmpipe.systems.semantic_id import SPEC as SEMANTIC_ID

SPECS = (PINCLIP, MAC, MOMENT, CHAN, SEMANTIC_ID, CTR)


def spec_named(name: str):
    """The SPEC of system ``name``; a clear error listing the systems otherwise."""
    for spec in SPECS:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown system {name!r}; the systems are {[spec.name for spec in SPECS]}")


def services(paths, names=None) -> list:
    """The serving side of every system that has one (``SystemSpec.service``), or of ``names``:
    what ``mmpipe serve`` loads. A new system serves by setting its SPEC's ``service``."""
    servable = [spec for spec in SPECS if spec.service is not None]
    if names is not None:
        unknown = sorted(set(names) - {spec.name for spec in servable})
        if unknown:
            raise KeyError(f"no servable system {unknown}; the servable systems are {[s.name for s in servable]}")
        servable = [spec for spec in servable if spec.name in set(names)]
    return [spec.service(paths) for spec in servable]
