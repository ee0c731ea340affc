"""Attach/replace/detach programs and synchronise maps from the model."""
