"""``unlock.capture``, the import path notebooks use: the same module object as :mod:`unlock.method.capture`."""

import sys

from unlock.method import capture as _module

sys.modules[__name__] = _module
