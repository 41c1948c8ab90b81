"""Embeddings and moderations."""
