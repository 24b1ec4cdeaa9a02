"""Synthetic data engine for training the embedded unipose-tiny model: poses, captions, pair edits, renders."""
