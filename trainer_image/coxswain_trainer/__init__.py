"""coxswain_trainer: the program torchrun starts in every training pod."""

__version__ = "0.1.0"
