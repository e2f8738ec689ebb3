"""mlplat: production ML infrastructure in one daemon."""

__version__ = "0.1.0"
