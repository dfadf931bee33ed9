"""What names a class: an ImageNet WNID, or (a dataset that is not ImageNet) its folder's name.

One rule for the subset tables (``subsets``) and the ImageFolder reader (``imagefolder``).
"""

from __future__ import annotations

import re

WNID = re.compile(r"n\d{8}")
CLASS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # a class folder's name when it is not a WNID
