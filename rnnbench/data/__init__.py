"""Datasets: each one a LightningDataModule that knows its task kind and where its files are."""
