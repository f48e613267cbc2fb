"""Export Label Studio annotations to CoNLL 2003 / BIO / Hugging Face datasets, and import BIO/CoNLL as tasks."""
