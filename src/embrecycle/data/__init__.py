"""Reading corpora: JSON lines, CSV, plain text and CoNLL."""

from .readers import Example, detect_format, read_examples

__all__ = ["Example", "detect_format", "read_examples"]
