"""Embedding backends and the text that represents a package for semantic search."""
