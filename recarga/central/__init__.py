"""Recarga central hub (overflow, trips across regions); built in a later issue."""
