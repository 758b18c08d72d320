"""``unlock.align``, the import path notebooks use: the same module object as :mod:`unlock.method.align`."""

import sys

from unlock.method import align as _module

sys.modules[__name__] = _module
