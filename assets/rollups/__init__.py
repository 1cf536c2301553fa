"""Hourly usage rollups per (environment, customer, resource, feature)."""
