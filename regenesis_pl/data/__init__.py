"""Synthesis store, SFT tokenization, the LightningDataModule."""
