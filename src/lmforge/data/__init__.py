"""data stage of lmforge."""
