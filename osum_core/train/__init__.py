"""Training: the LightningModule, the LightningDataModule, callbacks and the run directory."""
