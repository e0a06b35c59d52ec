"""train stage of lmforge."""
