"""``unlock.artifacts``, the import path notebooks use: the same module object as :mod:`unlock.store.artifacts`."""

import sys

from unlock.store import artifacts as _module

sys.modules[__name__] = _module
