"""Training: the one loop (trainer.py) with callbacks, losses as pure functions, checkpoints, torchrun scale-out.

Stages (pretrain.py; SFT, reward model and PPO later) build a model, a loader and a loss function and hand
them to the same `Trainer`.
"""
