"""Stages: plain functions over a typed config and the run folder, one file each."""
