"""Thin Ray actors over library code."""
