"""``unlock.tiny``, the import path notebooks use: the same module object as :mod:`unlock.models.tiny`."""

import sys

from unlock.models import tiny as _module

sys.modules[__name__] = _module
