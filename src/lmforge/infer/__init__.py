"""infer stage of lmforge."""
