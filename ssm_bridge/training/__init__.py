"""Training and evaluation: presets and options (train_config), the loop and its checkpoint
lifecycle (trainer, checkpoint), precision choice, shipped checkpoints (pretrained) and
caption metrics (evaluate). `python -m ssm_bridge.training.train` is the entry point."""
