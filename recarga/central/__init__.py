"""Recarga central: overflow between regions (docs/central.md)."""
