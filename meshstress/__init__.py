"""meshstress: stress-test mesh networks on one Linux host."""

__version__ = "0.1.0"
