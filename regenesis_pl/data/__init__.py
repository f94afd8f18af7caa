"""SFT tokenization and the LightningDataModule."""
