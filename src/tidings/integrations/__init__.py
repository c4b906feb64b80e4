"""Bridges to other libraries (Prometheus, ...), one module each, imported only when used.

Each module needs its library installed; importing it without says which package to install.
"""
