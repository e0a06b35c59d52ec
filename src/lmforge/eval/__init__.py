"""eval stage of lmforge."""
