"""tokenizer stage of lmforge."""
