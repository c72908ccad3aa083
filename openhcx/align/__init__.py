"""Alignment helpers that need no trained model: the programmatic scorer (scorer.py).

SFT, reward-model and PPO training live in train/; their data in data/chat.py and data/preference.py.
"""
