"""The model core, read bottom-up: layers and hooks → the selective scan (scan, ssm) →
attention and transformer blocks → the vision encoder, the bridges, the decoder →
generation. `ssm_bridge.model` assembles them into EnhancedVLM."""
