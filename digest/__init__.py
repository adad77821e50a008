"""daily-papers: watch arXiv for a group's keywords and deliver what is new."""

__version__ = "0.1.0"
