"""The systems, one package each with the same file names, over the shared layers.

``SPECS`` lists every system's SPEC, for the code that serves them all (the overview, the
registry CLI); systems never import each other.
"""

from mmpipe.systems.chan import SPEC as CHAN
from mmpipe.systems.mac import SPEC as MAC
from mmpipe.systems.moment import SPEC as MOMENT
from mmpipe.systems.pinclip import SPEC as PINCLIP

SPECS = (PINCLIP, MAC, MOMENT, CHAN)


def spec_named(name: str):
    """The SPEC of system ``name``; a clear error listing the systems otherwise."""
    for spec in SPECS:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown system {name!r}; the systems are {[spec.name for spec in SPECS]}")
