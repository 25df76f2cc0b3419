"""What people read: the text report (``text``), the HTML page of charts (``html``), a run's
results as a file (``export``) and the progress bar of a run (``progress``). The numbers all come
from ``store.queries``; nothing here computes a figure of its own."""

from __future__ import annotations
