"""Interpretability: implicit (hidden) attention of the scans, per-word maps and their
localisation, captum attributions, interventions and probes."""
