"""mamo_lite: meta-learning for cold-start recommendation (MAMO, KDD 2020), the book's companion package."""

__version__ = "0.1.0"
