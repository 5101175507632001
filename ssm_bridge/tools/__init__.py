"""Experiment and release tooling, not library: the bridge ablation study (ablate) and the
shipped checkpoint's model card (model_card)."""
