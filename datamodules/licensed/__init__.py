"""Adapters: one per published dataset format, each turning a dataset folder into candidate manifest rows."""
