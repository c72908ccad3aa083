"""OpenHCX: the HyperCLOVA X recipe as runnable software.

raw text -> corpus -> tokenizer -> token shards -> base -> SFT -> reward -> PPO, every checkpoint evaluated.
"""

__version__ = "0.1.0"
