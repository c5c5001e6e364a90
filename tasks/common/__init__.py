"""Pieces every stage shares: the store, manifests, hashing and errors."""
