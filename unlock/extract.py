"""``unlock.extract``, the import path notebooks use: the same module object as :mod:`unlock.method.extract`."""

import sys

from unlock.method import extract as _module

sys.modules[__name__] = _module
