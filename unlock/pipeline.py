"""``unlock.pipeline``, the import path notebooks use: the same module object as :mod:`unlock.method.pipeline`."""

import sys

from unlock.method import pipeline as _module

sys.modules[__name__] = _module
