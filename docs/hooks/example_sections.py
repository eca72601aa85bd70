"""A griffe extension: read Google-style ``Example:`` sections as ``Examples:``.

The project's docstrings head their doctests with ``Example:`` (the Google
style guide's spelling); griffe knows only ``Examples:``. Renaming the heading
before the docstring is parsed renders each as a code example.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` headings to ``Examples:`` in every docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring heading before it is parsed."""
        if obj.docstring is not None:
            obj.docstring.value = _HEADING.sub(r"\1Examples:", obj.docstring.value)
