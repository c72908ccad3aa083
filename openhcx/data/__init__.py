"""Data stages: raw text -> corpus (corpus.py, filters.py, pii.py), and what later arrows build from it."""
