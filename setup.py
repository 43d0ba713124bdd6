"""A thin shim for tools that still run setup.py; all package metadata lives in pyproject.toml."""
from setuptools import setup

setup()
