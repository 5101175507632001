"""A hooked Mamba-1 language model built from the core's S6 layer (lm), its Hugging Face
weight interop (hf) and its analyses: hidden attention, selectivity, patching, probes (tools)."""
