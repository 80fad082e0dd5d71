"""For tools that run ``setup.py`` directly: the package is declared in pyproject.toml."""

from setuptools import setup

setup()
