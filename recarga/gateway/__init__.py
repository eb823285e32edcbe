"""Recarga edge gateway: one region's broker-side selection and reservation service."""
