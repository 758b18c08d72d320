"""``unlock.steer``, the import path notebooks use: the same module object as :mod:`unlock.method.steer`."""

import sys

from unlock.method import steer as _module

sys.modules[__name__] = _module
