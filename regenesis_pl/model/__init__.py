"""Model building (full / LoRA / QLoRA), the embedded default model, the LightningModule."""
